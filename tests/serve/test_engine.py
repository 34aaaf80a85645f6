import asyncio
import math
import os
import sys
import threading
import time

import pytest

from lmforge.config import BatchingConfig
from lmforge.serve.engine import BatchEngine, DeadlineExceeded, EngineStopped, Overloaded


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def _cfg(**kw) -> BatchingConfig:
    kw.setdefault("max_batch_size", 32)
    kw.setdefault("max_queue_delay_ms", 0.0)
    return BatchingConfig(**kw)


async def _until(pred, timeout: float = 3.0) -> None:
    """Poll `pred` on the event loop; fail instead of hanging."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


class Recorder:
    """A plain predict_fn: records each call (texts, thread), optionally sleeps or blocks."""

    def __init__(self, sleep_s: float = 0.0, gated: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()
        self.sleep_s = sleep_s
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()
        self._active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[str]:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            self.calls.append(list(texts))
            self.threads.add(threading.get_ident())
            self.entered.set()
            assert self.gate.wait(5), "test gate never opened"
            if self.sleep_s:
                time.sleep(self.sleep_s)
            return [t.upper() for t in texts]
        finally:
            with self._lock:
                self._active -= 1


# --- batching -------------------------------------------------------------------------------


def test_concurrent_callers_merge_into_fewer_calls_and_keep_their_results():
    model = Recorder(sleep_s=0.02)
    batches: list[tuple[int, float]] = []

    async def main():
        engine = BatchEngine(
            model,
            _cfg(max_batch_size=64, max_queue_delay_ms=5),
            on_batch=lambda n, s: batches.append((n, s)),
        )
        await engine.start()
        try:
            reqs = [[f"r{i}a", f"r{i}b"] for i in range(20)]
            results = await asyncio.gather(*(engine.predict(r) for r in reqs))
        finally:
            await engine.stop()
        return reqs, results, engine

    reqs, results, engine = _run(main())
    for req, res in zip(reqs, results, strict=True):
        assert res == [t.upper() for t in req]
    assert len(model.calls) < len(reqs)
    assert model.max_active == 1  # never two forward passes at once
    assert len(model.threads) == 1  # one dedicated worker thread
    assert threading.get_ident() not in model.threads  # not on the event loop thread
    assert sum(n for n, _ in batches) == 40 and len(batches) == len(model.calls)
    assert all(s > 0 for _, s in batches)
    assert engine.throughput > 0


def test_max_batch_size_respected_arrival_order_kept_and_big_request_runs_alone():
    model = Recorder(gated=True)
    sizes = [1, 3, 2, 6, 1, 2, 2, 1]

    async def main():
        engine = BatchEngine(model, _cfg(max_batch_size=4, max_queue_delay_ms=0))
        await engine.start()
        try:
            blocker = asyncio.create_task(engine.predict(["first"]))
            await _until(model.entered.is_set)
            reqs = [[f"q{i}-{j}" for j in range(n)] for i, n in enumerate(sizes)]
            tasks = [asyncio.create_task(engine.predict(r)) for r in reqs]
            await _until(lambda: engine.queued_texts == sum(sizes))
            model.gate.set()
            results = await asyncio.gather(*tasks)
            await blocker
        finally:
            await engine.stop()
        return reqs, results

    reqs, results = _run(main())
    for req, res in zip(reqs, results, strict=True):
        assert res == [t.upper() for t in req]
    later = model.calls[1:]
    # Arrival order across calls, requests never split, a full batch never overflowed.
    assert [t for call in later for t in call] == [t for r in reqs for t in r]
    assert later == [
        ["q0-0", "q1-0", "q1-1", "q1-2"],
        ["q2-0", "q2-1"],  # q3 (6 texts) would overflow: it starts the next call
        [f"q3-{j}" for j in range(6)],  # larger than max_batch_size: runs alone
        ["q4-0", "q5-0", "q5-1"],
        ["q6-0", "q6-1", "q7-0"],
    ]


def test_delay_timer_fills_one_batch():
    model = Recorder()

    async def main():
        engine = BatchEngine(model, _cfg(max_batch_size=32, max_queue_delay_ms=50))
        await engine.start()
        try:
            tasks = []
            for i in range(5):
                tasks.append(asyncio.create_task(engine.predict([f"t{i}"])))
                await asyncio.sleep(0.005)
            results = await asyncio.gather(*tasks)
        finally:
            await engine.stop()
        return results

    results = _run(main())
    assert results == [[f"T{i}"] for i in range(5)]
    assert model.calls == [[f"t{i}" for i in range(5)]]


def test_full_batch_does_not_wait_for_the_timer():
    model = Recorder()

    async def main():
        engine = BatchEngine(model, _cfg(max_batch_size=3, max_queue_delay_ms=2000))
        await engine.start()
        try:
            t0 = time.monotonic()
            await engine.predict(["a", "b", "c"])
            return time.monotonic() - t0
        finally:
            await engine.stop()

    assert _run(main()) < 1.0  # the 2 s timer is skipped once max_batch_size is reached


def test_delay_zero_lone_request_not_delayed_but_a_delay_is_waited_out():
    def latency(delay_ms: float) -> float:
        async def main():
            engine = BatchEngine(Recorder(), _cfg(max_queue_delay_ms=delay_ms))
            await engine.start()
            try:
                t0 = time.monotonic()
                assert await engine.predict(["x"]) == ["X"]
                return time.monotonic() - t0
            finally:
                await engine.stop()

        return _run(main())

    assert latency(0) < 0.15
    assert latency(300) >= 0.29  # a lone request waits for company up to the delay


def test_delay_zero_takes_everything_already_queued():
    model = Recorder(gated=True)

    async def main():
        engine = BatchEngine(model, _cfg(max_batch_size=32, max_queue_delay_ms=0))
        await engine.start()
        try:
            first = asyncio.create_task(engine.predict(["a"]))
            await _until(model.entered.is_set)
            rest = [asyncio.create_task(engine.predict([f"b{i}"])) for i in range(3)]
            await _until(lambda: engine.queued_texts == 3)
            model.gate.set()
            await asyncio.gather(first, *rest)
        finally:
            await engine.stop()

    _run(main())
    assert model.calls == [["a"], ["b0", "b1", "b2"]]


def test_event_loop_keeps_running_during_a_model_call():
    model = Recorder(sleep_s=0.3)

    async def main():
        engine = BatchEngine(model, _cfg())
        await engine.start()
        ticks = 0

        async def ticker():
            nonlocal ticks
            for _ in range(1000):
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        try:
            await engine.predict(["x"])
        finally:
            tick_task.cancel()
            await engine.stop()
        return ticks

    assert _run(main()) >= 5


# --- admission --------------------------------------------------------------------------------


def test_full_queue_raises_overloaded_at_once():
    model = Recorder(gated=True)

    async def main():
        engine = BatchEngine(model, _cfg(max_queue_texts=5), name="m1")
        await engine.start()
        try:
            running = asyncio.create_task(engine.predict(["run"]))
            await _until(model.entered.is_set)
            queued = [
                asyncio.create_task(engine.predict(["a", "b"])),
                asyncio.create_task(engine.predict(["c", "d", "e"])),
            ]
            await _until(lambda: engine.queued_texts == 5)
            assert engine.in_flight == 3
            t0 = time.monotonic()
            with pytest.raises(Overloaded) as info:
                await engine.predict(["f"])
            assert time.monotonic() - t0 < 0.1  # refused right away, not after waiting
            exc = info.value
            assert (exc.queued_texts, exc.limit, exc.retry_after_s) == (5, 5, 1.0)
            assert "serve.batching.max_queue_texts" in str(exc)
            assert "5" in str(exc) and "'m1'" in str(exc)
            with pytest.raises(Overloaded, match="can never fit"):
                await engine.predict(list("abcdef"))
            assert engine.in_flight == 3  # refused requests were never admitted
            model.gate.set()
            await asyncio.gather(running, *queued)
        finally:
            await engine.stop()

    _run(main())


def test_retry_after_follows_throughput_and_is_clamped():
    model = Recorder(sleep_s=0.05)

    async def main():
        engine = BatchEngine(model, _cfg(max_queue_texts=40, max_batch_size=4))
        await engine.start()
        try:
            await engine.predict(["w1", "w2", "w3", "w4"])  # measures throughput
            assert engine.throughput > 0
            model.gate.clear()
            model.entered.clear()
            running = asyncio.create_task(engine.predict(["run"]))
            await _until(model.entered.is_set)
            queued = [asyncio.create_task(engine.predict([f"q{i}"] * 4)) for i in range(10)]
            await _until(lambda: engine.queued_texts == 40)
            with pytest.raises(Overloaded) as info:
                await engine.predict(["x"])
            expected = math.ceil(min(30.0, max(1.0, 40 / engine.throughput)))
            model.gate.set()
            await asyncio.gather(running, *queued)
            return info.value.retry_after_s, expected
        finally:
            await engine.stop()

    retry, expected = _run(main())
    assert retry == expected
    assert 1 <= retry <= 30 and retry == int(retry)


# --- deadlines ----------------------------------------------------------------------------------


def test_deadline_passes_while_queued_request_is_dropped_before_the_model():
    model = Recorder(gated=True)

    async def main():
        engine = BatchEngine(model, _cfg(max_batch_size=2))
        await engine.start()
        try:
            running = asyncio.create_task(engine.predict(["run"]))
            await _until(model.entered.is_set)
            doomed = asyncio.create_task(
                engine.predict(["late1", "late2"], deadline=time.monotonic() + 0.05)
            )
            keeper = asyncio.create_task(engine.predict(["keep"]))
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="while queued"):
                await doomed
            assert time.monotonic() - t0 < 1.0
            assert engine.queued_texts == 1  # its queue space is freed at once
            assert engine.in_flight == 2
            model.gate.set()
            assert await keeper == ["KEEP"]
            await running
        finally:
            await engine.stop()

    _run(main())
    assert model.calls == [["run"], ["keep"]]


def test_engine_drops_expired_requests_when_forming_a_batch():
    # Expiry is checked by the batcher too, not only by the caller's own timer.
    model = Recorder()

    async def main():
        engine = BatchEngine(model, _cfg(max_queue_delay_ms=0))
        await engine.start()
        try:
            doomed = asyncio.create_task(engine.predict(["late"], deadline=time.monotonic() + 0.02))
            keeper = asyncio.create_task(engine.predict(["keep"]))
            await asyncio.sleep(0)  # both enqueue; the batcher is scheduled after this task
            assert engine.queued_texts == 2
            # Block the loop past the deadline: the batcher runs before the caller's timer fires.
            time.sleep(0.05)
            with pytest.raises(DeadlineExceeded, match="while queued"):
                await doomed
            assert await keeper == ["KEEP"]
        finally:
            await engine.stop()

    _run(main())
    assert model.calls == [["keep"]]


def test_deadline_passes_while_running_other_requests_still_answered():
    model = Recorder(sleep_s=0.4)

    async def main():
        engine = BatchEngine(model, _cfg(max_queue_delay_ms=30))
        await engine.start()
        try:
            t0 = time.monotonic()
            short = asyncio.create_task(engine.predict(["s"], deadline=t0 + 0.15))
            patient = asyncio.create_task(engine.predict(["p"]))
            with pytest.raises(DeadlineExceeded, match="model was running"):
                await short
            waited = time.monotonic() - t0
            assert waited < 0.35  # answered at its deadline, not when the batch finished
            assert await patient == ["P"]
            assert engine.in_flight == 0
        finally:
            await engine.stop()

    _run(main())
    assert model.calls == [["s", "p"]]  # one call, unaffected by the caller that left


def test_default_deadline_comes_from_timeout_ms_and_past_deadline_is_refused():
    model = Recorder(sleep_s=0.3)

    async def main():
        engine = BatchEngine(model, _cfg(timeout_ms=50))
        await engine.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="50 ms"):
                await engine.predict(["x"])
            assert time.monotonic() - t0 < 0.25
            with pytest.raises(DeadlineExceeded, match="before it was queued"):
                await engine.predict(["y"], deadline=time.monotonic() - 1)
        finally:
            await engine.stop()

    _run(main())


# --- failures -----------------------------------------------------------------------------------


def test_predict_fn_exception_reaches_every_request_in_the_batch_and_engine_recovers():
    def predict(texts):
        time.sleep(0.02)
        if any("bad" in t for t in texts):
            raise ValueError("tokenizer choked on bad input")
        return [len(t) for t in texts]

    async def main():
        engine = BatchEngine(predict, _cfg(max_queue_delay_ms=30))
        await engine.start()
        try:
            results = await asyncio.gather(
                engine.predict(["ok"]), engine.predict(["bad"]), return_exceptions=True
            )
            assert all(isinstance(r, ValueError) for r in results)
            assert "choked" in str(results[0])
            assert await engine.predict(["fine"]) == [4]
            assert engine.in_flight == 0 and engine.queued_texts == 0
        finally:
            await engine.stop()

    _run(main())


def test_wrong_result_length_is_an_error_not_a_misalignment():
    state = {"short": True}

    def predict(texts):
        if state["short"]:
            return [t for t in texts][:-1]
        return list(texts)

    async def main():
        engine = BatchEngine(predict, _cfg(max_queue_delay_ms=20), name="cls")
        await engine.start()
        try:
            results = await asyncio.gather(
                engine.predict(["a", "b"]), engine.predict(["c"]), return_exceptions=True
            )
            for r in results:
                assert isinstance(r, RuntimeError)
                assert "returned 2 results for 3 texts" in str(r)
            state["short"] = False
            assert await engine.predict(["d"]) == ["d"]
        finally:
            await engine.stop()

    _run(main())


def test_on_batch_hook_failure_does_not_break_the_engine():
    def hook(n, s):
        raise RuntimeError("metrics backend down")

    async def main():
        engine = BatchEngine(Recorder(), _cfg(), on_batch=hook)
        await engine.start()
        try:
            assert await engine.predict(["a"]) == ["A"]
            assert await engine.predict(["b"]) == ["B"]
        finally:
            await engine.stop()

    _run(main())


# --- lifecycle ----------------------------------------------------------------------------------


def test_stop_drains_queued_work_then_refuses():
    model = Recorder(gated=True)

    async def main():
        engine = BatchEngine(model, _cfg(max_batch_size=2, max_queue_delay_ms=1000))
        await engine.start()
        # A full first batch goes at once; the rest would wait for the 1 s timer.
        running = asyncio.create_task(engine.predict(["run", "run2"]))
        await _until(model.entered.is_set)
        queued = [asyncio.create_task(engine.predict([f"q{i}"])) for i in range(5)]
        await _until(lambda: engine.queued_texts == 5)
        stopper = asyncio.create_task(engine.stop(drain_s=3))
        await asyncio.sleep(0.02)
        with pytest.raises(EngineStopped, match="shutting down"):
            await engine.predict(["new"])
        model.gate.set()
        t0 = time.monotonic()
        await stopper
        assert time.monotonic() - t0 < 1.0  # draining does not wait out the 1 s batch timer
        assert await running == ["RUN", "RUN2"]
        assert [await t for t in queued] == [[f"Q{i}"] for i in range(5)]
        with pytest.raises(EngineStopped):
            await engine.predict(["after"])
        assert engine.in_flight == 0 and engine.queued_texts == 0

    _run(main())
    assert model.calls == [["run", "run2"], ["q0", "q1"], ["q2", "q3"], ["q4"]]


def test_stop_fails_what_it_cannot_drain_in_time():
    model = Recorder(gated=True)

    async def main():
        engine = BatchEngine(model, _cfg(max_batch_size=1))
        await engine.start()
        running = asyncio.create_task(engine.predict(["run"]))
        await _until(model.entered.is_set)
        queued = asyncio.create_task(engine.predict(["q"]))
        await _until(lambda: engine.queued_texts == 1)
        t0 = time.monotonic()
        await engine.stop(drain_s=0.1)
        assert time.monotonic() - t0 < 1.0
        for task in (running, queued):
            with pytest.raises(EngineStopped, match=r"drain_s=0\.1"):
                await task
        assert engine.in_flight == 0 and engine.queued_texts == 0

    try:
        _run(main())
    finally:
        model.gate.set()  # let the abandoned worker thread finish
    assert model.calls == [["run"]]


def test_predict_before_start_and_bad_arguments_raise_clear_errors():
    async def main():
        engine = BatchEngine(Recorder(), _cfg())
        with pytest.raises(EngineStopped, match=r"start\(\)"):
            await engine.predict(["a"])
        await engine.stop()  # stop before start is harmless
        await engine.start()
        try:
            with pytest.raises(TypeError, match="list of str"):
                await engine.predict("a single string")  # type: ignore[arg-type]
            assert await engine.predict([]) == []
            with pytest.raises(ValueError, match="drain_s"):
                await engine.stop(drain_s=-1)
        finally:
            await engine.stop()

    _run(main())
    with pytest.raises(TypeError, match="BatchingConfig"):
        BatchEngine(Recorder(), {"max_batch_size": 4})  # type: ignore[arg-type]


def test_engine_can_restart_after_stop():
    async def main():
        engine = BatchEngine(Recorder(), _cfg())
        await engine.start()
        assert await engine.predict(["a"]) == ["A"]
        await engine.stop()
        await engine.start()
        try:
            assert await engine.predict(["b"]) == ["B"]
        finally:
            await engine.stop()

    _run(main())


def test_cancelled_waiting_caller_frees_its_place_and_engine_keeps_serving():
    model = Recorder(gated=True)

    async def main():
        engine = BatchEngine(model, _cfg(max_queue_delay_ms=0))
        await engine.start()
        try:
            running = asyncio.create_task(engine.predict(["run"]))
            gone_while_running = asyncio.create_task(engine.predict(["also-running"]))
            await _until(model.entered.is_set)
            assert model.calls == [["run", "also-running"]]  # both enqueued before the batcher ran
            queued_gone = asyncio.create_task(engine.predict(["gone1", "gone2"]))
            keeper = asyncio.create_task(engine.predict(["keep"]))
            await asyncio.sleep(0.01)
            queued_gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued_gone
            assert "gone1" not in [t for c in model.calls for t in c]
            gone_while_running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone_while_running
            model.gate.set()
            assert await running == ["RUN"]
            assert await keeper == ["KEEP"]
            assert engine.in_flight == 0 and engine.queued_texts == 0
            assert await engine.predict(["later"]) == ["LATER"]
        finally:
            await engine.stop()

    _run(main())
    assert all("gone1" not in c for c in model.calls)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_nice_lowers_only_the_worker_thread_priority():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, base + 5)
    seen: list[int] = []

    def predict(texts):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return texts

    async def main():
        engine = BatchEngine(predict, _cfg(), nice=target)
        await engine.start()
        try:
            await engine.predict(["a"])
        finally:
            await engine.stop()

    _run(main())
    assert seen == [target]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
