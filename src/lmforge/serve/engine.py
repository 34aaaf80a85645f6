"""Per-model dynamic batching: a bounded queue, a batch-forming timer, deadlines, clean shutdown.

One worker thread owns the model, so concurrent requests never run forward passes in parallel
(torch's intra-op threads would fight each other) and the event loop is never blocked. Requests
queue up; a batcher task on the event loop merges them into model calls of at most
`max_batch_size` texts, waiting up to `max_queue_delay_ms` (counted from the oldest queued
request) for a batch to fill. Admission is bounded by `max_queue_texts`: beyond it callers get
`Overloaded` at once, with a Retry-After estimate, instead of queueing without limit.

Everything except `predict_fn` runs on the event loop thread, so the queue needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lmforge.config import BatchingConfig

PredictFn = Callable[[list[str]], Sequence[Any]]
OnBatch = Callable[[int, float], None]

log = logging.getLogger("lmforge.serve")

_EWMA_ALPHA = 0.2  # weight of the newest model call in the throughput estimate
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0


class Overloaded(Exception):
    """The queue is full; the app answers 429/503 with `Retry-After: retry_after_s`."""

    def __init__(
        self, queued_texts: int, limit: int, retry_after_s: float, requested: int, name: str = ""
    ) -> None:
        self.queued_texts = queued_texts
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.requested = requested
        who = f"model {name!r}" if name else "the model"
        if requested > limit:
            hint = (
                f"a request of {requested} texts can never fit; send fewer texts per request "
                f"or raise serve.batching.max_queue_texts (now {limit})"
            )
        else:
            hint = (
                f"retry after {retry_after_s:.0f} s, or raise serve.batching.max_queue_texts "
                f"(now {limit})"
            )
        super().__init__(
            f"{who} is overloaded: {queued_texts} texts queued + {requested} requested "
            f"> limit {limit}; {hint}"
        )


class DeadlineExceeded(Exception):
    """The request's deadline passed before its predictions were ready (the app answers 504)."""


class EngineStopped(Exception):
    """The engine is shutting down or not running (the app answers 503)."""


@dataclass(eq=False)  # identity equality: deque.remove() must find this exact request
class _Request:
    texts: list[str]
    future: asyncio.Future[list[Any]]
    deadline: float
    enqueued_at: float
    queued: bool = True  # still in the queue (not yet handed to the model)
    timeout_s: float = 0.0  # the budget it was given, for error messages


