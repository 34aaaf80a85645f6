"""Anomaly alerts on per-model latency and error rate, from the requests the server answers.

Requests are grouped into windows of `window_s` seconds (aligned to the epoch, so every worker
cuts the same windows). Each closed window that saw requests gives one point per series:

    latency:MODEL   p95 of the window's request latencies, in seconds
    errors:MODEL    share of the window's requests that failed (5xx)

A window without requests gives no point (not a zero): idle is not "fast" or "healthy".

Each series has a `RobustDetector`: an EWMA baseline and a robust z-score of how far a point
lies above it, the scale being the MAD of recent residuals (so a few wild points do not blow
up the scale as a standard deviation would), but never below the point's own sampling noise.
Points are scored after a transform that makes their noise near-normal and level-free (log
for latency, arcsine for the error share; see below); alerts carry untransformed values.
Alerts are one-sided, since only slower and
more failures are bad; a series raises when z > z_threshold and resolves once z falls below
half of it (the gap stops an alert flapping on a borderline series). `AlertMonitor` turns the
scores into raised/resolved transitions and `run()` delivers them: a warning log line, the
app's `on_alert` callback (Prometheus counter/gauge) and an optional webhook POST.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, Literal

from lmforge.config import AlertsConfig

log = logging.getLogger("lmforge.alerts")

MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal noise
RESOLVE_FRACTION = 0.5  # an active alert resolves when z < this x z_threshold
STALE_WINDOWS = 12  # an active alert whose series got no point for this many windows resolves
MAX_SAMPLES = 1024  # latencies kept per window and model (a uniform sample beyond that)
MAX_OPEN_WINDOWS = 120  # windows kept while nobody calls tick(); older ones are dropped
WEBHOOK_TIMEOUT_S = 2.0

# Scale floors per series kind, plus per window the sampling noise of its value (a p95 of
# twenty requests, or one failure in ten, is not much evidence). Latency is scored as
# log(p95): latency noise is multiplicative and right-skewed, which the log makes additive
# and near-symmetric, so one threshold fits 2 ms and 2 s services; its floor 0.05 is ~5 %.
# Errors are scored as Anscombe's asin(sqrt((failed + 3/8) / (n + 3/4))), which makes a
# binomial share's noise about 1/(2 sqrt(n)) at any rate, with near-normal tails even for small
# n (the raw share's are not); its floor 0.03 lets a burst from an all-zero history alert from
# ~1.5 % failures on (with enough requests).
LATENCY_LOG_MIN_SCALE = 0.05
ERRORS_ASIN_MIN_SCALE = 0.03
MIN_LATENCY_S = 1e-6  # keeps log() finite for a (clock-rounded) zero latency


@dataclass(frozen=True)
class Score:
    z: float  # robust z-score of the point above the baseline (negative: below it)
    baseline: float  # the baseline the point was compared with (before this point updated it)
    anomalous: bool  # z > z_threshold, and the detector has seen min_points points


class RobustDetector:
    """EWMA baseline plus a robust z-score over the last `history` residuals.

    z = (residual - median of past residuals) / scale, scale = max(1.4826 x MAD of past
    residuals, min_scale, rel_min_scale x |baseline|, the point's scale_floor): finite even
    when the history is constant (MAD 0). No point is anomalous before `min_points` points.
    Once warmed up, points beyond z_threshold are kept out of the residual history and move
    the baseline only by a clipped amount, so a sustained spike keeps scoring high instead of
    becoming the new normal within a few points; a lasting level shift is absorbed slowly
    (about gap / (alpha x scale) points).
    """

    def __init__(
        self,
        alpha: float,
        z_threshold: float,
        min_points: int,
        history: int = 60,
        *,
        min_scale: float = 1e-9,
        rel_min_scale: float = 0.0,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}; e.g. 0.3")
        if z_threshold <= 0:
            raise ValueError(f"z_threshold must be > 0, got {z_threshold}; e.g. 4")
        if min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {min_points}; e.g. 12")
        if history < 3:
            raise ValueError(f"history must be >= 3 residuals, got {history}; e.g. 60")
        if min_scale <= 0:
            raise ValueError(f"min_scale must be > 0 (it keeps z finite), got {min_scale}")
        self.alpha = alpha
        self.z_threshold = z_threshold
        self.min_points = min_points
        self.min_scale = min_scale
        self.rel_min_scale = rel_min_scale
        self.points = 0
        self.baseline: float | None = None
        self._residuals: deque[float] = deque(maxlen=history)

    def update(self, value: float, scale_floor: float = 0.0) -> Score:
        """Scores `value` against the baseline, then updates the baseline with it.

        `scale_floor` raises the scale for this point only (e.g. the sampling noise of a
        rate computed from few requests).
        """
        if not math.isfinite(value):
            raise ValueError(f"detector values must be finite numbers, got {value}")
        self.points += 1
        if self.baseline is None:
            self.baseline = value
            return Score(0.0, value, False)
        base = self.baseline
        residual = value - base
        center, spread = self._center_and_spread()
        base_scale = max(spread, self.min_scale, self.rel_min_scale * abs(base))
        z = (residual - center) / max(base_scale, scale_floor)
        warmed = self.points >= self.min_points
        # Whether the point may teach the baseline is judged without scale_floor: a spike in
        # a noisy window is still a spike, even when too uncertain to alert on.
        if not warmed or abs(residual - center) <= self.z_threshold * base_scale:
            self._residuals.append(residual)
            self.baseline = base + self.alpha * residual
        else:
            # Outliers move the baseline by a clipped amount (with base_scale: a noisy window's
            # own floor must not speed that up). Upwards by one scale, so a spike creeps in
            # slowly and keeps alerting; downwards by z_threshold scales, so after a spike the
            # baseline comes back fast, while one odd fast window still cannot drag it far.
            clip = base_scale if residual > center else -self.z_threshold * base_scale
            self.baseline = base + self.alpha * (center + clip)
        return Score(z, base, warmed and z > self.z_threshold)

    def _center_and_spread(self) -> tuple[float, float]:
        if len(self._residuals) < 3:
            return 0.0, 0.0  # too few to estimate: the floors decide the scale
        center = median(self._residuals)
        mad = median(abs(r - center) for r in self._residuals)
        return center, MAD_TO_SIGMA * mad


@dataclass(frozen=True)
class Alert:
    series: str  # "latency:MODEL" or "errors:MODEL"
    value: float  # the window's p95 latency (s) or error share
    baseline: float
    z: float
    at: float  # unix time of the end of the window that caused it
    kind: Literal["raised", "resolved"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Window:
    __slots__ = ("count", "errors", "latencies")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.latencies: list[float] = []

    def add(self, latency_s: float, error: bool) -> None:
        self.count += 1
        if error:
            self.errors += 1
        if len(self.latencies) < MAX_SAMPLES:
            self.latencies.append(latency_s)
        else:  # reservoir sampling: every request of the window equally likely to be kept
            slot = random.randrange(self.count)
            if slot < MAX_SAMPLES:
                self.latencies[slot] = latency_s

    def p95(self) -> tuple[float, float]:
        """The p95 (nearest rank) and its standard error in log space."""
        ordered = sorted(self.latencies)
        n = len(ordered)
        rank = max(0, math.ceil(0.95 * n) - 1)
        # Two estimates of the noise, the larger wins: from order statistics (the rank of a
        # sample p95 varies by ~sqrt(n p (1-p)) ranks), which is blind for tiny windows (the
        # top two of five can be close by chance), and the asymptotic sd of a quantile,
        # sqrt(p (1-p) / n) / pdf(z_p) in units of the log-latency spread (IQR / 1.349).
        k = max(1, math.ceil(math.sqrt(n * 0.95 * 0.05)))
        lo = _log(ordered[max(0, rank - k)])
        hi = _log(ordered[min(n - 1, rank + k)])
        spread = (_log(ordered[(3 * n) // 4]) - _log(ordered[n // 4])) / 1.349
        asymptotic = spread * math.sqrt(0.95 * 0.05 / n) / 0.1031
        return ordered[rank], max((hi - lo) / 2, asymptotic)


class AlertMonitor:
    """Per-model windows, detectors and the active alerts of one server process.

    Feed it with `observe_request` from the request path (cheap), call `tick()` (or let
    `run()` do so every window) to close windows and get the transitions. `active` maps a
    series to its raised alert while it lasts. Pass only known model names as the key: each
    distinct key makes two series.
    """

    def __init__(
        self,
        cfg: AlertsConfig,
        on_alert: Callable[[Alert], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.on_alert = on_alert
        self._clock = clock
        self._window_s = cfg.window_s
        self._open: dict[int, dict[str, _Window]] = {}
        self._detectors: dict[str, RobustDetector] = {}
        self._last_point: dict[str, int] = {}  # series -> index of its last window with data
        self.active: dict[str, Alert] = {}

    def observe_request(self, series_key: str, latency_s: float, error: bool) -> None:
        """Counts one answered request of model `series_key` into the current window.

        Call it from the event loop's thread (it takes no lock). A latency that is not a
        finite number >= 0 drops the request: one bad value must not poison a window's p95.
        """
        if not self.cfg.enabled or not (0.0 <= latency_s < math.inf):
            return
        index = int(self._clock() // self._window_s)
        windows = self._open.get(index)
        if windows is None:
            windows = self._open[index] = {}
            if len(self._open) > MAX_OPEN_WINDOWS:  # nobody ticks: keep memory bounded
                del self._open[min(self._open)]
        window = windows.get(series_key)
        if window is None:
            window = windows[series_key] = _Window()
        window.add(latency_s, error)

    def tick(self, now: float | None = None) -> list[Alert]:
        """Closes every window that ended by `now`, scores it, returns the transitions."""
        if now is None:
            now = self._clock()
        current = int(now // self._window_s)
        alerts: list[Alert] = []
        for index in sorted(i for i in self._open if i < current):
            at = (index + 1) * self._window_s
            for key, window in self._open.pop(index).items():
                p95, log_se = window.p95()
                self._score(alerts, f"latency:{key}", p95, _log(p95), log_se, math.exp, index, at)
                n, failed = window.count, window.errors
                # Anscombe's arcsine transform: noise ~1/(2 sqrt(n + 1/2)) whatever the rate.
                scored = math.asin(math.sqrt((failed + 0.375) / (n + 0.75)))
                noise = 0.5 / math.sqrt(n + 0.5)
                self._score(
                    alerts, f"errors:{key}", failed / n, scored, noise, _from_asin, index, at
                )
        for series, alert in list(self.active.items()):
            if current - 1 - self._last_point.get(series, current) >= STALE_WINDOWS:
                # No traffic, no evidence either way: do not leave the alert up for ever.
                del self.active[series]
                alerts.append(
                    Alert(
                        series,
                        alert.value,
                        alert.baseline,
                        alert.z,
                        current * self._window_s,
                        "resolved",
                    )
                )
        return alerts

    def points(self, series: str) -> int:
        """How many points `series` ("latency:MODEL", "errors:MODEL") has been scored on."""
        detector = self._detectors.get(series)
        return detector.points if detector is not None else 0

    async def run(self, stop: asyncio.Event) -> None:
        """Ticks at every window boundary until `stop` is set, delivering each transition."""
        if not self.cfg.enabled:
            return
        import aiohttp  # only the running server needs it

        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                # Just past the next boundary, so the window that ended is complete.
                delay = self._window_s - (self._clock() % self._window_s) + 0.01
                try:
                    await asyncio.wait_for(stop.wait(), min(max(delay, 0.01), self._window_s))
                    break
                except asyncio.TimeoutError:
                    pass
                try:
                    await self.deliver(self.tick(), session)
                except Exception:  # the monitor must outlive any one bad tick
                    log.exception("alert monitor tick failed")

    async def deliver(self, alerts: list[Alert], session: Any = None) -> None:
        """Logs each alert, calls on_alert, and POSTs them to the webhook (if configured).

        Never raises for a failing callback or webhook; those failures are logged. `session`
        is an aiohttp ClientSession to reuse; without one a short-lived one is made.
        """
        for alert in alerts:
            log.warning(
                "alert %s %s: value %.6g, baseline %.6g, z %.1f",
                alert.kind,
                alert.series,
                alert.value,
                alert.baseline,
                alert.z,
                extra={
                    "alert_series": alert.series,
                    "alert_kind": alert.kind,
                    "alert_value": alert.value,
                    "alert_baseline": alert.baseline,
                    "alert_z": alert.z,
                    "alert_at": alert.at,
                },
            )
            if self.on_alert is not None:
                try:
                    self.on_alert(alert)
                except Exception:
                    log.exception("on_alert callback failed for %s", alert.series)
        url = self.cfg.webhook_url
        if not alerts or not url:
            return
        import aiohttp

        if session is None:
            timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as own:
                await asyncio.gather(*(_post(own, url, a) for a in alerts))
        else:
            await asyncio.gather(*(_post(session, url, a) for a in alerts))

    def _detector(self, series: str) -> RobustDetector:
        detector = self._detectors.get(series)
        if detector is None:
            latency = series.startswith("latency:")
            detector = self._detectors[series] = RobustDetector(
                self.cfg.ewma_alpha,
                self.cfg.z_threshold,
                self.cfg.min_points,
                min_scale=LATENCY_LOG_MIN_SCALE if latency else ERRORS_ASIN_MIN_SCALE,
            )
        return detector

    def _score(
        self,
        alerts: list[Alert],
        series: str,
        value: float,
        scored: float,
        scale_floor: float,
        back: Callable[[float], float],
        index: int,
        at: float,
    ) -> None:
        """Feeds `scored` (the transformed `value`) to the series' detector; `back` turns
        the detector's baseline into the value's units for the alert."""
        score = self._detector(series).update(scored, scale_floor)
        self._last_point[series] = index
        active = self.active.get(series)
        if active is None and score.anomalous:
            alert = Alert(series, value, back(score.baseline), score.z, at, "raised")
            self.active[series] = alert
            alerts.append(alert)
        elif active is not None and score.z < RESOLVE_FRACTION * self.cfg.z_threshold:
            del self.active[series]
            alerts.append(Alert(series, value, back(score.baseline), score.z, at, "resolved"))


def _log(seconds: float) -> float:
    return math.log(max(seconds, MIN_LATENCY_S))


def _from_asin(scored: float) -> float:
    # Inverse of the plain arcsine transform (close enough to Anscombe's for a baseline).
    return math.sin(min(max(scored, 0.0), math.pi / 2)) ** 2


async def _post(session: Any, url: str, alert: Alert) -> None:
    import aiohttp

    try:
        async with session.post(url, json=alert.to_dict()) as resp:
            if resp.status >= 400:
                log.warning("alert webhook %s answered %d for %s", url, resp.status, alert.series)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        log.warning("alert webhook %s failed for %s: %r", url, alert.series, e)
