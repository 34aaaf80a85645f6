"""`lmforge serve --backend ray`: the real app as two Ray Serve replicas on a local Ray."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lmforge[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from rich.console import Console  # noqa: E402

from lmforge.config import RayServeConfig, ServeConfig  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402
from lmforge.serve.app import create_app  # noqa: E402
from lmforge.serve.ray_serve import (  # noqa: E402
    APP_NAME,
    DEPLOYMENT_NAME,
    REPLICA_HEADER,
    REPLICA_PID_HEADER,
    LmforgeReplica,
    build_deployment,
    run_ray_serve,
)
from lmforge.serve.server import ServeError  # noqa: E402

TEXTS = ["The delivery was late.", "Great phone!", "请问可以开发票吗？"]
HTTP_TIMEOUT_S = 10.0
RECOVERY_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir) -> Path:
    from lmforge.registry import ModelRegistry

    root = tmp_path_factory.mktemp("ray-serve") / "registry"
    ModelRegistry(root).register("tiny", tiny_model_dir, metrics={}, alias="production")
    return root


@pytest.fixture(scope="module")
def ray_url(registry):
    """Two replicas of the real app behind Ray's proxy on 127.0.0.1; torn down even on failure."""
    # Ray's socket paths must stay under 108 characters: pytest's tmp paths can be longer.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    old_stats = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        cfg = ServeConfig(
            host="127.0.0.1",
            port=0,  # run_ray_serve picks a free one
            ray=RayServeConfig(num_replicas=2, num_cpus=1, health_check_period_s=1),
        )
        out = io.StringIO()
        url = run_ray_serve(registry, cfg, console=Console(file=out), blocking=False)
        assert url in out.getvalue()
        assert "2 replicas, 1 CPU each" in out.getvalue()
        yield url
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
            if old_stats is None:
                os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
            else:
                os.environ["RAY_USAGE_STATS_ENABLED"] = old_stats


def _post(client: httpx.Client, path: str) -> httpx.Response:
    return client.post(path, json={"texts": TEXTS})


def _replica_states() -> dict[str, int]:
    status = serve.status().applications[APP_NAME]
    return dict(status.deployments[DEPLOYMENT_NAME].replica_states)


def test_predictions_match_the_in_process_app(ray_url, registry):
    with TestClient(create_app(registry, ServeConfig())) as local:
        expected = _post(local, "/v1/predict").json()["predictions"]
        local_bad = local.post("/v1/predict", json={"texts": []})
    with httpx.Client(base_url=ray_url, timeout=HTTP_TIMEOUT_S) as client:
        for path in ("/v1/predict", "/v1/models/tiny/predict"):
            response = _post(client, path)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"] == {"name": "tiny", "version": 1, "variant": "production"}
            got = body["predictions"]
            assert [p["label"] for p in got] == [p["label"] for p in expected]
            for mine, theirs in zip(got, expected, strict=True):
                assert mine["probs"] == pytest.approx(theirs["probs"], abs=1e-5)
        # The app's own error contract survives the proxy.
        bad = client.post("/v1/predict", json={"texts": []})
        assert bad.status_code == local_bad.status_code == 422
        assert bad.json()["error"] == local_bad.json()["error"]
        # The lifespan ran in the replica: it is what sets the ready gauge.
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"] == ["tiny"]
        assert "lmforge_model_ready 1.0" in client.get("/metrics").text


