"""A backend whose model runs in a child process at idle CPU priority.

The shadow model must never slow live answers. A thread in the server cannot promise that:
tokenisation and the Python parts of the forward pass hold the GIL, and the live request
path waits for it however low the thread's OS priority is. `IsolatedBackend` therefore loads
the model in its own process, scheduled `SCHED_IDLE` on Linux (`nice 19` elsewhere), so a
live thread that wakes preempts it. Its compute is still not free on a small machine: it
shares the cores, caches and memory bandwidth (docs/serving.md gives the measured cost).
The server only writes the texts to a pipe and reads the answers back, and the thread that
waits on the pipe holds no GIL.

Protocol over the child's stdin/stdout: each message is a 4-byte big-endian length followed
by that many bytes of UTF-8 JSON (no pickle). The child first sends
`{"ready": true, "kind", "labels", "quantization", "threads", "pid"}` (or `{"error": msg}` when
the model cannot be loaded), then answers each `{"texts": [...]}` with `{"rows": [...]}` or
`{"error": msg}`. It exits when its stdin closes, so it never outlives the server.

    python -m lmforge.serve.isolated MODEL_DIR [--kind auto|torch|onnx] [--threads N] [--cpus 2,3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from lmforge.serve.backends import BACKEND_KINDS, BackendError

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a corrupt length must not allocate without bound
START_TIMEOUT_S = 180.0  # importing torch on a loaded machine can take a while
CALL_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = 5.0


def write_message(stream: IO[bytes], payload: dict[str, Any]) -> None:
    """Write one length-prefixed JSON message and flush it."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError(f"no answer within the time limit ({left} bytes missing)")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, deadline: float | None = None) -> dict[str, Any]:
    """Read one length-prefixed JSON object from a file descriptor (EOFError at end)."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {size} bytes is over the {MAX_MESSAGE_BYTES} limit")
    message = json.loads(_read_exact(fd, size, deadline))
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {type(message).__name__}")
    return message


def lower_own_priority() -> str:
    """Make this process (and threads it starts later) yield the CPU to everything else."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError:
            pass
    with contextlib.suppress(OSError):
        os.nice(19)
        return "nice19"
    return "normal"


