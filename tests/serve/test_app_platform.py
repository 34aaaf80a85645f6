"""The serving platform through its HTTP API, in process: routing, admin, shadow, feedback,
cache, auth, overload and deadlines. Real models, real registry, real SQLite."""

import gc
import os
import sys
import threading
import time

import pytest
from starlette.testclient import TestClient

from lmforge.config import ServeConfig
from lmforge.registry import ModelRegistry
from lmforge.serve import create_app
from lmforge.serve.auth import KeyStore
from lmforge.serve.isolated import IsolatedBackend

TEXTS = ["The box arrived broken.", "这个套餐每个月多少钱？", "Great phone, love it."]


def _cfg(**kw):
    base = {"refresh_s": 0.05, "tracing": {"enabled": False}}
    base.update(kw)
    return ServeConfig.model_validate(base)


@pytest.fixture
def admin_key(two_version_registry):
    _, plaintext = KeyStore(two_version_registry).create("ops", role="admin")
    return {"Authorization": f"Bearer {plaintext}"}


def _predict(c, texts=TEXTS, **kw):
    r = c.post("/v1/models/tiny/predict", json={"texts": texts, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def _wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _production(app):
    return app.state.runtime.table.routes["tiny"].variants["production"]


def test_versioned_route_and_model_listing(two_version_registry):
    with TestClient(create_app(two_version_registry, _cfg())) as c:
        body = _predict(c)
        assert body["model"] == {"name": "tiny", "version": 1, "variant": "production"}
        assert len(body["predictions"]) == 3
        models = c.get("/v1/models").json()["models"]
        assert [m["name"] for m in models] == ["tiny"]
        assert models[0]["aliases"] == {"production": 1}
        assert models[0]["serving"]["production"]["version"] == 1
        assert c.get("/v1/models/nope").status_code == 404
        r = c.post("/v1/models/nope/predict", json={"texts": ["a"]})
        assert r.status_code == 404 and "served: tiny" in r.json()["error"]["message"]


def test_admin_endpoints_need_an_admin_key(two_version_registry, admin_key):
    _, predict_only = KeyStore(two_version_registry).create("app", role="predict")
    with TestClient(create_app(two_version_registry, _cfg())) as c:
        url = "/v1/admin/models/tiny/promote"
        assert c.post(url, json={"version": 2}).status_code == 401
        bad = {"Authorization": "Bearer lmf_nope_nope"}
        assert c.post(url, json={"version": 2}, headers=bad).status_code == 401
        weak = {"X-API-Key": predict_only}
        r = c.post(url, json={"version": 2}, headers=weak)
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
        r = c.post(url, json={"version": 2}, headers=admin_key)
        assert r.status_code == 200, r.text
        assert _predict(c)["model"]["version"] == 2
        r = c.post(url, json={"version": "two"}, headers=admin_key)
        assert r.status_code == 422 and "version" in r.json()["error"]["message"]


def test_promote_then_rollback_switches_versions_at_once(two_version_registry, admin_key):
    with TestClient(create_app(two_version_registry, _cfg())) as c:
        c.post("/v1/admin/models/tiny/promote", json={"version": 2}, headers=admin_key)
        assert _predict(c)["model"]["version"] == 2
        r = c.post("/v1/admin/models/tiny/rollback", json={}, headers=admin_key)
        assert r.status_code == 200, r.text
        assert (r.json()["from"], r.json()["to"]) == (2, 1)
        assert r.json()["switch_s"] < 1.0
        assert _predict(c)["model"]["version"] == 1
        history = c.get("/v1/admin/models/tiny/history", headers=admin_key).json()["history"]
        assert [(h["old_version"], h["new_version"]) for h in history] == [
            (None, 1),
            (1, 2),
            (2, 1),
        ]


def test_a_cli_change_reaches_a_running_server_within_refresh(two_version_registry):
    with TestClient(create_app(two_version_registry, _cfg())) as c:
        assert _predict(c)["model"]["version"] == 1
        ModelRegistry(two_version_registry).set_alias("tiny", "production", 2)
        _wait_for(lambda: _predict(c)["model"]["version"] == 2)


def test_swap_keeps_in_flight_requests(two_version_registry, admin_key, monkeypatch):
    app = create_app(two_version_registry, _cfg())
    with TestClient(app) as c:
        backend = _production(app).backend
        entered, release = threading.Event(), threading.Event()
        original = backend.predict

        def gated(texts):
            entered.set()
            release.wait(10)
            return original(texts)

        monkeypatch.setattr(backend, "predict", gated)
        result = {}
        t = threading.Thread(
            target=lambda: result.update(r=c.post("/v1/predict", json={"texts": ["x"]}))
        )
        t.start()
        assert entered.wait(10)
        r = c.post("/v1/admin/models/tiny/promote", json={"version": 2}, headers=admin_key)
        assert r.status_code == 200
        assert _predict(c)["model"]["version"] == 2  # new traffic goes to v2 at once
        release.set()
        t.join(10)
        assert result["r"].status_code == 200  # the request held by v1 still completes on v1
        assert result["r"].json()["model"]["version"] == 1


def test_canary_weight_and_sticky_ab(two_version_registry, admin_key):
    ModelRegistry(two_version_registry).set_alias("tiny", "canary", 2)
    with TestClient(create_app(two_version_registry, _cfg())) as c:
        r = c.put("/v1/admin/models/tiny/routing", json={"canary_weight": 1.0}, headers=admin_key)
        assert r.status_code == 200, r.text
        assert _predict(c)["model"] == {"name": "tiny", "version": 2, "variant": "canary"}
        r = c.put(
            "/v1/admin/models/tiny/routing",
            json={"ab": {"production": 1, "challenger": 1}},
            headers=admin_key,
        )
        assert r.status_code == 422 and "challenger" in r.json()["error"]["message"]
        r = c.put(
            "/v1/admin/models/tiny/routing",
            json={"ab": {"production": 1, "canary": 1}},
            headers=admin_key,
        )
        assert r.status_code == 200
        seen = {}
        for user in range(40):
            variants = {
                _predict(c, ["a"], key=f"user-{user}")["model"]["variant"] for _ in range(3)
            }
            assert len(variants) == 1  # sticky: a user stays in one arm
            seen[user] = variants.pop()
        assert set(seen.values()) == {"production", "canary"}
        # The header works as well as the body field, and gives the same assignment.
        r = c.post("/v1/predict", json={"texts": ["a"]}, headers={"X-Routing-Key": "user-3"})
        assert r.json()["model"]["variant"] == seen[3]


def test_shadow_gets_copies_that_never_change_answers(two_version_registry, admin_key):
    ModelRegistry(two_version_registry).set_alias("tiny", "shadow", 2)
    app = create_app(two_version_registry, _cfg())
    with TestClient(app) as c:
        for i in range(20):
            body = _predict(c, [f"text number {i}", "物流太慢了"])
            assert body["model"]["version"] == 1 and body["model"]["variant"] == "production"
        _wait_for(lambda: app.state.runtime.shadow.stats["compared"] >= 20)
        report = c.get("/v1/admin/shadow/report?model=tiny", headers=admin_key).json()
        assert report["comparisons"] == 20 and report["texts"] == 40
        assert 0.0 <= report["agreement_rate"] <= 1.0
        assert "psi_max_prob" in report["drift"]
        metrics = c.get("/metrics").text
        assert 'lmforge_shadow_total{model="tiny",outcome="compared"} 20.0' in metrics
        # The shadow model ran in its own process, at idle priority (serve.shadow.isolate).
        backend = app.state.runtime.table.routes["tiny"].shadow.backend
        assert isinstance(backend, IsolatedBackend)
        pid = backend.pid
        assert pid is not None and pid != os.getpid()
        if sys.platform.startswith("linux"):
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert backend.pid is None  # shutting the server down stopped it


def test_shadow_can_run_in_the_server_process(two_version_registry):
    ModelRegistry(two_version_registry).set_alias("tiny", "shadow", 2)
    app = create_app(two_version_registry, _cfg(shadow={"isolate": False}))
    with TestClient(app) as c:
        for i in range(5):
            _predict(c, [f"text number {i}"])
        _wait_for(lambda: app.state.runtime.shadow.stats["compared"] >= 5)
        backend = app.state.runtime.table.routes["tiny"].shadow.backend
        assert not isinstance(backend, IsolatedBackend)


def test_feedback_feeds_the_ab_report(two_version_registry, admin_key):
    ModelRegistry(two_version_registry).set_alias("tiny", "canary", 2)
    with TestClient(create_app(two_version_registry, _cfg())) as c:
        c.put(
            "/v1/admin/models/tiny/routing",
            json={"ab": {"production": 1, "canary": 1}},
            headers=admin_key,
        )
        for user in range(60):
            body = _predict(c, ["a"], key=f"u{user}")
            outcome = 1.0 if body["model"]["variant"] == "canary" else 0.0
            r = c.post("/v1/feedback", json={"request_id": body["request_id"], "outcome": outcome})
            assert r.status_code == 200, r.text
        r = c.post("/v1/feedback", json={"request_id": "never-seen", "outcome": 1})
        assert r.status_code == 404
        r = c.post("/v1/feedback", json={"request_id": "x", "outcome": 3})
        assert r.status_code == 422
        report = c.get("/v1/admin/shadow/report", headers=admin_key).json()
        test = report["feedback"]["ab_test"]
        assert test is not None and test["significant"]


def test_cache_answers_repeated_texts(two_version_registry):
    app = create_app(two_version_registry, _cfg())
    with TestClient(app) as c:
        first = _predict(c, ["same text", "other"])
        second = _predict(c, ["same   text ", "other"])  # normalised to the same input
        assert second["predictions"] == first["predictions"]
        metrics = c.get("/metrics").text
        assert 'lmforge_cache_requests_total{result="hit"} 2.0' in metrics
        assert 'lmforge_cache_requests_total{result="miss"} 2.0' in metrics


def test_full_queue_is_429_with_retry_after_and_deadline_is_504(two_version_registry, monkeypatch):
    cfg = _cfg(cache={"kind": "none"}, batching={"max_queue_texts": 2, "max_batch_size": 1})
    app = create_app(two_version_registry, cfg)
    with TestClient(app) as c:
        backend = _production(app).backend
        entered, release = threading.Event(), threading.Event()
        original = backend.predict

        def gated(texts):
            entered.set()
            release.wait(10)
            return original(texts)

        monkeypatch.setattr(backend, "predict", gated)
        threads = [
            threading.Thread(target=lambda: c.post("/v1/predict", json={"texts": ["a"]}))
            for _ in range(3)
        ]
        try:
            threads[0].start()
            assert entered.wait(10)
            for t in threads[1:]:
                t.start()
            _wait_for(lambda: _production(app).engine.queued_texts >= 2)
            r = c.post("/v1/predict", json={"texts": ["b"]})
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert "max_queue_texts" in r.json()["error"]["message"]
        finally:
            release.set()
            for t in threads:
                t.join(10)
        release.clear()
        entered.clear()
        threads = [threading.Thread(target=lambda: c.post("/v1/predict", json={"texts": ["c"]}))]
        threads[0].start()
        try:
            assert entered.wait(10)
            r = c.post("/v1/predict", json={"texts": ["d"]}, headers={"X-Timeout-Ms": "100"})
            assert r.status_code == 504, r.text
            bad = c.post("/v1/predict", json={"texts": ["d"]}, headers={"X-Timeout-Ms": "soon"})
            assert bad.status_code == 400 and "X-Timeout-Ms" in bad.json()["error"]["message"]
        finally:
            release.set()
            threads[0].join(10)
        metrics = c.get("/metrics").text
        assert 'lmforge_rejected_total{model="tiny",reason="overloaded"} 1.0' in metrics
        assert 'lmforge_rejected_total{model="tiny",reason="deadline"} 1.0' in metrics


def test_required_keys_and_rate_limits(two_version_registry):
    store = KeyStore(two_version_registry)
    _, slow = store.create("slow", rate=0.5, burst=2)
    cfg = _cfg(auth={"require_for_predict": True})
    with TestClient(create_app(two_version_registry, cfg)) as c:
        r = c.post("/v1/predict", json={"texts": ["a"]})
        assert r.status_code == 401 and "lmforge keys create" in r.json()["error"]["message"]
        headers = {"Authorization": f"Bearer {slow}"}
        codes = [c.post("/v1/predict", json={"texts": ["a"]}, headers=headers) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert int(codes[-1].headers["retry-after"]) >= 1


def test_openapi_spec_describes_the_api(two_version_registry):
    with TestClient(create_app(two_version_registry, _cfg())) as c:
        spec = c.get("/openapi.json").json()
        paths = spec["paths"]
        for path in ("/v1/predict", "/v1/models/{name}/predict", "/v1/feedback", "/v1/models"):
            assert path in paths
        body = paths["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["properties"]["texts"]["type"] == "array"
        assert "/metrics" not in paths


def test_sampled_requests_are_traced_with_their_model_call(two_version_registry):
    cfg = _cfg(tracing={"enabled": True, "sample_ratio": 1.0, "exporter": "memory"})
    app = create_app(two_version_registry, cfg)
    with TestClient(app) as c:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        r = c.post("/v1/predict", json={"texts": ["a", "b"]}, headers={"traceparent": parent})
        assert r.status_code == 200
        spans = {s.name: s for s in app.state.runtime.tracing.finished_spans()}
    root = spans["POST /v1/predict"]
    assert format(root.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert root.attributes["http.response.status_code"] == 200
    assert spans["model"].parent.span_id == root.context.span_id
    assert spans["cache.get"].attributes["texts"] == 2


def test_unsampled_requests_record_nothing(two_version_registry):
    cfg = _cfg(tracing={"enabled": True, "sample_ratio": 0.0, "exporter": "memory"})
    app = create_app(two_version_registry, cfg)
    with TestClient(app) as c:
        for _ in range(5):
            _predict(c)
        assert app.state.runtime.tracing.finished_spans() == []


def test_a_serving_process_freezes_its_startup_heap(two_version_registry):
    # run_server and Ray replicas build the app with freeze_gc=True: once the models are in,
    # full collections skip everything alive (they took ~0.3 s each, the live p99).
    gc.unfreeze()
    app = create_app(two_version_registry, _cfg(), freeze_gc=True)
    try:
        with TestClient(app) as c:
            assert gc.get_freeze_count() > 10_000
            frozen = gc.get_freeze_count()
            _predict(c)
            assert len(gc.get_objects()) < frozen  # a full pass now sees only what is new
    finally:
        gc.unfreeze()
    with TestClient(create_app(two_version_registry, _cfg())) as c:  # embedded: left alone
        _predict(c)
        assert gc.get_freeze_count() == 0
