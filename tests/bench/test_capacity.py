"""Capacity search on synthetic servers (no network), and the /proc RSS sampler."""

import itertools
import math
import os
import subprocess
import sys
import time

import pytest

from lmforge.bench.capacity import CapacityResult, find_capacity, trial_passed
from lmforge.bench.openloop import LoadSpecError, OpenLoopResult
from lmforge.bench.procstats import ProcessGoneError, RssSampler, rss_bytes


def synthetic(capacity: float, fail_mode: str = "latency"):
    """A server that meets the objective up to `capacity` req/s and misses it above."""
    calls: list[float] = []

    def measure(rate: float) -> OpenLoopResult:
        calls.append(rate)
        n = max(round(rate), 1)  # one second of load
        overloaded = rate > capacity
        ok = n
        latency = 0.02
        if overloaded and fail_mode == "latency":
            latency = 0.5
        elif overloaded and fail_mode == "errors":
            ok = n - max(n // 100, 1)  # 1 % errors
        elif overloaded and fail_mode == "behind":
            ok = int(capacity)  # the rest never completed in the window
        result = OpenLoopResult(rate=rate, duration_s=n / rate, scheduled=n, sent=n, ok=ok)
        result.failed = n - ok
        if result.failed:
            result.failures = {"503": result.failed}
        result.latencies_s = [latency] * ok
        return result

    measure.calls = calls
    return measure


@pytest.mark.parametrize("fail_mode", ["latency", "errors", "behind"])
@pytest.mark.parametrize("capacity", [37.0, 1234.0, 9000.0])
def test_monotone_threshold_is_found_within_tolerance(capacity, fail_mode):
    measure = synthetic(capacity, fail_mode)
    out = find_capacity(measure, rel_tolerance=0.1, max_trials=14)
    assert out.rate <= capacity < out.lowest_fail
    assert out.lowest_fail <= out.rate * 1.1
    assert out.rate >= capacity / 1.1
    assert 1 <= len(out.trials) <= 14
    assert [r for r, _, _ in out.trials] == measure.calls
    assert all(passed == (rate <= capacity) for rate, _, passed in out.trials)
    assert not out.capped
    # Deterministic given the measure function.
    again = find_capacity(synthetic(capacity, fail_mode), rel_tolerance=0.1, max_trials=14)
    assert [(r, p) for r, _, p in again.trials] == [(r, p) for r, _, p in out.trials]


def test_growth_then_bisection_trial_sequence():
    out = find_capacity(synthetic(100.0), start_rate=20, rel_tolerance=0.1)
    rates = [round(r, 3) for r, _, _ in out.trials]
    assert rates[:4] == [20, 40, 80, 160]  # doubles until the first failure
    assert rates[4] == round(math.sqrt(80 * 160), 3)  # then geometric midpoints
    assert out.summary()["trials"][0]["passed"] is True


def test_search_goes_down_when_the_start_rate_fails():
    out = find_capacity(synthetic(4.0), start_rate=20, rel_tolerance=0.05)
    rates = [r for r, _, _ in out.trials]
    assert rates[:3] == [20, 10, 5] and rates[3] == 2.5
    assert out.rate <= 4.0 < out.lowest_fail <= out.rate * 1.05


def test_confirm_failures_reruns_a_failed_trial():
    flaky = synthetic(1000.0)
    stalls = {80.0}  # the first trial at 80/s hits a stall; its rerun passes

    def measure(rate):
        result = flaky(rate)
        if rate in stalls:
            stalls.discard(rate)
            result.latencies_s[-1] = 5.0
            result.latencies_s[-2] = 5.0
        return result

    out = find_capacity(measure, start_rate=20, confirm_failures=1)
    assert [(r, p) for r, _, p in out.trials[:5]] == [
        (20, True),
        (40, True),
        (80, False),
        (80, True),
        (160, True),
    ]
    assert out.rate <= 1000 < out.lowest_fail
    # Without reruns the stall ends the growth at 80/s.
    stalls.add(80.0)
    plain = find_capacity(measure, start_rate=20)
    assert plain.rate < 80


def test_max_rate_caps_the_search():
    out = find_capacity(synthetic(1e9), start_rate=20, max_rate=1000)
    assert out.capped and out.rate == 1000 and out.lowest_fail is None
    assert [r for r, _, _ in out.trials] == [20, 40, 80, 160, 320, 640, 1000]


def test_trials_are_bounded():
    never = find_capacity(synthetic(0.001), max_trials=5)
    assert never.rate == 0.0 and len(never.trials) == 5 and not any(p for *_, p in never.trials)
    short = find_capacity(synthetic(5000.0), start_rate=1, max_trials=4)
    assert len(short.trials) == 4 and short.rate == 8  # still growing when trials ran out
    assert isinstance(short, CapacityResult)


def test_trial_passed_checks_each_criterion():
    def run(ok=100, scheduled=100, latency=0.01, rate=100.0):
        r = OpenLoopResult(rate=rate, duration_s=1.0, scheduled=scheduled, sent=scheduled, ok=ok)
        r.latencies_s = [latency] * ok
        return r

    assert trial_passed(run(), 0.1, 0.999) == (True, "ok")
    passed, why = trial_passed(run(latency=0.2), 0.1, 0.999)
    assert not passed and "p99 200.0 ms > 100.0 ms" in why
    passed, why = trial_passed(run(ok=99), 0.1, 0.999)
    assert not passed and "success" in why
    passed, why = trial_passed(run(ok=90), 0.1, 0.5)
    assert not passed and "achieved 90.0/s < 95% of the offered 100.0/s" in why
    # A Poisson trial that scheduled fewer requests than rate x duration still passes.
    assert trial_passed(run(ok=90, scheduled=90), 0.1, 0.999) == (True, "ok")
    assert trial_passed(run(ok=0), 0.1, 0.0) == (False, "no successful request")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"p99_limit_s": 0}, "p99_limit_s=0"),
        ({"min_success": 1.5}, "min_success=1.5"),
        ({"start_rate": 100, "max_rate": 10}, "max_rate=10"),
        ({"max_trials": 0}, "max_trials=0"),
        ({"growth": 1.0}, "growth=1.0"),
    ],
)
def test_bad_search_parameters_raise_clear_errors(kwargs, needle):
    with pytest.raises(LoadSpecError, match=needle):
        find_capacity(synthetic(10.0), **kwargs)


