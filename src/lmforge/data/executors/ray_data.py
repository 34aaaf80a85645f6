"""Ray executor: each shard of a phase is one row of a Ray Dataset, mapped by a Ray task.

Connects to the cluster in RAY_ADDRESS when set, else starts a local Ray; a Ray already
initialised by the caller (a test, a notebook) is used as it is. Workers must see the
output folder at the same path (a shared file system on a real cluster).
"""

from __future__ import annotations

import os
from typing import Any

from lmforge.data.executors import DoneFn, ShardFn
from lmforge.errors import ConfigError


class _ShardTask:
    def __init__(self, fn: ShardFn, out: str, cfg_json: str) -> None:
        self.fn, self.out, self.cfg_json = fn, out, cfg_json

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import json

        marker = self.fn(self.out, int(row["shard"]), self.cfg_json)
        return {"shard": int(row["shard"]), "marker": json.dumps(marker)}


class RayExecutor:
    name = "ray"

    def __init__(self, workers: int = 0) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "the ray executor needs Ray: pip install 'lmforge[ray]' (or use --executor local)"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if not os.environ.get("RAY_ADDRESS") and workers:
                kwargs["num_cpus"] = workers
            ray.init(**kwargs)
            self._started = True
        self.workers = workers or int(ray.cluster_resources().get("CPU", 1))

    def map(self, fn: ShardFn, shards: list[int], out: str, cfg_json: str, done: DoneFn) -> None:
        import json

        if not shards:
            return
        data = self._ray.data
        ds = data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        results = ds.map(_ShardTask(fn, out, cfg_json), num_cpus=1)
        for row in results.iter_rows():
            done(int(row["shard"]), json.loads(row["marker"]))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
