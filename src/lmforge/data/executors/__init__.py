"""Executors run a shard phase over many shards: local worker processes or Ray Data tasks.

Both call the same top-level phase functions `fn(out, shard, cfg_json) -> marker`, so a
run's output does not depend on which executor or how many workers produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lmforge.errors import ConfigError

ShardFn = Callable[[str, int, str], dict[str, Any]]
DoneFn = Callable[[int, dict[str, Any]], None]


class Executor(Protocol):
    name: str
    workers: int

    def map(self, fn: ShardFn, shards: list[int], out: str, cfg_json: str, done: DoneFn) -> None:
        """Run `fn` on every shard; call `done(shard, marker)` as each one finishes."""
        ...

    def close(self) -> None: ...


def make_executor(name: str, workers: int) -> Executor:
    if name == "local":
        from lmforge.data.executors.local import LocalExecutor

        return LocalExecutor(workers)
    if name == "ray":
        from lmforge.data.executors.ray_data import RayExecutor

        return RayExecutor(workers)
    raise ConfigError(f"unknown executor {name!r}; use local or ray")
