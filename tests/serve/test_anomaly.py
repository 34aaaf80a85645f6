import asyncio
import json
import logging
import math
import random
import re
import time
from pathlib import Path

import pytest
from aiohttp import web

from lmforge.config import AlertsConfig
from lmforge.serve.anomaly import STALE_WINDOWS, Alert, AlertMonitor, RobustDetector

W = 5.0  # window_s of the default config


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def feed_window(
    monitor: AlertMonitor,
    clock: FakeClock,
    index: int,
    rng: random.Random,
    latency_s: float = 0.010,
    error_share: float = 0.0,
    requests: tuple[int, int] = (20, 100),
    model: str = "clf",
) -> list[Alert]:
    """One window of traffic (lognormal latencies around `latency_s`), then a tick at its end."""
    start = index * W
    n = rng.randint(*requests)
    for i in range(n):
        clock.now = start + (i + 0.5) * W / n
        latency = latency_s * math.exp(rng.gauss(0.0, 0.3))
        monitor.observe_request(model, latency, rng.random() < error_share)
    return monitor.tick(start + W)


def test_detector_never_alerts_before_min_points_and_keeps_z_finite_on_flat_history():
    detector = RobustDetector(alpha=0.3, z_threshold=4.0, min_points=12)
    scores = [detector.update(0.0) for _ in range(11)]
    assert not any(s.anomalous for s in scores)
    wild = RobustDetector(alpha=0.3, z_threshold=4.0, min_points=12)
    assert not any(wild.update(v).anomalous for v in [0, 100, 0, 100, 0, 100, 0, 100])
    jump = detector.update(1.0)  # the 12th point, after a MAD of exactly 0
    assert math.isfinite(jump.z) and jump.anomalous
    assert jump.baseline == 0.0


def test_detector_rejects_bad_arguments_with_the_value():
    with pytest.raises(ValueError, match="alpha must be in"):
        RobustDetector(alpha=0.0, z_threshold=4.0, min_points=12)
    with pytest.raises(ValueError, match="got nan"):
        RobustDetector(alpha=0.3, z_threshold=4.0, min_points=3).update(float("nan"))


def test_detector_baseline_is_barely_dragged_by_a_spike():
    detector = RobustDetector(alpha=0.3, z_threshold=4.0, min_points=5, min_scale=0.01)
    rng = random.Random(0)
    for _ in range(30):
        detector.update(1.0 + rng.gauss(0, 0.01))
    before = detector.baseline
    scores = [detector.update(5.0) for _ in range(10)]
    assert all(s.anomalous for s in scores)
    assert detector.baseline - before < 0.1  # an unclipped EWMA would be at ~4.9


