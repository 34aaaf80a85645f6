"""Serve the registry's production model over HTTP (FastAPI on uvicorn)."""

from lmforge.serve.app import create_app
from lmforge.serve.server import ServeError, run_server

__all__ = ["ServeError", "create_app", "run_server"]
