"""Smoke test of bench/serve_chaos.py, and its analysis helpers on made-up data.

The whole-script test runs the shortest mode against the tiny test model: a real supervisor
with 2 workers and a warm spare, 12 s of load at a fixed low rate, one SIGKILL at 4 s. It takes
well under a minute and a half on the 2-core test machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

import lmforge.bench.serving_setup as setup
from lmforge.registry import ModelRegistry

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str) -> ModuleType:
    """Import a bench script by path: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    return load_bench("serve_chaos")


@pytest.fixture
def demo_registry(tmp_path, tiny_model_dir) -> Path:
    root = tmp_path / "registry"
    ModelRegistry(root).register("demo", tiny_model_dir, alias="production")
    return root


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_one_kill_under_load_loses_nothing(capsys, chaos, demo_registry):
    report = chaos.main(["--registry", str(demo_registry), "--quick", "--rate", "20"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == report
    for key in (
        "server",
        "rate",
        "kill_plan_s",
        "load",
        "success_ratio",
        "target_success",
        "kills",
        "restarts",
        "latency_after_kills",
        "latency_outside_windows",
        "per_second",
        "gateway",
        "meets_target",
    ):
        assert key in report, key
    assert report["kill_plan_s"] == [4.0] and report["duration_s"] == 12.0
    (kill,) = report["kills"]
    assert kill["error"] is None and kill["last_exit"] == "was killed by SIGKILL"
    assert kill["new_pid"] not in (None, kill["pid"])
    assert kill["via"] == "spare" and kill["spare_ready_at_kill"] is True
    assert 0 < kill["in_rotation_s"] < 30
    assert kill["supervisor_restart_s"] is not None
    assert kill["window"]["scheduled"] > 0 and len(kill["failures_per_s_around"]["failed"]) == 7
    # The point of the benchmark: a SIGKILLed worker costs no request.
    load = report["load"]
    assert load["scheduled"] > 100 and load["failed"] == 0, load["failures"]
    assert report["success_ratio"] == 1.0 and report["meets_target"] is True
    assert sum(report["per_second"]["ok"]) == load["ok"]
    assert report["gateway"]["worker_restarts"] == 1
    assert report["gateway"]["restart_seconds"]["count"] == 1
    assert report["server"]["alive_at_end"] is True and report["server"]["exit_code"] == 0


def test_uses_the_shared_setup(chaos):
    for helper in ("prepare_registry_copy", "load_rate", "add_load_rate_args", "parse_with_quick"):
        assert getattr(chaos, helper) is getattr(setup, helper)
    args = chaos.parse_args(["--quick"])
    assert (args.duration_s, args.first_kill_s, args.kill_interval_s) == (12.0, 4.0, 10.0)
    args = chaos.parse_args([])
    assert (args.duration_s, args.first_kill_s, args.load_fraction) == (60.0, 10.0, 0.5)
    assert args.p99_ms == 100.0 and args.workers == 2 and not args.no_spare


def test_kill_plan(chaos):
    assert chaos.kill_plan(10.0, 10.0, 60.0) == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert chaos.kill_plan(4.0, 10.0, 12.0) == [4.0]
    assert chaos.kill_plan(12.0, 10.0, 12.0) == []


def test_window_and_series_helpers(chaos):
    rows = [
        (0.5, 200, 0.010),
        (9.5, 200, 0.020),
        (10.1, "ServerClosedError", 0.005),
        (10.2, 200, 0.100),
        (11.9, 503, 0.001),
        (12.5, 200, 0.030),
    ]
    win = chaos.window_stats(rows, 10.0, 2.0)
    assert (win["scheduled"], win["ok"], win["failed"]) == (3, 1, 2)
    assert win["failures"] == {"503": 1, "ServerClosedError": 1}
    assert win["p50_ms"] == pytest.approx(100.0)
    around = chaos.failures_around(rows, 10.0)
    assert around == {"from_s": -2, "failed": [0, 0, 1, 1, 0, 0, 0]}
    series = chaos.per_second(rows, 13.0)
    assert series["ok"][0] == 1 and series["ok"][12] == 1 and series["failed"][10] == 1
    assert sum(series["ok"]) + sum(series["failed"]) == len(rows)
    assert chaos.outside_windows(rows, [10.0], 2.0) == [0.010, 0.020, 0.030]


def test_metrics_deltas(chaos):
    before = chaos.parse_metrics(
        "# TYPE lmforge_gateway_retries_total counter\n"
        "lmforge_gateway_retries_total 2.0\n"
        "# TYPE lmforge_worker_restart_seconds histogram\n"
        'lmforge_worker_restart_seconds_bucket{le="0.1"} 1.0\n'
        'lmforge_worker_restart_seconds_bucket{le="+Inf"} 1.0\n'
        "lmforge_worker_restart_seconds_count 1.0\n"
        "lmforge_worker_restart_seconds_sum 0.05\n"
    )
    after = dict(before)
    after.update(
        {
            "lmforge_gateway_retries_total": 5.0,
            'lmforge_worker_restart_seconds_bucket{le="0.1"}': 2.0,
            'lmforge_worker_restart_seconds_bucket{le="+Inf"}': 3.0,
            "lmforge_worker_restart_seconds_count": 3.0,
            "lmforge_worker_restart_seconds_sum": 1.05,
        }
    )
    assert chaos.metric_delta(before, after, "lmforge_gateway_retries_total") == 3.0
    assert chaos.metric_delta(None, after, "lmforge_gateway_retries_total") is None
    hist = chaos.restart_histogram(before, after)
    assert hist["count"] == 2 and hist["sum_s"] == pytest.approx(1.0)
    assert hist["cumulative_buckets"] == {"0.1": 1, "+Inf": 2}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_session_kills_every_group_of_the_session(chaos):
    # A leader in a new session that starts a child in a process group of its own: killing
    # the leader's group alone would leave the child behind.
    code = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " process_group=0)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(chaos.session_members(proc.pid)) < 2:
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
        groups = {g for _, g in chaos.session_members(proc.pid)}
        assert len(groups) == 2
        assert chaos.kill_session(proc.pid) == 2
        assert chaos.session_members(proc.pid) == []
        with pytest.raises(ValueError):
            chaos.kill_session(os.getsid(0))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
