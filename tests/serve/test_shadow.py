import asyncio
import time

import pytest

from lmforge.serve.comparisons import ServingStore
from lmforge.serve.shadow import ShadowConfigError, ShadowMirror


def _pred(label: str, p: float = 0.9) -> dict:
    other = "b" if label == "a" else "a"
    return {"label": label, "probs": {label: p, other: 1 - p}}


def _echo_shadow(labels: list[str], version: int = 2, delay: float = 0.0):
    """A shadow engine that answers the given labels, one per text."""

    async def run(texts: list[str]) -> tuple[list[dict], int]:
        if delay:
            await asyncio.sleep(delay)
        return [_pred(labels[i % len(labels)]) for i in range(len(texts))], version

    return run


def test_compares_and_stores_with_agreement(tmp_path):
    store = ServingStore(tmp_path)
    outcomes: list[tuple[str, str]] = []

    async def main() -> ShadowMirror:
        mirror = ShadowMirror(store, queue_size=16, on_outcome=lambda m, o: outcomes.append((m, o)))
        await mirror.start()
        primary = [_pred("a"), _pred("a"), _pred("b"), _pred("b")]
        # shadow says a, b, a, b: agrees on texts 0 and 3
        assert mirror.submit(
            "m", "r1", ["t"] * 4, primary, 1, 0.005, _echo_shadow(["a", "b"], delay=0.01)
        )
        assert mirror.submit(
            "m", "r2", ["t"] * 2, primary[:2], 1, 0.005, _echo_shadow(["a"], delay=0.01)
        )
        await mirror.stop(drain_s=5)
        return mirror

    mirror = asyncio.run(main())
    assert mirror.agreement("m") == pytest.approx(4 / 6)
    assert mirror.agreement("unknown") is None
    stats = mirror.stats
    assert (stats["submitted"], stats["compared"], stats["failed"], stats["dropped"]) == (
        2,
        2,
        0,
        0,
    )
    assert outcomes == [("m", "compared"), ("m", "compared")]
    store.flush()
    stored = {c.request_id: c for c in store.comparisons("m")}
    assert (stored["r1"].agree_count, stored["r1"].texts) == (2, 4)
    assert stored["r1"].shadow_version == 2 and stored["r1"].primary_version == 1
    assert stored["r1"].shadow_latency_s >= 0.01  # measured around the shadow call
    assert stored["r1"].primary_latency_s == 0.005
    store.close()


def test_full_queue_drops_counts_and_never_blocks(tmp_path):
    store = ServingStore(tmp_path)
    outcomes: list[str] = []

    async def main() -> tuple[ShadowMirror, list[bool], list[float]]:
        mirror = ShadowMirror(store, queue_size=3, on_outcome=lambda m, o: outcomes.append(o))
        await mirror.start()
        slow = _echo_shadow(["a"], delay=0.2)
        results = []
        took = []
        for i in range(1000):  # no await in between: the worker cannot take any
            t0 = time.perf_counter()
            results.append(mirror.submit("m", f"r{i}", ["t"], [_pred("a")], 1, 0.0, slow))
            took.append(time.perf_counter() - t0)
        assert mirror.stats["queue_depth"] == 3
        await mirror.stop(drain_s=5)
        return mirror, results, took

    mirror, results, took = asyncio.run(main())
    assert results == [True] * 3 + [False] * 997
    # < 1 ms per call even when full (the mean: one OS preemption must not fail the test)
    assert sum(took[3:]) / len(took[3:]) < 0.001
    assert max(took) < 0.05
    stats = mirror.stats
    assert (stats["submitted"], stats["dropped"], stats["compared"]) == (3, 997, 3)
    assert outcomes.count("dropped") == 997 and outcomes.count("compared") == 3
    store.close()


def test_bounded_concurrency_and_queue_while_shadow_is_slow(tmp_path):
    store = ServingStore(tmp_path)
    running = 0
    peak = 0

    async def slow(texts: list[str]) -> tuple[list[dict], int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.2)
        running -= 1
        return [_pred("a") for _ in texts], 2

    async def main() -> ShadowMirror:
        mirror = ShadowMirror(store, queue_size=5, max_concurrent=2)
        await mirror.start()
        accepted = 0
        for i in range(40):
            accepted += mirror.submit("m", f"r{i}", ["t"], [_pred("a")], 1, 0.0, slow)
            await asyncio.sleep(0.005)  # the worker runs between submits
            assert mirror.stats["in_flight"] <= 2
            assert mirror.stats["queue_depth"] <= 5
        await mirror.stop(drain_s=5)
        assert accepted == mirror.stats["compared"]
        return mirror

    mirror = asyncio.run(main())
    assert peak == 2
    assert mirror.stats["dropped"] > 0
    assert mirror.stats["compared"] + mirror.stats["dropped"] == 40
    store.close()


