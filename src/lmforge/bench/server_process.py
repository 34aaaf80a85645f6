"""Run `lmforge serve` as a child process for the benchmark: start, wait until ready, stop.

The server runs in its own process (as in production) so the load generator's event loop and
the model's threads do not share one interpreter. Its output goes to temp files, not pipes, so
a chatty server can never block on a full pipe; the tail is shown when it fails to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

import lmforge
from lmforge.errors import LmforgeError

READY_POLL_S = 0.1
PORT_ATTEMPTS = 3


class ServerStartError(LmforgeError):
    """The server process died or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (the OS picks it); the caller binds it soon after."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_command(
    registry_dir: Path,
    host: str,
    port: int,
    model: str | None = None,
    config_path: Path | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "lmforge", "serve", "--registry", str(registry_dir)]
    cmd += ["--host", host, "--port", str(port)]
    if model:
        cmd += ["--model", model]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    return cmd


class ServerProcess:
    """`with ServerProcess(registry) as server:` gives a ready server at `server.url`."""

    def __init__(
        self,
        registry_dir: str | Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        model: str | None = None,
        config_path: str | Path | None = None,
        startup_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.registry_dir = Path(registry_dir)
        self.host = host
        self.port = port
        self.model = model
        self.config_path = Path(config_path) if config_path is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.last_output = ""  # the server's output, kept after stop() for diagnostics

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def start(self) -> ServerProcess:
        """Start the server and wait for /readyz; retries on a port taken in the meantime."""
        fixed_port = self.port is not None
        for attempt in range(1 if fixed_port else PORT_ATTEMPTS):
            if not fixed_port:
                self.port = free_port(self.host)
            self._spawn()
            try:
                self._wait_ready()
                return self
            except ServerStartError as exc:
                port_race = "already in use" in str(exc) and not fixed_port
                self.stop()
                if not port_race or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        assert self.port is not None
        cmd = serve_command(self.registry_dir, self.host, self.port, self.model, self.config_path)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The child imports the same lmforge as this process, installed or not.
        src = str(Path(lmforge.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        # A session of its own: Ctrl-C in the terminal reaches us, and we stop the server.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            env=env,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    raise ServerStartError(
                        f"the server exited with code {code} before it was ready "
                        f"(command: {' '.join(self.proc.args)}); output:\n{self.output_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/readyz").status_code == 200:
                        return
                time.sleep(READY_POLL_S)
        raise ServerStartError(
            f"the server at {self.url} was not ready after {self.startup_timeout_s:.0f} s; "
            f"output:\n{self.output_tail()}"
        )

    def output_tail(self, max_chars: int = 3000) -> str:
        parts = []
        for stream in (self._stdout, self._stderr):
            if stream is None or stream.closed:
                continue
            stream.flush()
            stream.seek(0)
            parts.append(stream.read().decode("utf-8", errors="replace"))
        text = "\n".join(p.strip() for p in parts if p.strip())
        return text[-max_chars:] if text else "(no output)"

    def stop(self) -> int | None:
        """SIGTERM (a graceful drain), then SIGKILL after the grace period; the exit code."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            code = proc.returncode
        self.last_output = self.output_tail()
        for stream in (self._stdout, self._stderr):
            if stream is not None:
                stream.close()
        self._stdout = self._stderr = None
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