def test_latency_step_raises_within_two_windows_stays_up_and_resolves_after():
    clock, rng = FakeClock(), random.Random(1)
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    base = int(clock.now // W)
    for i in range(60):
        assert feed_window(monitor, clock, base + i, rng) == []
    raised = []
    for i in range(60, 62):
        raised += feed_window(monitor, clock, base + i, rng, latency_s=0.200)
    assert [(a.series, a.kind) for a in raised] == [("latency:clf", "raised")]
    alert = raised[0]
    assert alert.value > 0.15 and 0.008 < alert.baseline < 0.02 and alert.z > 4
    assert alert.at in ((base + 61) * W, (base + 62) * W)
    # A sustained spike keeps the one alert up: no repeats, no resolution.
    for i in range(62, 80):
        assert feed_window(monitor, clock, base + i, rng, latency_s=0.200) == []
        assert "latency:clf" in monitor.active
    resolved = []
    for i in range(80, 82):
        resolved += feed_window(monitor, clock, base + i, rng)
    assert [(a.series, a.kind) for a in resolved] == [("latency:clf", "resolved")]
    assert monitor.active == {}


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_ordinary_noise_over_200_windows_raises_nothing(seed):
    clock, rng = FakeClock(), random.Random(seed)
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    base = int(clock.now // W)
    alerts = []
    for i in range(200):
        alerts += feed_window(
            monitor, clock, base + i, rng, error_share=0.02, requests=(5, 200), model="m"
        )
    assert alerts == []
    assert monitor.points("latency:m") == 200 and monitor.points("errors:m") == 200


def test_error_burst_after_an_all_zero_history_alerts_then_resolves():
    clock, rng = FakeClock(), random.Random(5)
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    base = int(clock.now // W)
    for i in range(100):
        assert feed_window(monitor, clock, base + i, rng, requests=(50, 100)) == []
    burst = feed_window(monitor, clock, base + 100, rng, error_share=0.3, requests=(50, 100))
    assert [(a.series, a.kind) for a in burst] == [("errors:clf", "raised")]
    assert 0.1 < burst[0].value < 0.5 and burst[0].baseline < 0.01
    assert math.isfinite(burst[0].z) and burst[0].z > 4
    after = feed_window(monitor, clock, base + 101, rng, requests=(50, 100))
    assert [(a.series, a.kind) for a in after] == [("errors:clf", "resolved")]


def test_one_failed_request_in_a_quiet_window_is_not_a_burst():
    clock, rng = FakeClock(), random.Random(6)
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    base = int(clock.now // W)
    for i in range(40):
        feed_window(monitor, clock, base + i, rng, requests=(3, 8))
    clock.now = (base + 40) * W + 1
    monitor.observe_request("clf", 0.010, True)
    monitor.observe_request("clf", 0.010, False)
    assert monitor.tick((base + 41) * W) == []


def test_idle_windows_give_no_points_and_series_are_per_model():
    clock, rng = FakeClock(), random.Random(7)
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    base = int(clock.now // W)
    for i in range(0, 100, 5):  # traffic in one window out of five
        feed_window(monitor, clock, base + i, rng)
        feed_window(monitor, clock, base + i, rng, model="other")
    assert monitor.points("latency:clf") == 20
    assert monitor.points("errors:other") == 20
    assert monitor.points("latency:unknown") == 0


def test_an_open_window_is_not_closed_early():
    clock = FakeClock()
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    index = int(clock.now // W)
    clock.now = index * W + 1.0
    monitor.observe_request("clf", 0.01, False)
    monitor.tick(index * W + 4.9)
    assert monitor.points("latency:clf") == 0
    monitor.tick(index * W + 5.0)
    assert monitor.points("latency:clf") == 1


def test_an_alert_of_a_model_that_went_quiet_resolves_after_stale_windows():
    clock, rng = FakeClock(), random.Random(8)
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    base = int(clock.now // W)
    for i in range(30):
        feed_window(monitor, clock, base + i, rng)
    assert feed_window(monitor, clock, base + 30, rng, latency_s=0.5)[0].kind == "raised"
    assert monitor.tick((base + 31 + STALE_WINDOWS - 1) * W) == []
    (gone,) = monitor.tick((base + 31 + STALE_WINDOWS) * W)
    assert (gone.series, gone.kind) == ("latency:clf", "resolved")
    assert monitor.active == {}


def test_disabled_monitor_ignores_requests():
    monitor = AlertMonitor(AlertsConfig(enabled=False))
    monitor.observe_request("clf", 1.0, True)
    assert monitor.tick(time.time() + 100) == []
    asyncio.run(monitor.run(asyncio.Event()))  # returns at once


class WebhookSink:
    """A tiny aiohttp server on 127.0.0.1 that records the JSON bodies POSTed to /hook."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: asyncio.Queue = asyncio.Queue()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> "WebhookSink":
        async def hook(request: web.Request) -> web.Response:
            await self.bodies.put(await request.json())
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def test_deliver_logs_calls_back_and_posts_the_alert_json(caplog):
    alert = Alert("latency:clf", 0.2, 0.01, 12.5, 1_700_000_000.0, "raised")
    seen: list[Alert] = []

    async def main() -> dict:
        async with WebhookSink() as sink:
            cfg = AlertsConfig(webhook_url=sink.url)
            await AlertMonitor(cfg, on_alert=seen.append).deliver([alert])
            return await asyncio.wait_for(sink.bodies.get(), 5)

    with caplog.at_level(logging.WARNING, logger="lmforge.alerts"):
        body = asyncio.run(main())
    assert body == {
        "series": "latency:clf",
        "value": 0.2,
        "baseline": 0.01,
        "z": 12.5,
        "at": 1_700_000_000.0,
        "kind": "raised",
    }
    assert seen == [alert]
    (record,) = [r for r in caplog.records if r.name == "lmforge.alerts"]
    assert record.levelno == logging.WARNING
    assert record.alert_series == "latency:clf" and record.alert_kind == "raised"
    assert record.alert_z == 12.5


def test_failing_webhook_and_callback_are_logged_never_raised(caplog):
    alert = Alert("errors:clf", 0.5, 0.0, 30.0, 1.0, "raised")

    def broken(_: Alert) -> None:
        raise RuntimeError("metrics down")

    async def main() -> None:
        async with WebhookSink(status=500) as sink:
            await AlertMonitor(AlertsConfig(webhook_url=sink.url), on_alert=broken).deliver([alert])
            await sink.bodies.get()
        # Nobody listens any more: connection refused.
        await AlertMonitor(AlertsConfig(webhook_url=sink.url)).deliver([alert])

    with caplog.at_level(logging.WARNING, logger="lmforge.alerts"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "lmforge.alerts"]
    assert any("on_alert callback failed" in m for m in messages)
    assert any("answered 500" in m for m in messages)
    assert any("failed for errors:clf" in m for m in messages)


def test_run_ticks_on_window_boundaries_and_posts_a_raised_alert():
    window = 0.2
    cfg = AlertsConfig(window_s=window, min_points=5)
    fake: list[float | None] = [None]

    def clock() -> float:  # fake time while the history is built, then the real clock
        return fake[0] if fake[0] is not None else time.time()

    seen: list[Alert] = []
    monitor = AlertMonitor(cfg, on_alert=seen.append, clock=clock)
    rng = random.Random(9)
    start = int(time.time() // window) - 100
    for i in range(40):  # forty quiet windows, in the past
        for j in range(50):
            fake[0] = (start + i) * window + (j + 0.5) * window / 50
            monitor.observe_request("clf", 0.010 * math.exp(rng.gauss(0, 0.3)), False)
        assert monitor.tick((start + i + 1) * window) == []
    fake[0] = None

    async def main() -> dict:
        async with WebhookSink() as sink:
            monitor.cfg = cfg.model_copy(update={"webhook_url": sink.url})
            stop = asyncio.Event()
            task = asyncio.create_task(monitor.run(stop))
            for _ in range(50):
                monitor.observe_request("clf", 0.5, False)
            body = await asyncio.wait_for(sink.bodies.get(), 5)
            stop.set()
            await asyncio.wait_for(task, 2)
            return body

    body = asyncio.run(main())
    assert body["series"] == "latency:clf" and body["kind"] == "raised"
    assert body["value"] == 0.5
    assert [a.series for a in seen] == ["latency:clf"]


# --- the Grafana dashboard (the alert series are two of its panels) ----------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lmforge-serving.json"
# The metric names the app exposes; the dashboard may use nothing else.
METRICS = {
    "lmforge_http_requests_total",
    "lmforge_http_request_duration_seconds_bucket",
    "lmforge_predictions_total",
    "lmforge_model_latency_seconds_bucket",
    "lmforge_inference_batch_texts_bucket",
    "lmforge_queue_texts",
    "lmforge_rejected_total",
    "lmforge_cache_requests_total",
    "lmforge_shadow_total",
    "lmforge_shadow_agreement_ratio",
    "lmforge_worker_restarts_total",
    "lmforge_alerts_total",
    "lmforge_alert_active",
}
PROMQL_FUNCTIONS = {"rate", "irate", "increase", "histogram_quantile", "sum", "max", "min", "avg"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "bool", "and", "or", "unless", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    """The series names an expression selects (functions, labels and keywords stripped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = match.group()
        if text[match.end() :].lstrip().startswith("("):
            assert token in PROMQL_FUNCTIONS, f"unexpected function {token} in {expr}"
        elif token not in PROMQL_KEYWORDS:
            names.add(token)
    return names


def test_promql_metric_names_parses_what_the_dashboard_uses():
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{a=~"5.."}[$__rate_interval])))'
    )
    assert promql_metric_names(expr) == {"x_bucket"}
    assert promql_metric_names("sum(rate(a[5m])) / sum(rate(b[5m]))") == {"a", "b"}


def test_dashboard_queries_use_only_the_exposed_metrics_and_cover_them_all():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    used: set[str] = set()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names and names <= METRICS, (panel["title"], names - METRICS)
            used |= names
    for variable in dash["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match and match.group(1) in METRICS
    assert used == METRICS


def test_dashboard_panel_ids_are_unique_and_the_grid_has_no_overlap():
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= 24, p["title"]
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1 :]:
            overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
            assert not overlap, f"panels {a!r} and {b!r} overlap"


def test_invalid_latencies_are_dropped_not_scored():
    clock = FakeClock()
    monitor = AlertMonitor(AlertsConfig(), clock=clock)
    for bad in (float("nan"), float("inf"), -0.5):
        monitor.observe_request("clf", bad, True)
    monitor.tick(clock.now + 2 * W)
    assert monitor.points("latency:clf") == 0 and monitor.points("errors:clf") == 0
