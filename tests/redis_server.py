"""Start a real, throw-away redis-server for tests.

    server = start_redis(tmp_path)      # or: with start_redis(tmp_path) as server:
    ... connect to server.url ...
    server.kill()                        # simulate a crash (SIGKILL)
    server.stop()                        # idempotent; also done by the context manager

The server listens on 127.0.0.1 only, on a free port, persists nothing (`--save ''`,
`--appendonly no`) and writes its log to `tmp_path/redis-<port>.log`. When redis-server is not
installed the test is skipped, unless LMFORGE_REQUIRE_REDIS=1 (set in CI), where it fails so a
broken CI image cannot silently skip every Redis test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3  # a free port can be taken between probing it and redis binding it


def find_redis_server() -> str | None:
    """Path of the redis-server binary, or None when it is not installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    # Debian installs it in /usr/bin, which a minimal PATH may lack.
    fallback = Path("/usr/bin/redis-server")
    return str(fallback) if fallback.exists() else None


def require_redis_server() -> str:
    """The redis-server path; skips the test (or fails it under LMFORGE_REQUIRE_REDIS=1)."""
    path = find_redis_server()
    if path is None:
        message = (
            "redis-server is not installed (apt-get install redis-server); "
            "Redis cache tests need a real server"
        )
        if os.environ.get("LMFORGE_REQUIRE_REDIS") == "1":
            pytest.fail(message + " and LMFORGE_REQUIRE_REDIS=1 is set", pytrace=False)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int, timeout_s: float = 0.5) -> bool:
    # Raw RESP so the helper works even without redis-py installed.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A running redis-server child process; see the module docstring."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.host = "127.0.0.1"
        self.log_path = log_path
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket but answers nothing (a 'slow' Redis)."""
        if self.running and not self._paused:
            self.process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self.running and self._paused:
            self.process.send_signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL, as in a crash: connections drop, nothing is flushed."""
        if self.running:
            self.process.kill()
        self._paused = False
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Terminate cleanly (SIGKILL if it does not exit in time). Safe to call twice."""
        if not self.running:
            return
        self.resume()  # a stopped process would not act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _launch(binary: str, tmp_path: Path, port: int) -> RedisServer:
    log_path = tmp_path / f"redis-{port}.log"
    cmd = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(tmp_path),
        "--logfile", str(log_path),
    ]  # fmt: skip
    process = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    return RedisServer(process, port, log_path)


def start_redis(tmp_path: Path) -> RedisServer:
    """Launch redis-server on a free 127.0.0.1 port; wait (at most ~5 s) until it answers PING."""
    binary = require_redis_server()
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _ in range(_PORT_ATTEMPTS):
        server = _launch(binary, tmp_path, _free_port())
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and server.running:
            if _answers_ping(server.port):
                return server
            time.sleep(0.02)
        if server.running:  # alive but silent for 5 s: give up rather than retry
            server.stop()
            pytest.fail(
                f"redis-server on port {server.port} did not answer PING within "
                f"{STARTUP_TIMEOUT_S:.0f} s; log:\n{server.log_tail()}",
                pytrace=False,
            )
        last_log = server.log_tail()  # exited early, most likely the port was taken: retry
        server.stop()
    pytest.fail(
        f"redis-server exited at startup {_PORT_ATTEMPTS} times; last log:\n{last_log}",
        pytrace=False,
    )