class IsolatedBackend:
    """`predict(texts)` answered by a model loaded in a child process at idle priority.

    Same surface as the in-process backends (`kind`, `labels`, `quantization`, `predict`),
    plus `close()`. One call runs at a time (the engine's single model thread calls it). A
    call during which the child dies or stops answering (`call_timeout_s`) fails with
    BackendError; a call that finds the child gone starts a new one, at most once every
    RESTART_BACKOFF_S seconds (calls in between fail at once).
    """

    def __init__(
        self,
        model_dir: str | Path,
        kind: str = "auto",
        threads: int = 1,
        *,
        cpus: list[int] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        if kind not in BACKEND_KINDS:
            raise BackendError(f"backend kind {kind!r}: use one of {list(BACKEND_KINDS)}")
        if isinstance(threads, bool) or threads < 1:
            raise BackendError(f"threads={threads}: use a positive count")
        self.cpus = _check_cpus(cpus)
        self.model_dir = Path(model_dir)
        self.requested_kind = kind
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self.restarts = 0
        hello = self._start()
        self.kind: str = str(hello["kind"])
        self.labels: list[str] = [str(x) for x in hello["labels"]]
        self.quantization: str | None = hello.get("quantization")
        self.priority: str = str(hello.get("priority", "normal"))

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _start(self) -> dict[str, Any]:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(self.threads)
        command = [
            sys.executable,
            "-m",
            "lmforge.serve.isolated",
            str(self.model_dir),
            "--kind",
            self.requested_kind,
            "--threads",
            str(self.threads),
        ]
        if self.cpus:
            command += ["--cpus", ",".join(map(str, self.cpus))]
        self._started_at = time.monotonic()
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._proc = proc
        assert proc.stdout is not None
        try:
            hello = read_message(proc.stdout.fileno(), time.monotonic() + self.start_timeout_s)
        except (EOFError, TimeoutError, ValueError) as exc:
            self._kill()
            raise BackendError(
                f"the model process for {self.model_dir} did not start ({exc}); its error "
                "output is in the server's log"
            ) from exc
        if "error" in hello:
            self._kill()
            raise BackendError(str(hello["error"]))
        return hello

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        if isinstance(texts, str):
            raise BackendError("predict takes a list of texts, not one string; wrap it")
        if not texts:
            return []
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                proc = self._restart()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                write_message(proc.stdin, {"texts": list(texts)})
                answer = read_message(proc.stdout.fileno(), time.monotonic() + self.call_timeout_s)
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                code = proc.poll()
                self._kill()
                state = f"exited with code {code}" if code is not None else f"failed: {exc}"
                raise BackendError(f"the model process for {self.model_dir} {state}") from exc
        if "error" in answer:
            raise BackendError(f"the model process failed a call: {answer['error']}")
        rows = answer.get("rows")
        if not isinstance(rows, list) or len(rows) != len(texts):
            raise BackendError("the model process answered with the wrong number of rows")
        return rows

    def _restart(self) -> subprocess.Popen[bytes]:
        wait = self._started_at + RESTART_BACKOFF_S - time.monotonic()
        if wait > 0:
            raise BackendError(
                f"the model process for {self.model_dir} is down; retrying in {wait:.1f} s"
            )
        old = self._proc
        code = old.poll() if old is not None else None
        log.warning("model process for %s exited (code %s); starting another", self.model_dir, code)
        self._start()
        self.restarts += 1
        assert self._proc is not None
        return self._proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child: close its stdin (it exits at EOF), kill it if it lingers."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
            self._kill()

    def __del__(self) -> None:  # a pool that forgot close() must not leave a process behind
        with contextlib.suppress(Exception):
            self._kill()


def _check_cpus(cpus: list[int] | None) -> list[int] | None:
    if not cpus:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise BackendError("pinning the model process to CPUs needs Linux; unset the cpus list")
    available = sorted(os.sched_getaffinity(0))
    unknown = [c for c in cpus if c not in available]
    if unknown:
        raise BackendError(
            f"cpus {unknown} are not available to this process (it may use {available}); "
            "list CPUs from that set"
        )
    return sorted(set(cpus))


def _serve(model_dir: str, kind: str, threads: int, cpus: list[int] | None = None) -> int:
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    priority = lower_own_priority()  # before torch starts its thread pools: they inherit it
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        from lmforge.serve.backends import load_backend

        backend = load_backend(model_dir, kind, threads)  # type: ignore[arg-type]
    except Exception as exc:  # the parent turns this into a clear BackendError
        write_message(out, {"error": f"cannot load {model_dir}: {exc}"})
        return 1
    write_message(
        out,
        {
            "ready": True,
            "kind": backend.kind,
            "labels": list(backend.labels),
            "quantization": backend.quantization,
            "threads": threads,
            "priority": priority,
            "pid": os.getpid(),
        },
    )
    stdin = sys.stdin.fileno()
    while True:
        try:
            request = read_message(stdin)
        except EOFError:
            return 0
        try:
            texts = request["texts"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise TypeError("texts must be a list of strings")
            write_message(out, {"rows": backend.predict(texts)})
        except Exception as exc:  # one bad call must not end the process
            write_message(out, {"error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmforge.serve.isolated",
        description="Serve one model folder over stdin/stdout at idle CPU priority "
        "(started by the server for its shadow model).",
    )
    parser.add_argument("model_dir")
    parser.add_argument("--kind", default="auto", choices=BACKEND_KINDS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpus", help="comma-separated CPU numbers to pin the process to")
    args = parser.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return _serve(args.model_dir, args.kind, max(1, args.threads), cpus)


if __name__ == "__main__":
    sys.exit(main())