def _set_thread_nice(nice: int) -> None:
    """Lower the calling thread's priority; Linux applies setpriority per thread id."""
    if not sys.platform.startswith("linux"):
        return
    # Unprivileged users cannot raise priority again; failing is fine, it is only a hint.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class BatchEngine:
    """Dynamic batching in front of one model version's `predict_fn`."""

    def __init__(
        self,
        predict_fn: PredictFn,
        cfg: BatchingConfig,
        *,
        name: str = "",
        on_batch: OnBatch | None = None,
        nice: int | None = None,
    ) -> None:
        if not callable(predict_fn):
            raise TypeError(f"predict_fn must be callable, got {type(predict_fn).__name__}")
        if not isinstance(cfg, BatchingConfig):
            raise TypeError(
                f"cfg must be a BatchingConfig (serve.batching), got {type(cfg).__name__}"
            )
        self._predict_fn = predict_fn
        self._cfg = cfg
        self._name = name
        self._on_batch = on_batch
        self._nice = nice
        self._queue: deque[_Request] = deque()
        self._queued_texts = 0
        self._in_flight = 0
        self._throughput = 0.0
        self._running: list[_Request] = []  # the batch the model is working on
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._stopping = False

    # --- public state ------------------------------------------------------------------------

    @property
    def queued_texts(self) -> int:
        """Texts admitted and not yet handed to the model."""
        return self._queued_texts

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered."""
        return self._in_flight

    @property
    def throughput(self) -> float:
        """EWMA of texts/s over model calls (0.0 before the first successful call)."""
        return self._throughput

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread and the batcher; a second call while running does nothing."""
        if self._batcher is not None and not self._batcher.done():
            return
        self._stopping = False
        self._wakeup = asyncio.Event()
        prefix = f"lmforge-engine-{self._name}" if self._name else "lmforge-engine"
        if self._nice is not None:
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=prefix,
                initializer=_set_thread_nice,
                initargs=(self._nice,),
            )
        else:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=prefix)
        self._batcher = asyncio.create_task(self._run(), name=f"{prefix}-batcher")

    async def stop(self, drain_s: float = 5.0) -> None:
        """Refuse new requests, finish queued work for up to `drain_s`, fail the rest, shut down."""
        if drain_s < 0:
            raise ValueError(f"drain_s must be >= 0 seconds, got {drain_s}")
        if self._batcher is None:
            return
        self._stopping = True
        self._wake()
        batcher = self._batcher
        drained = True
        if not batcher.done():
            done, _ = await asyncio.wait({batcher}, timeout=drain_s)
            drained = bool(done)
        if not drained:
            batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher
        elif not batcher.cancelled() and batcher.exception() is not None:
            log.error("batch engine %r: batcher died", self._name, exc_info=batcher.exception())
        # Whatever is left (drain timed out, or the batcher died) gets a clear answer.
        stopped = EngineStopped(
            f"model {self._name!r} stopped before answering (drain_s={drain_s} ran out)"
        )
        for req in [*self._running, *self._queue]:
            req.queued = False
            if not req.future.done():
                req.future.set_exception(stopped)
        self._running = []
        self._queue.clear()
        self._queued_texts = 0
        self._batcher = None
        if self._executor is not None:
            # After a clean drain the thread is idle and joins at once; after a timeout it may
            # still be inside predict_fn, which we cannot interrupt, so do not block the loop on it.
            self._executor.shutdown(wait=drained, cancel_futures=True)
            self._executor = None

    # --- requests ----------------------------------------------------------------------------

    async def predict(self, texts: list[str], deadline: float | None = None) -> list[Any]:
        """One prediction per text, in order. `deadline` is a time.monotonic() instant."""
        if not isinstance(texts, list):
            raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
        if self._stopping:
            raise EngineStopped(f"model {self._name!r} is shutting down")
        if self._batcher is None or self._wakeup is None:
            raise EngineStopped(f"model {self._name!r} is not running; call start() first")
        now = time.monotonic()
        if deadline is None:
            deadline = now + self._cfg.timeout_ms / 1000.0
        if deadline <= now:
            raise DeadlineExceeded(
                f"model {self._name!r}: the request's deadline passed before it was queued"
            )
        if not texts:
            return []
        limit = self._cfg.max_queue_texts
        if self._queued_texts + len(texts) > limit:
            raise Overloaded(
                self._queued_texts, limit, self._retry_after(), len(texts), name=self._name
            )

        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        req = _Request(list(texts), fut, deadline, now, timeout_s=deadline - now)
        self._queue.append(req)
        self._queued_texts += len(texts)
        self._in_flight += 1
        self._wake()
        # The deadline is a timer that fails `fut` (a plain await: no waiter future or extra
        # loop pass per request, as asyncio.wait would add). A batch that finishes later skips
        # the done future; the batch itself is untouched.
        timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), self._expire, req
        )
        try:
            return await fut
        finally:
            timer.cancel()
            # Timed out or cancelled (client gone): free its queue space, and mark the future
            # done so the batcher skips it and no unretrieved exception is logged.
            self._in_flight -= 1
            self._dequeue(req)
            if not fut.done():
                fut.cancel()

    # --- internals ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _expire(self, req: _Request) -> None:
        if req.future.done():
            return
        where = "queued" if req.queued else "the model was running"
        req.future.set_exception(
            DeadlineExceeded(
                f"model {self._name!r}: request of {len(req.texts)} texts missed its "
                f"{req.timeout_s * 1000:.0f} ms deadline while {where}"
            )
        )

    def _dequeue(self, req: _Request) -> None:
        if req.queued:
            req.queued = False
            self._queue.remove(req)
            self._queued_texts -= len(req.texts)
            self._wake()  # the head may have changed, and with it the batch timer

    def _retry_after(self) -> float:
        if self._throughput <= 0:
            return _RETRY_MIN_S
        est = self._queued_texts / self._throughput
        return float(math.ceil(min(_RETRY_MAX_S, max(_RETRY_MIN_S, est))))

    def _expired(self, req: _Request, now: float) -> bool:
        return req.deadline <= now

    def _batch_is_full(self, now: float) -> bool:
        """True when no more waiting can grow the batch the head request would start."""
        total = 0
        for req in self._queue:
            if req.future.done() or self._expired(req, now):
                continue
            if total and total + len(req.texts) > self._cfg.max_batch_size:
                return True  # the next request overflows: the batch cannot grow
            total += len(req.texts)
            if total >= self._cfg.max_batch_size:
                return True
        return False

    def _take_batch(self, now: float) -> list[_Request]:
        """Pop the next batch in arrival order, dropping requests whose deadline passed."""
        batch: list[_Request] = []
        total = 0
        while self._queue:
            req = self._queue[0]
            if not req.future.done() and not self._expired(req, now):
                if total and total + len(req.texts) > self._cfg.max_batch_size:
                    break  # it starts the next batch; never split a request
                batch.append(req)
                total += len(req.texts)
            elif not req.future.done():
                req.future.set_exception(
                    DeadlineExceeded(
                        f"model {self._name!r}: request of {len(req.texts)} texts missed its "
                        f"{req.timeout_s * 1000:.0f} ms deadline while queued"
                    )
                )
            self._queue.popleft()
            req.queued = False
            self._queued_texts -= len(req.texts)
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        delay_s = self._cfg.max_queue_delay_ms / 1000.0
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = time.monotonic()
            # While stopping nothing new arrives: waiting for a fuller batch only wastes drain time.
            if delay_s > 0 and not self._stopping and not self._batch_is_full(now):
                remaining = self._queue[0].enqueued_at + delay_s - now
                if remaining > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    continue  # re-check: new arrivals, departures, or the timer ran out
            batch = self._take_batch(now)
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Request]) -> None:
        assert self._executor is not None
        merged = [text for req in batch for text in req.texts]
        loop = asyncio.get_running_loop()
        self._running = batch
        started = time.perf_counter()
        try:
            raw = await loop.run_in_executor(self._executor, self._predict_fn, merged)
            seconds = time.perf_counter() - started
            results = list(raw)
            if len(results) != len(merged):
                raise RuntimeError(
                    f"model {self._name!r}: predict_fn returned {len(results)} results for "
                    f"{len(merged)} texts; it must return exactly one result per text, in order"
                )
        except asyncio.CancelledError:
            raise  # stop() ran out of drain time; it answers self._running
        except Exception as exc:
            for req in batch:
                if not req.future.done():
                    req.future.set_exception(exc)
            self._running = []
            return
        self._running = []
        self._record(len(merged), seconds)
        start = 0
        for req in batch:
            if not req.future.done():
                req.future.set_result(results[start : start + len(req.texts)])
            start += len(req.texts)

    def _record(self, n_texts: int, seconds: float) -> None:
        rate = n_texts / max(seconds, 1e-6)
        if self._throughput <= 0:
            self._throughput = rate
        else:
            self._throughput = _EWMA_ALPHA * rate + (1 - _EWMA_ALPHA) * self._throughput
        if self._on_batch is not None:
            try:
                self._on_batch(n_texts, seconds)
            except Exception:  # a metrics hook must not take the engine down
                log.exception("batch engine %r: on_batch hook failed", self._name)
