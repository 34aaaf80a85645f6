"""`lmforge serve`: check the registry, take the port, load the model, run uvicorn.

The port is bound before the model loads and the bound socket is handed to uvicorn, so a busy
port is reported at once (not after seconds of loading) and nothing can grab the port between
the check and the start.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.config import ServeConfig
from lmforge.errors import LmforgeError
from lmforge.registry import URL_ENV

GRACEFUL_SHUTDOWN_S = 10


class ServeError(LmforgeError):
    """The server cannot start: no registry, no model, or the address is unusable."""


def check_registry(registry_dir: Path) -> Path:
    """The registry folder, or an error that says how to create one."""
    registry_dir = Path(registry_dir)
    if os.environ.get(URL_ENV):
        return registry_dir  # metadata in a database; ModelRegistry checks its tables
    if not (registry_dir / "registry.sqlite").is_file():
        raise ServeError(
            f"no model registry at {registry_dir.resolve()} (missing registry.sqlite); "
            "create one by training a model (`lmforge demo` or `lmforge train CONFIG` write "
            "WORKDIR/registry), or pass --registry PATH to an existing one"
        )
    return registry_dir


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready for uvicorn; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns on TCP_NODELAY only for sockets that do, and without it
    # Nagle's algorithm plus delayed ACKs add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # Same option uvicorn sets: a listener on the port still blocks us, a TIME_WAIT does not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(_bind_message(host, port, exc)) from None
    except (OverflowError, TypeError) as exc:
        sock.close()
        raise ServeError(f"cannot bind to {host}:{port}: {exc}; pass --port 0..65535") from None
    sock.set_inheritable(True)
    return sock


def _bind_message(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use; pass --port with a free port "
            "(or stop the other server)"
        )
    if exc.errno == errno.EACCES:
        return f"no permission to bind port {port} on {host}; pass --port 1024 or higher"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind to host {host!r}: {exc.strerror}; pass --host 127.0.0.1 or 0.0.0.0"
    return f"cannot bind to {host}:{port}: {exc}"


def describe_models(app: Any) -> str:
    """'tiny v1 (torch), other v3 (onnx, int8-onnx)': what an app loaded, for the console."""
    parts = []
    for key, served in app.state.runtime.pool._models.items():
        name, version, lane = key
        detail = served.backend.kind
        if served.backend.quantization:
            detail += f", {served.backend.quantization}"
        role = " shadow" if lane == "shadow" else ""
        parts.append(f"[bold]{name}[/bold] v{version}{role} ({detail})")
    return ", ".join(parts) or "nothing"


def _fastest(module: str, fallback: str) -> str:
    # uvloop and httptools make uvicorn markedly cheaper per request; both are optional.
    try:
        __import__(module)
    except ImportError:
        return fallback
    return module


def run_server(
    registry_dir: Path,
    cfg: ServeConfig,
    console: Console | None = None,
    json_logs: bool = False,
) -> None:
    """Serve the registry's models until Ctrl-C or SIGTERM."""
    import uvicorn

    from lmforge.serve.app import create_app
    from lmforge.serve.logs import configure_json_logging

    console = console or Console()
    registry_dir = check_registry(registry_dir)
    sock = bind_socket(cfg.host, cfg.port)
    try:
        if json_logs or cfg.json_logs:
            configure_json_logging()
        app = create_app(registry_dir, cfg, freeze_gc=True)
        port = sock.getsockname()[1]
        shown_host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        console.print(
            f"serving {describe_models(app)} on http://{shown_host}:{port}  "
            "(POST /v1/predict; Ctrl-C stops)",
            highlight=False,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                loop=_fastest("uvloop", "auto"),
                http=_fastest("httptools", "auto"),
            )
        )
        with _stop_on_signals(), suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
        console.print("server stopped")
    finally:
        sock.close()


class _Stop(KeyboardInterrupt):
    pass


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM into the same clean stop as Ctrl-C.

    uvicorn handles both signals while it runs (draining requests), then re-raises the signal
    to the previous handler; this one ends `run` quietly instead of killing the process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
