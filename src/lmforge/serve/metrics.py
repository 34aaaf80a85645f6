"""Prometheus metrics for one app, kept in the app's own CollectorRegistry.

A per-app registry (not prometheus-client's global one) lets several apps live in one process,
as they do in tests, without "duplicated timeseries" errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# From 1 ms to 10 s: a small CPU classifier answers in a few ms, a queue under load in seconds.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The server's counters and histograms; `render()` is the `/metrics` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lmforge_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "lmforge_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predicted_texts = Counter(
            "lmforge_predicted_texts_total",
            "Texts classified by the model.",
            registry=self.registry,
        )
        self.batch_texts = Histogram(
            "lmforge_inference_batch_texts",
            "Texts per model call (requests are merged into one call when they queue up).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "lmforge_model_info",
            "The served model version (value 1; the labels carry the identity).",
            ("name", "version", "quantization"),
            registry=self.registry,
        )
        self.ready = Gauge(
            "lmforge_model_ready", "1 once the model is loaded.", registry=self.registry
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def set_model(self, name: str, version: int, quantization: str | None) -> None:
        self.model_info.labels(name, str(version), quantization or "none").set(1)
        self.ready.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
