"""Capacity search: the highest request rate a server sustains within a latency objective.

A trial runs open-loop load at one rate (`measure(rate)`, usually a `run_open_loop` of a few
seconds) and passes when p99 <= `p99_limit_s`, the success ratio >= `min_success`, and the
server kept up: achieved rate >= 95 % of the offered rate (the requests the trial's schedule
held per second; a Poisson schedule of a few seconds may hold 10 % more or fewer than the
target rate times its length). The search grows the rate geometrically from `start_rate`
until a trial fails, then bisects between the last pass and the first fail until they are
within `rel_tolerance` of each other. It never runs more than `max_trials` trials, and it is
deterministic given `measure`: the same answers give the same trials.

Load tests are noisy, so the answer is the highest *passing* rate seen inside the final
bracket; a pass above an earlier failure does not move the upper bound back up.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.bench.openloop import LoadSpecError, OpenLoopResult, run_open_loop_sync

KEEP_UP_RATIO = 0.95  # achieved / target below this: the server (or the client) fell behind


@dataclass
class CapacityResult:
    """`rate` is the highest passing rate (0.0 when none passed); `trials` in run order."""

    rate: float
    trials: list[tuple[float, dict[str, Any], bool]] = field(default_factory=list)
    capped: bool = False  # max_rate itself passed: the true capacity may be higher
    lowest_fail: float | None = None  # the bracket's upper end (None: no trial failed)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the answer, the bracket, and a short line per trial."""
        return {
            "rate": round(self.rate, 3),
            "capped": self.capped,
            "lowest_fail": None if self.lowest_fail is None else round(self.lowest_fail, 3),
            "trials": [
                {
                    "rate": round(rate, 3),
                    "passed": passed,
                    **{
                        k: s.get(k)
                        for k in (
                            "achieved_rate",
                            "success",
                            "p50_ms",
                            "p99_ms",
                            "failures",
                            "late_sends",
                            "client_cpu_s",
                        )
                    },
                }
                for rate, s, passed in self.trials
            ],
        }


def trial_passed(
    result: OpenLoopResult, p99_limit_s: float, min_success: float
) -> tuple[bool, str]:
    """Whether one run meets the objective, and why not when it does not."""
    if result.ok == 0:
        return False, "no successful request"
    p99 = result.latency_ms(99) / 1000.0
    if p99 > p99_limit_s:
        return False, f"p99 {p99 * 1000:.1f} ms > {p99_limit_s * 1000:.1f} ms"
    if result.success < min_success:
        return False, f"success {result.success:.4f} < {min_success}"
    # Against the offered rate, not the target: a short Poisson trial may schedule 10 % fewer.
    if result.achieved_rate < KEEP_UP_RATIO * result.offered_rate:
        return False, (
            f"achieved {result.achieved_rate:.1f}/s < 95% of the offered "
            f"{result.offered_rate:.1f}/s"
        )
    return True, "ok"


def find_capacity(
    measure: Callable[[float], OpenLoopResult],
    *,
    p99_limit_s: float = 0.1,
    min_success: float = 0.999,
    start_rate: float = 20,
    max_rate: float = 20000,
    rel_tolerance: float = 0.1,
    max_trials: int = 14,
    growth: float = 2.0,
    confirm_failures: int = 0,
    on_trial: Callable[[float, dict[str, Any], bool, str], None] | None = None,
) -> CapacityResult:
    """Highest rate in [.., max_rate] that passes (see `trial_passed`); at most max_trials runs.

    When `start_rate` itself fails, the search divides the rate by `growth` until a trial
    passes (or trials run out: then `rate` is 0.0). With `confirm_failures=k` a failed trial
    is rerun up to k times and the rate passes if any rerun passes: on a shared machine one
    stall can ruin a short trial's p99. Reruns count toward `max_trials` and are listed in
    `trials`. `on_trial(rate, summary, passed, reason)` is called after each trial.
    """
    _check(p99_limit_s, min_success, start_rate, max_rate, rel_tolerance, max_trials, growth)
    if not isinstance(confirm_failures, int) or confirm_failures < 0:
        raise LoadSpecError(f"confirm_failures={confirm_failures!r}: use 0 or more reruns")
    out = CapacityResult(rate=0.0)
    lo: float | None = None  # highest passing rate
    hi: float | None = None  # lowest failing rate above lo

    def trial(rate: float) -> bool:
        for attempt in range(confirm_failures + 1):
            if attempt and len(out.trials) >= max_trials:
                break
            result = measure(rate)
            passed, reason = trial_passed(result, p99_limit_s, min_success)
            summary = result.summary()
            out.trials.append((rate, summary, passed))
            if on_trial is not None:
                on_trial(rate, summary, passed, reason)
            if passed:
                return True
        return False

    rate = min(start_rate, max_rate)
    # Bracket: up from start_rate while passing, or down while failing.
    while len(out.trials) < max_trials:
        if trial(rate):
            lo = rate
            if hi is not None:  # came down from a failure: bracketed
                break
            if rate >= max_rate:
                out.capped = True
                break
            rate = min(rate * growth, max_rate)
        else:
            hi = rate
            if lo is not None:
                break
            rate = rate / growth
    # Bisect the bracket (geometric midpoint: rates span orders of magnitude).
    while (
        lo is not None
        and hi is not None
        and hi > lo * (1.0 + rel_tolerance)
        and len(out.trials) < max_trials
    ):
        mid = math.sqrt(lo * hi)
        if trial(mid):
            lo = mid
        else:
            hi = mid
    out.rate = lo if lo is not None else 0.0
    out.lowest_fail = hi
    return out


