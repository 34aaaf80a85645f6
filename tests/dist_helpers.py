"""Run a function on N local ranks (gloo on CPU) and surface a failing rank's error in pytest.

The rank function must be defined at module level: ranks start with the "spawn" method and
find it by import. It is called as `fn(rank, world_size, *args)` with the default process
group initialised; its return value is ignored (write files to pass results back).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_entry(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple[Any, ...]
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # the suite runs on 2 cores: one thread per rank
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # nobody tears down the group while a peer still talks to it
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 90.0) -> None:
    """Run `fn` on `world_size` processes; raise the first rank error, or TimeoutError."""
    context = mp.spawn(
        _rank_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=False
    )
    deadline = time.monotonic() + timeout
    # join() returns False while ranks run; it raises ProcessRaisedException (with the rank's
    # traceback) as soon as one fails, after terminating the others.
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            for process in context.processes:
                process.join(5)
            raise TimeoutError(f"{fn.__name__} did not finish on {world_size} ranks in {timeout}s")