# --- procstats -------------------------------------------------------------------------

CHILD = """
import sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
block = bytearray(b"\\x01") * (96 * 1024 * 1024)  # written, so resident
sys.stdout.write("allocated\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def _wait_for(condition, limit_s=10.0):
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "the sampler did not catch up in time"
        time.sleep(0.01)


def test_rss_of_this_process_and_of_a_growing_child():
    assert rss_bytes(os.getpid(), include_children=False) > 1024 * 1024
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "ready\n"
        before = rss_bytes(child.pid)
        with_child_before = rss_bytes(os.getpid(), include_children=True)
        assert with_child_before >= rss_bytes(os.getpid(), include_children=False) + before // 2
        with RssSampler(child.pid, interval_s=0.02) as sampler:
            _wait_for(lambda: len(sampler.samples) >= 2)
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "allocated\n"
            grown = sampler.samples[0][1] + 80 * 1024 * 1024
            _wait_for(lambda: sampler.samples[-1][1] > grown)  # a busy machine delays samples
        after = rss_bytes(child.pid)
        assert after - before > 80 * 1024 * 1024
        assert rss_bytes(os.getpid()) - with_child_before > 80 * 1024 * 1024
        samples = sampler.samples
        assert len(samples) >= 3
        assert all(t1 >= t0 for (t0, _), (t1, _) in itertools.pairwise(samples))
        assert samples[0][1] < before + 16 * 1024 * 1024
        assert sampler.peak_bytes - samples[0][1] > 80 * 1024 * 1024
    finally:
        child.stdin.close()
        child.wait(10)


def test_sampler_ends_when_the_process_exits_and_gone_pids_raise():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    sampler = RssSampler(child.pid, interval_s=0.02).start()
    child.wait(10)
    deadline = time.monotonic() + 5
    while sampler._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sampler._thread.is_alive()  # stopped on its own
    samples = sampler.stop()
    assert samples and all(b > 0 for _, b in samples)
    with pytest.raises(ProcessGoneError, match=f"pid {child.pid}"):
        rss_bytes(child.pid)
