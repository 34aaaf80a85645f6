"""One worker of a supervised deployment: a single-process server on 127.0.0.1:PORT.

    python -m lmforge.serve.worker --registry DIR --port P --config-json '{...}'

runs `run_server` with the given `ServeConfig` (the JSON of `cfg.model_dump()`), always bound
to 127.0.0.1 (only the supervisor's gateway talks to it). Unless the config sets
`backend.threads`, each worker gets `cores // workers` intra-op threads so the workers share
the machine instead of fighting over it.

The supervisor does not exec this module for every start: it forks workers from a warm
process that has already imported torch and the app (see `PRELOAD_MODULES`), which is what
makes a restart take well under a second instead of the ~4 s an import of torch costs.
`child_main` is the entry point for that path; `main` is the command-line one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console

from lmforge.config import ServeConfig
from lmforge.errors import ConfigError, LmforgeError

# Exit code of a worker whose port was taken: the supervisor then picks another port.
EXIT_PORT_BUSY = 98
# Imported once by the fork server, so each forked worker starts with them in memory.
PRELOAD_MODULES = (
    "torch",
    "numpy",
    "lmforge.inference",
    "lmforge.serve.app",
    "lmforge.serve.server",
    "uvicorn",
    "uvloop",
    # What the app and uvicorn import lazily while starting (measured: ~0.3 CPU s per start).
    "aiohttp",
    "pydantic.v1",
    "pydantic.v1.dataclasses",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "lmforge.serve.worker",
    # multiprocessing re-runs the parent's main module in each child; have its imports ready.
    "lmforge.serve.gateway",
    "lmforge.cli",
)
# That re-run of `python -m lmforge.serve.supervisor` in a child warns that the module is
# already imported; it is, harmlessly (only its `main` is guarded, and that does not run).
warnings.filterwarnings(
    "ignore",
    message=r"'lmforge\.serve\.supervisor' found in sys\.modules",
    category=RuntimeWarning,
)
PARENT_POLL_S = 0.5


def default_threads(workers: int) -> int:
    """Intra-op threads per worker when the config leaves `backend.threads` unset."""
    if workers < 1:
        raise ConfigError(f"serve.workers={workers}: use 1 or more")
    return max(1, (os.cpu_count() or 1) // workers)


def worker_config(cfg: ServeConfig, port: int) -> ServeConfig:
    """The config one worker runs: 127.0.0.1:`port`, and its share of the cores."""
    data = cfg.model_dump()
    data["host"] = "127.0.0.1"
    data["port"] = port
    if data["backend"].get("threads") is None:
        data["backend"]["threads"] = default_threads(cfg.workers)
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"worker port {port}: serve.{where}: {first['msg']}") from None


def parse_config_json(text: str) -> ServeConfig:
    """A `ServeConfig` from `--config-json`, or an error naming the bad field."""
    try:
        return ServeConfig.model_validate(json.loads(text))
    except ValueError as exc:  # ValidationError is a ValueError too
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ConfigError(
                f"--config-json: serve.{where}: {first['msg']}; pass the JSON of "
                "ServeConfig.model_dump()"
            ) from None
        raise ConfigError(
            f"--config-json is not valid JSON ({exc}); pass the JSON of ServeConfig.model_dump()"
        ) from None


def run_worker(
    registry_dir: Path,
    cfg: ServeConfig,
    console: Console | None = None,
    parent_pid: int | None = None,
) -> int:
    """Serve until SIGTERM (a graceful drain) and return the process exit code."""
    from lmforge.serve.server import ServeError, run_server

    console = console or Console()
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    try:
        run_server(Path(registry_dir), cfg, console=console)
    except ServeError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return EXIT_PORT_BUSY if "already in use" in str(exc) else exc.exit_code
    except LmforgeError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    return 0


def child_main(registry_dir: str, port: int, cfg_json: str, log_path: str, parent_pid: int) -> None:
    """Entry point of a worker forked by the supervisor (a multiprocessing target)."""
    # A process group of its own: Ctrl-C in the terminal reaches only the supervisor, which
    # then drains and stops the workers in order; and the whole worker can be killed at once.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _output_to(log_path)
    _die_with_parent()
    now = time.time()
    started = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    print(f"--- worker pid {os.getpid()} on port {port}, started {started} ---", flush=True)
    try:
        cfg = parse_config_json(cfg_json)
    except LmforgeError as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(exc.exit_code)
    sys.exit(run_worker(Path(registry_dir), cfg, parent_pid=parent_pid))


def warm_up() -> None:
    """A no-op child: starting one makes the fork server finish its imports first."""


def _output_to(log_path: str) -> None:
    """Send stdout and stderr to the log file (a file, never a pipe that can fill up)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this worker when the process that forked it dies.

    The fork server exits when the supervisor does, so a supervisor killed with SIGKILL
    (which can clean up nothing) still takes its workers with it.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    before = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != before:  # the parent died before prctl took effect
        os._exit(1)


def _exit_with_parent(parent_pid: int) -> None:
    """Portable backstop: drain and stop when `parent_pid` is gone (checked twice a second)."""

    def watch() -> None:
        while not _gone(parent_pid):  # until the parent is gone; the thread dies with us
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lmforge-parent-watch", daemon=True).start()


def _gone(pid: int) -> bool:
    """`pid` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc here: existing is all we can tell
    return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lmforge.serve.worker --registry DIR --port P --config-json JSON`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmforge.serve.worker")
    parser.add_argument("--registry", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--config-json", default="{}")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    console = Console()
    try:
        cfg = worker_config(parse_config_json(args.config_json), args.port)
    except LmforgeError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    return run_worker(args.registry, cfg, console=console, parent_pid=args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