def test_requests_are_spread_over_both_replicas(ray_url):
    seen: dict[str, str] = {}
    with httpx.Client(base_url=ray_url, timeout=HTTP_TIMEOUT_S) as client:
        for _ in range(40):
            response = _post(client, "/v1/predict")
            assert response.status_code == 200, response.text
            seen[response.headers[REPLICA_HEADER]] = response.headers[REPLICA_PID_HEADER]
            if len(seen) == 2:
                break
    assert len(seen) == 2, f"all 40 requests went to one replica: {seen}"
    pids = {int(pid) for pid in seen.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # two separate replica processes
    assert _replica_states() == {"RUNNING": 2}


def test_a_killed_replica_is_replaced_and_requests_keep_succeeding(ray_url):
    with httpx.Client(base_url=ray_url, timeout=HTTP_TIMEOUT_S) as client:
        before: set[int] = set()
        for _ in range(40):
            before.add(int(_post(client, "/v1/predict").headers[REPLICA_PID_HEADER]))
            if len(before) == 2:
                break
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)  # the replica process dies as it would on a crash

        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        after: set[int] = set()
        failures = 0
        while time.monotonic() < deadline:
            try:
                response = _post(client, "/v1/predict")
            except httpx.HTTPError:
                failures += 1
            else:
                if response.status_code == 200:
                    after.add(int(response.headers[REPLICA_PID_HEADER]))
                else:
                    failures += 1
            if after - before and _replica_states() == {"RUNNING": 2}:
                break
            time.sleep(0.2)
        replacement = after - before
        assert replacement, f"no new replica answered within {RECOVERY_DEADLINE_S} s"
        assert victim not in after
        print(f"requests failed while the replica was replaced: {failures}")

        # Back to two healthy replicas: every request succeeds again.
        for _ in range(20):
            response = _post(client, "/v1/predict")
            assert response.status_code == 200, response.text
            assert int(response.headers[REPLICA_PID_HEADER]) != victim


def test_too_many_replicas_for_the_local_ray_is_a_clear_error(ray_url, registry):
    cfg = ServeConfig(port=0, ray=RayServeConfig(num_replicas=3, num_cpus=1))
    with pytest.raises(ConfigError, match=r"need 3 CPUs but this Ray has 2"):
        run_ray_serve(registry, cfg, console=Console(file=io.StringIO()), blocking=False)
    assert _replica_states() == {"RUNNING": 2}  # the running app was left alone


def test_autoscaling_config_is_passed_through(registry):
    cfg = ServeConfig(
        ray=RayServeConfig(
            num_replicas=None,
            min_replicas=1,
            max_replicas=3,
            target_ongoing_requests=5,
            num_cpus=0.5,
            health_check_period_s=3,
            health_check_timeout_s=7,
        )
    )
    deployment = build_deployment(registry, cfg)._bound_deployment
    config = deployment._deployment_config
    autoscaling = config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (1, 3)
    assert autoscaling.target_ongoing_requests == 5
    assert deployment.ray_actor_options["num_cpus"] == 0.5
    assert (config.health_check_period_s, config.health_check_timeout_s) == (3, 7)
    assert config.max_ongoing_requests >= cfg.batching.max_batch_size

    fixed = build_deployment(registry, ServeConfig(ray=RayServeConfig(num_replicas=3)))
    assert fixed._bound_deployment.num_replicas == 3
    assert fixed._bound_deployment._deployment_config.autoscaling_config is None
    # The replica's threads fit its CPU share instead of the whole machine.
    replica_cfg = fixed._bound_deployment.init_args[1]
    assert replica_cfg["backend"]["threads"] == 1 and replica_cfg["workers"] == 1
    assert Path(fixed._bound_deployment.init_args[0]).is_absolute()


def test_min_above_max_replicas_is_a_config_error(registry):
    cfg = ServeConfig(ray=RayServeConfig(num_replicas=None, min_replicas=5, max_replicas=2))
    with pytest.raises(ConfigError, match=r"min_replicas=5 is above serve.ray.max_replicas=2"):
        build_deployment(registry, cfg)


def test_missing_registry_fails_before_ray_starts(tmp_path):
    with pytest.raises(ServeError, match=r"no model registry at .*registry.sqlite"):
        run_ray_serve(tmp_path / "nowhere", ServeConfig(), blocking=False)


def test_check_health_fails_until_a_model_is_loaded(registry):
    replica = LmforgeReplica(str(registry), ServeConfig().model_dump())
    with pytest.raises(RuntimeError, match="was not built"):
        asyncio.run(replica.check_health())
    # Without preload, the models load in the lifespan: before it the replica is not ready.
    replica._app = create_app(registry, ServeConfig(), preload=False)
    with pytest.raises(RuntimeError, match="not ready: no model is loaded"):
        asyncio.run(replica.check_health())
    with TestClient(replica._app) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        asyncio.run(replica.check_health())  # loaded: healthy
