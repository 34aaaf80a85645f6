import asyncio
import threading

import pytest

from lmforge.serve.batching import BatchingPredictor


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_queued_requests_share_one_call_and_keep_order():
    calls: list[list[str]] = []
    gate = threading.Event()

    def predict(texts):
        gate.wait(5)  # hold the first call so the others queue up behind it
        calls.append(list(texts))
        return [t.upper() for t in texts]

    async def main():
        predictor = BatchingPredictor(predict, max_batch_texts=64)
        await predictor.start()
        try:
            first = asyncio.create_task(predictor.predict(["a"]))
            await asyncio.sleep(0.05)
            rest = [asyncio.create_task(predictor.predict([f"b{i}", f"c{i}"])) for i in range(5)]
            await asyncio.sleep(0.05)
            gate.set()
            return await first, await asyncio.gather(*rest)
        finally:
            await predictor.stop()

    first, rest = _run(main())
    assert first == ["A"]
    assert rest == [[f"B{i}", f"C{i}"] for i in range(5)]
    assert len(calls) == 2  # one call for the first request, one for the five queued ones
    assert calls[1] == [t for i in range(5) for t in (f"b{i}", f"c{i}")]


def test_batches_never_exceed_the_cap():
    sizes: list[int] = []
    gate = threading.Event()

    def predict(texts):
        gate.wait(5)
        sizes.append(len(texts))
        return list(texts)

    async def main():
        predictor = BatchingPredictor(predict, max_batch_texts=4)
        await predictor.start()
        try:
            tasks = [asyncio.create_task(predictor.predict([str(i)] * 3)) for i in range(4)]
            await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.gather(*tasks)
        finally:
            await predictor.stop()

    results = _run(main())
    assert results == [[str(i)] * 3 for i in range(4)]
    assert max(sizes) <= 4


def test_a_failing_call_fails_its_requests_only():
    def predict(texts):
        if "bad" in texts:
            raise ValueError("cannot classify")
        return list(texts)

    async def main():
        predictor = BatchingPredictor(predict)
        await predictor.start()
        try:
            with pytest.raises(ValueError, match="cannot classify"):
                await predictor.predict(["bad"])
            return await predictor.predict(["good"])
        finally:
            await predictor.stop()

    assert _run(main()) == ["good"]
