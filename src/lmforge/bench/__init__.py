"""Benchmark the model service: a server child process and a closed-loop load generator."""

from lmforge.bench.loadgen import default_texts, drive_load, run_bench
from lmforge.bench.server_process import ServerProcess, ServerStartError

__all__ = ["ServerProcess", "ServerStartError", "default_texts", "drive_load", "run_bench"]
