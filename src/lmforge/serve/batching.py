"""Runs the model off the event loop, merging requests that queue up into one model call.

One worker thread owns the model, so torch's own intra-op threads are not oversubscribed by
many concurrent forward passes. While a call runs, new requests wait in a queue; the next call
takes all of them at once (up to `max_batch_texts`). Nothing waits on a timer, so a lone request
pays no extra latency, and under load one forward pass serves many requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PredictFn = Callable[[list[str]], Sequence[Any]]


class BatchingPredictor:
    def __init__(
        self,
        predict_fn: PredictFn,
        max_batch_texts: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_texts < 1:
            raise ValueError(f"max_batch_texts must be >= 1, got {max_batch_texts}")
        self._predict_fn = predict_fn
        self._max_batch = max_batch_texts
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future[list[Any]]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-infer")
        self._worker = asyncio.create_task(self._run(), name="lmforge-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def predict(self, texts: list[str]) -> list[Any]:
        """One prediction per text, in order."""
        if self._queue is None:
            raise RuntimeError("BatchingPredictor.start() was not called")
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, fut))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        carry: tuple[list[str], asyncio.Future[list[Any]]] | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            batch = [first]
            total = len(first[0])
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if total + len(item[0]) > self._max_batch:
                    carry = item  # starts the next call; keeps arrival order
                    break
                batch.append(item)
                total += len(item[0])
            batch = [(texts, fut) for texts, fut in batch if not fut.done()]  # drop cancelled
            if not batch:
                continue
            merged = [text for texts, _ in batch for text in texts]
            try:
                results = await loop.run_in_executor(self._executor, self._predict_fn, merged)
            except asyncio.CancelledError:
                # Shutting down mid-call: answer the waiting requests instead of leaving them hung.
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("the server is shutting down"))
                raise
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(merged))
            start = 0
            for texts, fut in batch:
                if not fut.done():
                    fut.set_result(list(results[start : start + len(texts)]))
                start += len(texts)