def _check(
    p99_limit_s: float,
    min_success: float,
    start_rate: float,
    max_rate: float,
    rel_tolerance: float,
    max_trials: int,
    growth: float,
) -> None:
    for name, value in (
        ("p99_limit_s", p99_limit_s),
        ("start_rate", start_rate),
        ("max_rate", max_rate),
        ("rel_tolerance", rel_tolerance),
    ):
        if not (math.isfinite(value) and value > 0):
            raise LoadSpecError(f"{name}={value!r}: must be a positive, finite number")
    if not 0.0 <= min_success <= 1.0:
        raise LoadSpecError(f"min_success={min_success!r}: use a ratio in [0, 1], e.g. 0.999")
    if max_rate < start_rate:
        raise LoadSpecError(
            f"max_rate={max_rate!r} is below start_rate={start_rate!r}; raise max_rate"
        )
    if not isinstance(max_trials, int) or max_trials < 1:
        raise LoadSpecError(f"max_trials={max_trials!r}: use at least 1")
    if not (math.isfinite(growth) and growth > 1.0):
        raise LoadSpecError(f"growth={growth!r}: use a factor above 1, e.g. 2")


def open_loop_measure(
    url: str,
    texts: list[str],
    trial_s: float,
    *,
    settle_s: float = 1.0,
    min_requests: int = 0,
    max_trial_s: float | None = None,
    log: Callable[[str], None] | None = None,
    **open_loop_kw: Any,
) -> Callable[[float], OpenLoopResult]:
    """A `measure(rate)` for `find_capacity`: one `run_open_loop` of `trial_s` at that rate.

    A trial lasts long enough to hold `min_requests` requests (a p99 of 60 samples is their
    maximum), up to `max_trial_s` (default 3 x trial_s). Before each trial it waits
    `settle_s`, so a backlog the server kept from an overloaded trial drains first. The
    generator's own CPU time is recorded (`client_cpu_s` in the summary): when it nears the
    trial's length, the client, not the server, is the limit.
    """
    _check_positive_s(trial_s=trial_s)
    longest = max(max_trial_s if max_trial_s is not None else 3 * trial_s, trial_s)

    def measure(rate: float) -> OpenLoopResult:
        time.sleep(max(settle_s, 0.0))
        seconds = min(max(trial_s, min_requests / rate), longest)
        cpu0 = _cpu_s()
        result = run_open_loop_sync(url, rate, seconds, texts, **open_loop_kw)
        result.client_cpu_s = _cpu_s() - cpu0
        if log is not None:
            s = result.summary()
            log(
                f"  rate {rate:9.1f}/s: achieved {s['achieved_rate']:9.1f}/s, "
                f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, failures {s['failures']}, "
                f"late sends {s['late_sends']}, client cpu {result.client_cpu_s:.2f} s"
            )
        return result

    return measure


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _check_positive_s(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise LoadSpecError(f"{name}={value!r}: must be a positive number of seconds")
