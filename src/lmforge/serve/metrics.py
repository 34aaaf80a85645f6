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
    """The server's counters and histograms; `render()` is the `/metrics` body.

    The names are the ones `deploy/grafana/lmforge-serving.json` charts; keep them in step.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "lmforge_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ("route", "method", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "lmforge_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "lmforge_predictions_total",
            "Texts answered, by model, version and routing variant (alias).",
            ("model", "version", "variant"),
            registry=r,
        )
        self.model_latency = Histogram(
            "lmforge_model_latency_seconds",
            "Seconds of one model call (a whole batch).",
            ("model", "version"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_texts = Histogram(
            "lmforge_inference_batch_texts",
            "Texts per model call (queued requests are merged into one call).",
            ("model", "version"),
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_texts = Gauge(
            "lmforge_queue_texts",
            "Texts waiting for the model, per model version.",
            ("model", "version"),
            registry=r,
        )
        self.rejected = Counter(
            "lmforge_rejected_total",
            "Requests refused: overloaded (queue full), deadline (504), rate_limited, stopped.",
            ("model", "reason"),
            registry=r,
        )
        self.cache = Counter(
            "lmforge_cache_requests_total",
            "Prediction cache lookups per text, by result (hit or miss).",
            ("result",),
            registry=r,
        )
        self.shadow = Counter(
            "lmforge_shadow_total",
            "Shadow copies of requests, by outcome (compared, dropped, failed).",
            ("model", "outcome"),
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "lmforge_shadow_agreement_ratio",
            "Share of texts on which the shadow model agrees with the live one.",
            ("model",),
            registry=r,
        )
        self.alerts = Counter(
            "lmforge_alerts_total",
            "Anomaly alerts raised and resolved, by series.",
            ("series", "kind"),
            registry=r,
        )
        self.alert_active = Gauge(
            "lmforge_alert_active",
            "1 while an alert is open on the series.",
            ("series",),
            registry=r,
        )
        self.model_info = Gauge(
            "lmforge_model_info",
            "Loaded model versions (value 1; the labels carry the identity).",
            ("name", "version", "backend", "quantization"),
            registry=r,
        )
        self.ready = Gauge("lmforge_model_ready", "1 once the models are loaded.", registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def model_loaded(self, name: str, version: int, backend: str, quantization: str | None) -> None:
        self.model_info.labels(name, str(version), backend, quantization or "none").set(1)

    def model_unloaded(
        self, name: str, version: int, backend: str, quantization: str | None
    ) -> None:
        labels = (name, str(version), backend, quantization or "none")
        try:
            self.model_info.remove(*labels)
            self.queue_texts.remove(name, str(version))
        except KeyError:
            pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
