"""Shadow traffic: mirror live requests to the `shadow` version, compare, store; never answer.

`submit()` runs on the request path, so it only appends to a bounded in-memory queue (or drops
the copy and counts it) and returns at once; it never awaits and never raises. One background
task takes the copies, runs the shadow version's engine with a few calls in flight at most (the
engine batches them), compares the answers with the live ones and hands the comparison to the
ServingStore (buffered). A slow or broken shadow can only fill the queue and be dropped/failed:
it never delays or changes a live answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.serve.comparisons import ServingStore, compare_predictions

log = logging.getLogger(__name__)

RunShadow = Callable[[list[str]], Awaitable[tuple[list[dict], int]]]
OnOutcome = Callable[[str, str], None]

COMPARED = "compared"
DROPPED = "dropped"
FAILED = "failed"


class ShadowConfigError(LmforgeError):
    """A ShadowMirror setting is out of range."""


@dataclass
class _Item:
    model: str
    request_id: str
    texts: list[str]
    primary: list[dict]
    primary_version: int
    primary_latency_s: float
    run_shadow: RunShadow
    at: float


class ShadowMirror:
    """Mirror requests to a shadow engine in the background and record the comparisons.

    `on_outcome(model, "compared" | "dropped" | "failed")` is called once per accepted or
    dropped copy (sampled-out requests are not reported); it runs on the event loop and must
    be quick (a Prometheus counter). `max_concurrent` bounds the shadow calls in flight and
    `timeout_s` turns a hung shadow call into "failed".
    """

    def __init__(
        self,
        store: ServingStore,
        queue_size: int,
        sample: float = 1.0,
        on_outcome: OnOutcome | None = None,
        seed: int | None = None,
        *,
        max_concurrent: int = 4,
        timeout_s: float = 30.0,
    ) -> None:
        if queue_size < 1:
            raise ShadowConfigError(
                f"shadow queue_size must be at least 1, got {queue_size} "
                "(set serve.shadow.queue_size)"
            )
        if not (0.0 <= sample <= 1.0):
            raise ShadowConfigError(
                f"shadow sample must be between 0 and 1, got {sample} (set serve.shadow.sample)"
            )
        if max_concurrent < 1:
            raise ShadowConfigError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if timeout_s <= 0:
            raise ShadowConfigError(f"timeout_s must be positive, got {timeout_s}")
        self.store = store
        self.queue_size = queue_size
        self.sample = sample
        self.on_outcome = on_outcome
        self.max_concurrent = max_concurrent
        self.timeout_s = timeout_s
        self._rng = random.Random(seed)
        # A deque under a thread lock (not asyncio.Queue) so submit() is safe from any thread.
        self._queue: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._tasks: dict[asyncio.Task[None], str] = {}  # in flight -> model
        self._counts = {"submitted": 0, "sampled_out": 0, COMPARED: 0, DROPPED: 0, FAILED: 0}
        self._agree: dict[str, list[int]] = {}  # model -> [texts agreeing, texts compared]

    # --- request path -----------------------------------------------------------------------

    def submit(
        self,
        model: str,
        request_id: str,
        texts: list[str],
        primary: list[dict],
        primary_version: int,
        primary_latency_s: float,
        run_shadow: RunShadow,
    ) -> bool:
        """Queue a copy of a served request for the shadow; True if queued. Never blocks/raises."""
        try:
            with self._lock:
                if self.sample < 1.0 and self._rng.random() >= self.sample:
                    self._counts["sampled_out"] += 1
                    return False
                if not self._accepting or len(self._queue) >= self.queue_size:
                    self._counts[DROPPED] += 1
                    full = True
                else:
                    item = _Item(
                        model,
                        request_id,
                        texts,
                        primary,
                        primary_version,
                        primary_latency_s,
                        run_shadow,
                        time.time(),
                    )
                    self._queue.append(item)
                    self._counts["submitted"] += 1
                    full = False
            if full:
                self._report(model, DROPPED)
                return False
            self._notify()
            return True
        except Exception:  # the live answer must never fail because of the shadow
            log.debug("shadow submit failed", exc_info=True)
            return False

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return  # not started yet: start() drains what is queued
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def _report(self, model: str, outcome: str) -> None:
        if self.on_outcome is None:
            return
        try:
            self.on_outcome(model, outcome)
        except Exception:  # a broken metrics hook must not stop the mirror
            log.debug("shadow on_outcome hook failed", exc_info=True)

    # --- background work --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background worker on the running loop (idempotent)."""
        if self._worker is not None and not self._worker.done():
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        with self._lock:
            self._accepting = True
            if self._queue:
                self._wake.set()
        self._worker = asyncio.create_task(self._run(), name="shadow-mirror")

    async def _run(self) -> None:
        assert self._wake is not None
        slots = asyncio.Semaphore(self.max_concurrent)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                await slots.acquire()
                with self._lock:
                    item = self._queue.popleft() if self._queue else None
                if item is None:
                    slots.release()
                    break
                task = asyncio.create_task(self._compare(item))
                self._tasks[task] = item.model
                task.add_done_callback(lambda t: (self._tasks.pop(t, None), slots.release()))

    async def _compare(self, item: _Item) -> None:
        try:
            start = time.perf_counter()
            shadow, shadow_version = await asyncio.wait_for(
                item.run_shadow(item.texts), self.timeout_s
            )
            latency = time.perf_counter() - start
            comparison = compare_predictions(
                item.model,
                item.request_id,
                item.primary,
                shadow,
                item.primary_version,
                shadow_version,
                item.primary_latency_s,
                latency,
                at=item.at,
            )
            self.store.record_comparison(comparison)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # includes a timeout: the shadow is what failed
            with self._lock:
                self._counts[FAILED] += 1
            log.debug("shadow call for %s failed: %r", item.model, e)
            self._report(item.model, FAILED)
            return
        with self._lock:
            self._counts[COMPARED] += 1
            tally = self._agree.setdefault(item.model, [0, 0])
            tally[0] += comparison.agree_count
            tally[1] += comparison.texts
        self._report(item.model, COMPARED)

    async def stop(self, drain_s: float = 2.0) -> None:
        """Stop accepting copies, let queued and in-flight ones finish for up to `drain_s`
        seconds, then cancel the rest (counted as dropped)."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + max(0.0, drain_s)
        while self._worker is not None and time.monotonic() < deadline:
            with self._lock:
                idle = not self._queue
            if idle and not self._tasks:
                break
            await asyncio.sleep(0.01)
        unfinished = list(self._tasks.items())
        for task, _model in unfinished:
            task.cancel()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        await asyncio.gather(*(t for t, _m in unfinished), return_exceptions=True)
        # A task may have finished (and counted itself) just before its cancel() landed.
        cut = [m for t, m in unfinished if t.cancelled()]
        with self._lock:
            left = [item.model for item in self._queue]
            self._queue.clear()
            self._counts[DROPPED] += len(left) + len(cut)
        for model in cut + left:
            self._report(model, DROPPED)
        if cut or left:
            log.info("shadow mirror stopped; %d copies dropped", len(cut) + len(left))

    # --- numbers ----------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since start: submitted, sampled_out, compared, dropped, failed; queue depth."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["queue_depth"] = len(self._queue)
        out["in_flight"] = len(self._tasks)
        return out

    def agreement(self, model: str) -> float | None:
        """Texts on which shadow and live agree / texts compared, since start (None: none yet)."""
        with self._lock:
            tally = self._agree.get(model)
            if not tally or tally[1] == 0:
                return None
            return tally[0] / tally[1]
