"""Local executor: a pool of worker processes on this machine (inline with one worker)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from lmforge.data.executors import DoneFn, ShardFn


def _init_worker() -> None:
    # Each worker is one core's worth of work; nested thread pools would oversubscribe.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork is fast and needs no `if __name__ == "__main__"` guard in the caller's
            # script, but a child forked after torch started its thread pools can deadlock:
            # then spawn. Workers are reused across phases.
            method = "spawn" if "torch" in sys.modules or sys.platform != "linux" else "fork"
            ctx = multiprocessing.get_context(method)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)
        return self._pool

    def map(self, fn: ShardFn, shards: list[int], out: str, cfg_json: str, done: DoneFn) -> None:
        if self.workers == 1 or len(shards) <= 1:
            for shard in shards:
                done(shard, fn(out, shard, cfg_json))
            return
        pool = self._get_pool()
        pending: dict[Future, int] = {pool.submit(fn, out, s, cfg_json): s for s in shards}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    shard = pending.pop(future)
                    done(shard, future.result())
        except BrokenProcessPool:
            self.close()
            raise RuntimeError(
                "a data worker process died (killed, or out of memory?); rerun the same "
                "command to resume, perhaps with fewer --workers or a smaller data.shard_docs"
            ) from None
        except BaseException:
            for future in pending:
                future.cancel()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
