"""The predict fast path: the same answers, errors, metrics and CORS as through FastAPI."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from lmforge.config import ServeConfig
from lmforge.serve import create_app
from lmforge.serve.fast_path import DEFAULT_PATH, MODEL_TEMPLATE, predict_target


def _cfg(**kw):
    return ServeConfig.model_validate({"refresh_s": 0.05, "tracing": {"enabled": False}, **kw})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/predict", (DEFAULT_PATH, None)),
        ("/v1/models/tiny/predict", (MODEL_TEMPLATE, "tiny")),
        ("/v1/models/名字/predict", (MODEL_TEMPLATE, "名字")),
        ("/v1/models//predict", None),  # an empty segment: FastAPI answers (404)
        ("/v1/models/a/b/predict", None),
        ("/v1/predict/", None),  # FastAPI's redirect stays FastAPI's
        ("/v1/models/tiny", None),
        ("/v1/predictx", None),
    ],
)
def test_only_the_two_predict_paths_take_the_fast_path(path, expected):
    assert predict_target(path) == expected


def test_answers_errors_and_metrics_match_the_fastapi_routes(tiny_registry):
    with TestClient(create_app(tiny_registry, _cfg())) as c:
        ok = c.post("/v1/models/tiny/predict", json={"texts": ["good", "bad"]})
        assert ok.status_code == 200 and ok.json()["model"]["name"] == "tiny"
        assert ok.headers["x-request-id"] == ok.json()["request_id"]
        assert c.post("/v1/predict", json={"texts": ["good"]}).status_code == 200
        missing = c.post("/v1/models/nope/predict", json={"texts": ["a"]})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        bad = c.post(
            "/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code in (400, 422) and "error" in bad.json()
        # GET on a predict path is not intercepted: FastAPI's 405 with its Allow header.
        wrong = c.get("/v1/predict")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
        metrics = c.get("/metrics").text
    # Labelled with the route template, as FastAPI's routing would label it.
    assert 'route="/v1/models/{name}/predict"' in metrics
    assert 'route="/v1/predict"' in metrics


def test_an_unexpected_error_is_a_json_500(tiny_registry, monkeypatch):
    app = create_app(tiny_registry, _cfg())
    with TestClient(app, raise_server_exceptions=False) as c:

        def broken(name):  # a fault no request can cause
            raise RuntimeError("table lost")

        monkeypatch.setattr(app.state.runtime.table, "model", broken)
        r = c.post("/v1/predict", json={"texts": ["a"]})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"


def test_cors_still_applies_to_predict(tiny_registry):
    app = create_app(tiny_registry, _cfg(cors_origins=["https://app.example"]))
    with TestClient(app) as c:
        r = c.post("/v1/predict", json={"texts": ["a"]}, headers={"Origin": "https://app.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = c.post("/v1/predict", json={"texts": ["a"]}, headers={"Origin": "https://x.test"})
        assert "access-control-allow-origin" not in other.headers