def test_failing_shadow_counts_failed_and_mirror_keeps_working(tmp_path):
    store = ServingStore(tmp_path)
    outcomes: list[str] = []

    async def broken(texts: list[str]) -> tuple[list[dict], int]:
        raise RuntimeError("shadow engine exploded")

    async def wrong_count(texts: list[str]) -> tuple[list[dict], int]:
        return [], 2

    async def hangs(texts: list[str]) -> tuple[list[dict], int]:
        await asyncio.sleep(60)
        return [], 2

    def bad_hook(model: str, outcome: str) -> None:
        outcomes.append(outcome)
        raise ValueError("metrics hook broken")  # must not stop the mirror either

    async def main() -> ShadowMirror:
        mirror = ShadowMirror(store, queue_size=8, on_outcome=bad_hook, timeout_s=0.05)
        await mirror.start()
        for fn in (broken, wrong_count, hangs):
            assert mirror.submit("m", "r", ["t"], [_pred("a")], 1, 0.0, fn)
        assert mirror.submit("m", "ok", ["t"], [_pred("a")], 1, 0.0, _echo_shadow(["a"]))
        await mirror.stop(drain_s=5)
        return mirror

    mirror = asyncio.run(main())
    assert mirror.stats["failed"] == 3
    assert mirror.stats["compared"] == 1
    assert mirror.agreement("m") == 1.0
    assert sorted(outcomes) == ["compared", "failed", "failed", "failed"]
    store.flush()
    assert [c.request_id for c in store.comparisons("m")] == ["ok"]
    store.close()


def test_stop_drains_queue_then_drops_the_rest(tmp_path):
    store = ServingStore(tmp_path)

    async def main(drain_s: float, delay: float) -> ShadowMirror:
        mirror = ShadowMirror(store, queue_size=50, max_concurrent=1)
        await mirror.start()
        fn = _echo_shadow(["a"], delay=delay)
        for i in range(10):
            mirror.submit("m", f"r{i}", ["t"], [_pred("a")], 1, 0.0, fn)
        await mirror.stop(drain_s=drain_s)
        # stopped: new copies are refused (and counted) without raising
        assert not mirror.submit("m", "late", ["t"], [_pred("a")], 1, 0.0, fn)
        return mirror

    drained = asyncio.run(main(drain_s=5, delay=0.001))
    assert drained.stats["compared"] == 10
    assert drained.stats["queue_depth"] == 0 and drained.stats["dropped"] == 1

    cut = asyncio.run(main(drain_s=0.05, delay=0.1))
    stats = cut.stats
    assert stats["compared"] < 10
    assert stats["compared"] + stats["dropped"] == 11  # nothing lost track of
    assert stats["queue_depth"] == 0 and stats["in_flight"] == 0
    store.close()


def test_sampling_and_submit_before_start(tmp_path):
    store = ServingStore(tmp_path)

    async def main() -> ShadowMirror:
        mirror = ShadowMirror(store, queue_size=10_000, sample=0.25, seed=7)
        fn = _echo_shadow(["a"])
        # before start(): copies wait in the queue and are processed once started
        accepted = sum(
            mirror.submit("m", f"r{i}", ["t"], [_pred("a")], 1, 0.0, fn) for i in range(2000)
        )
        assert mirror.stats["queue_depth"] == accepted
        await mirror.start()
        await mirror.stop(drain_s=10)
        assert mirror.stats["compared"] == accepted
        return mirror

    mirror = asyncio.run(main())
    assert 400 < mirror.stats["submitted"] < 600
    assert mirror.stats["sampled_out"] == 2000 - mirror.stats["submitted"]

    never = ShadowMirror(store, queue_size=1, sample=0.0)
    assert not never.submit("m", "r", ["t"], [_pred("a")], 1, 0.0, _echo_shadow(["a"]))
    assert never.stats["submitted"] == 0 and never.stats["dropped"] == 0
    store.close()


def test_submit_from_another_thread(tmp_path):
    store = ServingStore(tmp_path)

    async def main() -> ShadowMirror:
        mirror = ShadowMirror(store, queue_size=10)
        await mirror.start()
        fn = _echo_shadow(["a"])
        await asyncio.to_thread(mirror.submit, "m", "r", ["t"], [_pred("a")], 1, 0.0, fn)
        for _ in range(200):
            if mirror.stats["compared"]:
                break
            await asyncio.sleep(0.01)
        await mirror.stop()
        return mirror

    assert asyncio.run(main()).stats["compared"] == 1
    store.close()


def test_invalid_settings(tmp_path):
    store = ServingStore(tmp_path)
    with pytest.raises(ShadowConfigError, match="queue_size"):
        ShadowMirror(store, queue_size=0)
    with pytest.raises(ShadowConfigError, match="sample"):
        ShadowMirror(store, queue_size=1, sample=1.5)
    store.close()
