"""Serve registry models over HTTP (FastAPI on uvicorn): batching, routing, shadow, cache, ops.

`create_app`, `run_server` and `ServeError` load lazily, so importing one building block
(`lmforge.serve.cache`, ...) does not pull in the whole server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeError", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from lmforge.serve.app import create_app

        return create_app
    if name in ("run_server", "ServeError"):
        from lmforge.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'lmforge.serve' has no attribute {name!r}")
