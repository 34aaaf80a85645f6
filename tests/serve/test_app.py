import json
import re
import threading
import time

import pytest
from starlette.testclient import TestClient

from lmforge.config import ServeConfig
from lmforge.inference import TextClassifier
from lmforge.serve import create_app

LIMITS = ServeConfig(max_texts=4, max_chars=50, max_body_bytes=8192)


@pytest.fixture
def app(tiny_registry):
    return create_app(tiny_registry, LIMITS)


@pytest.fixture
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_predict_returns_model_predictions_with_ids(client, tiny_model_dir):
    texts = ["The box arrived broken.", "这个套餐每个月多少钱？"]
    r = client.post("/v1/predict", json={"texts": texts})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == {"name": "tiny", "version": 1, "variant": "production"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert r.headers["x-request-id"] == body["request_id"]
    expected = TextClassifier.load(tiny_model_dir).predict(texts)
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected]
    for got, want in zip(body["predictions"], expected, strict=True):
        assert set(got["probs"]) == {"complaint", "praise", "question"}
        assert sum(got["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        for label, p in want["probs"].items():
            assert got["probs"][label] == pytest.approx(p, abs=1e-6)


def test_client_request_id_is_echoed_and_unsafe_ones_replaced(client):
    r = client.post("/v1/predict", json={"texts": ["hi"]}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["request_id"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def _error(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code
    return err["message"]


@pytest.mark.parametrize(
    ("payload", "status", "code", "needle"),
    [
        (b"{not json", 400, "invalid_json", "not valid UTF-8 JSON"),
        (b"", 400, "invalid_json", "empty"),
        (b"\xff\xfe", 400, "invalid_json", "not valid"),
        (b'["a"]', 422, "invalid_request", "JSON object"),
        (b"{}", 422, "invalid_request", "missing field 'texts'"),
        (b'{"texts": "one"}', 422, "invalid_request", "list of strings, got a string"),
        (b'{"texts": ["ok", 3]}', 422, "invalid_request", "texts[1] must be a string"),
        (b'{"texts": [null]}', 422, "invalid_request", "texts[0] must be a string, got null"),
        (b'{"texts": []}', 422, "empty_texts", "empty"),
        (b'{"texts": ["a"], "top_k": 2}', 422, "invalid_request", "unknown field 'top_k'"),
        (b"[" * 1500 + b"]" * 1500, 400, "invalid_json", "nested too deeply"),
        (b'{"texts": [' + b"9" * 5000 + b"]}", 400, "invalid_json", "not valid"),
    ],
)
def test_bad_bodies_get_json_4xx(client, payload, status, code, needle):
    r = client.post("/v1/predict", content=payload, headers={"content-type": "application/json"})
    assert needle in _error(r, status, code)


def test_too_many_texts_names_the_limit(client):
    r = client.post("/v1/predict", json={"texts": ["a"] * 5})
    message = _error(r, 422, "too_many_texts")
    assert "5 items" in message and "limit is 4" in message


def test_too_long_text_names_index_and_limit(client):
    r = client.post("/v1/predict", json={"texts": ["short", "x" * 51]})
    message = _error(r, 422, "text_too_long")
    assert "texts[1]" in message and "51 characters" in message and "limit is 50" in message


def test_oversized_body_is_413_declared_or_streamed(client):
    big = json.dumps({"texts": ["x" * 9000]}).encode()
    r = client.post("/v1/predict", content=big, headers={"content-type": "application/json"})
    assert "limit is 8192 bytes" in _error(r, 413, "payload_too_large")

    def chunks():  # no content-length: the limit must hold while streaming
        for _ in range(20):
            yield b"x" * 500

    r = client.post("/v1/predict", content=chunks())
    _error(r, 413, "payload_too_large")


def test_unknown_route_and_wrong_method_are_json(client):
    message = _error(client.get("/nope"), 404, "not_found")
    assert "POST /v1/predict" in message
    r = client.get("/v1/predict")
    assert "use POST" in _error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    _error(client.delete("/healthz"), 405, "method_not_allowed")


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["model"] == {"name": "tiny", "version": 1}


def test_not_ready_before_startup_gives_503_json(tiny_registry):
    app = create_app(tiny_registry, LIMITS, preload=False)
    c = TestClient(app)  # no `with`: the lifespan (model load, worker) has not run
    assert c.get("/healthz").status_code == 200
    assert "still loading" in _error(c.get("/readyz"), 503, "not_ready")
    _error(c.post("/v1/predict", json={"texts": ["a"]}), 503, "not_ready")


def test_background_load_turns_ready(tiny_registry):
    app = create_app(tiny_registry, LIMITS, preload=False)
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "model never became ready"
            time.sleep(0.05)
        assert c.post("/v1/predict", json={"texts": ["a"]}).status_code == 200


def test_metrics_count_requests_texts_and_model(client, tiny_registry):
    client.post("/v1/predict", json={"texts": ["a", "b", "c"]})
    client.post("/v1/predict", json={"texts": ["d"]})
    client.post("/v1/predict", json={"texts": []})
    client.get("/does-not-exist")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    line = 'lmforge_http_requests_total{method="POST",route="/v1/predict",status="200"} 2.0'
    assert line in text
    assert 'route="/v1/predict",status="422"} 1.0' in text
    assert 'route="unmatched",status="404"} 1.0' in text  # raw paths never become labels
    served = 'lmforge_predictions_total{model="tiny",variant="production",version="1"}'
    assert f"{served} 4.0" in text
    info = 'lmforge_model_info{backend="torch",name="tiny",quantization="none",version="1"} 1.0'
    assert info in text
    assert 'lmforge_http_request_duration_seconds_count{route="/v1/predict"} 3.0' in text
    # A second app in the same process keeps its own counters.
    with TestClient(create_app(tiny_registry, LIMITS)) as other:
        assert served not in other.get("/metrics").text


class _GatedClassifier:
    """The real model call, held at a gate so a test can keep a prediction in flight."""

    def __init__(self, inner, fail: bool = False) -> None:
        self.inner, self.fail = inner, fail
        self.entered, self.release = threading.Event(), threading.Event()

    def predict(self, texts):
        self.entered.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        return self.inner(texts)


def _production(app):
    return app.state.runtime.table.routes["tiny"].variants["production"]


def test_health_answers_while_inference_runs(app, client, monkeypatch):
    backend = _production(app).backend
    gated = _GatedClassifier(backend.predict)
    monkeypatch.setattr(backend, "predict", gated.predict)
    results = {}
    worker = threading.Thread(
        target=lambda: results.update(r=client.post("/v1/predict", json={"texts": ["a"]}))
    )
    worker.start()
    try:
        assert gated.entered.wait(10)
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert time.perf_counter() - started < 2.0
    finally:
        gated.release.set()
        worker.join(10)
    assert results["r"].status_code == 200


def test_model_failure_is_json_500_with_request_id(app, client, monkeypatch):
    backend = _production(app).backend
    gated = _GatedClassifier(backend.predict, fail=True)
    gated.release.set()
    monkeypatch.setattr(backend, "predict", gated.predict)
    r = client.post("/v1/predict", json={"texts": ["a"]}, headers={"X-Request-ID": "req-7"})
    assert "req-7" in _error(r, 500, "internal_error")
    assert r.headers["x-request-id"] == "req-7"
    assert client.get("/healthz").status_code == 200  # the server lives on


def test_missing_model_in_registry_is_a_clear_error(tmp_path):
    from lmforge.registry import ModelRegistry
    from lmforge.serve.models import ModelUnavailable

    ModelRegistry(tmp_path / "reg")
    with pytest.raises(ModelUnavailable, match=r"no model in the registry .* production alias"):
        create_app(tmp_path / "reg", LIMITS)
