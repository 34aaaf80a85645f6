"""Run a function on N local ranks (gloo on CPU) and surface a failing rank's error in pytest.

`fn(rank, world_size, *args)` runs with the default process group initialised; its return
value is ignored (write files to pass results back). Ranks are forked: on the suite's two
cores a spawned rank spends 5-15 s importing torch again, a forked one none. Fork is safe here
because the test process has no process group and no accelerator; pass start_method="spawn"
(and define `fn` at module level) for code that needs a clean interpreter.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    report_dir: str,
    args: tuple[Any, ...],
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # the suite runs on 2 cores: one thread per rank
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # nobody tears down the group while a peer still talks to it
    except BaseException:
        # Stamp the failure: when one rank dies its peers fail too ("connection closed"), and
        # the parent should show the rank that failed first, not whichever it notices first.
        Path(report_dir, f"rank{rank}.txt").write_text(f"{time.time()}\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


def _first_failure(report_dir: str) -> str | None:
    reports = []
    for file in Path(report_dir).glob("rank*.txt"):
        stamp, _, trace = file.read_text().partition("\n")
        reports.append((float(stamp), file.stem, trace))
    if not reports:
        return None
    _, rank, trace = min(reports)
    return f"{rank} failed first:\n{trace}"


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 90.0,
    start_method: str = "fork",
) -> None:
    """Run `fn` on `world_size` processes; raise the first failing rank's error, or TimeoutError."""
    with tempfile.TemporaryDirectory(prefix="ranks-") as report_dir:
        context = mp.start_processes(
            _rank_entry,
            args=(fn, world_size, free_port(), report_dir, args),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + timeout
        try:
            # join() returns False while ranks run and raises as soon as one fails, after
            # terminating the others.
            while not context.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{fn.__name__} did not finish on {world_size} ranks in {timeout}s"
                    )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            first = _first_failure(report_dir)
            if first is None:
                raise
            raise RuntimeError(first) from exc
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join(5)
