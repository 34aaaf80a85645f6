"""Smoke test of bench/tracing_overhead.py: one short `--mode both` run, JSON keys checked.

Three real `lmforge serve` children on the tiny test model (a few requests each, a short
open-loop arm) and a tiny in-process pipeline run; numbers are not judged, only their shape.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lmforge.registry import ModelRegistry

BENCH = Path(__file__).resolve().parents[2] / "bench"
COMPARE_KEYS = {
    "p50_ratio",
    "p50_diff_us",
    "mean_ratio",
    "mean_diff_us",
    "paired_median_diff_us",
    "median_of_round_p50_ratios",
    "round_p50_ratio_quartiles",
    "cpu_ratio",
    "cpu_diff_us",
    "median_of_round_cpu_ratios",
    "round_cpu_ratio_quartiles",
}


def load_bench(name: str) -> ModuleType:
    """Import a bench script by path: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(280)
def test_tracing_overhead_both_modes_report_every_key(tmp_path, tiny_model_dir, capsys):
    registry = tmp_path / "registry"
    ModelRegistry(registry).register("tiny", tiny_model_dir, alias="production")
    bench = load_bench("tracing_overhead")
    argv = ["--mode", "both", "--registry", str(registry), "--quick"]
    argv += ["--server-rounds", "2", "--server-requests", "5", "--server-warmup", "2"]
    argv += ["--rate", "20", "--rate-s", "0.5", "--rate-rounds", "1", "--timeout-s", "10"]
    argv += ["--requests", "20", "--rounds", "2", "--warmup", "5", "--micro", "50"]
    report = bench.main(argv)
    assert json.loads(capsys.readouterr().out) == report
    assert report["mode"] == "both"

    server = report["server"]
    arms = server["arms"]
    assert set(arms) == {"disabled", "ratio_0.01", "ratio_1.0"}
    assert arms["disabled"]["tracing"] == {"enabled": False}
    assert arms["ratio_0.01"]["tracing"]["sample_ratio"] == 0.01
    for arm in arms.values():
        assert arm["latency"]["n"] == 10
        assert 0 < arm["latency"]["p50_us"] <= arm["latency"]["p99_us"]
        assert arm["cpu_us_per_request"] >= 0 and len(arm["cpu_us_per_request_rounds"]) == 2
        assert {"cpu_us_per_request_whole_phase", "cpu_s"} <= set(arm)
    for key in ("overhead_0.01_vs_disabled", "overhead_1.0_vs_disabled"):
        assert set(server[key]) == COMPARE_KEYS
    assert set(server["estimated_0.01_from_1.0"]) >= {"p50_ratio", "mean_ratio"}
    assert server["target_ratio"] == 1.05
    assert set(server["meets_target"]) == {"cpu", "p50", "mean"}
    assert server["config"]["rounds"] == 2 and server["config"]["requests_per_arm_per_round"] == 5
    assert server["model"]["kind"] == "registry"

    throughput = server["throughput"]
    assert throughput["rate"] == 20.0
    assert set(throughput["arms"]) == set(arms)
    for arm in throughput["arms"].values():
        assert {"scheduled", "ok", "success", "p50_ms", "p99_ms", "cpu_us_per_request"} <= set(arm)
        assert arm["ok"] > 0
    assert {"p50_ratio", "p99_ratio", "cpu_ratio", "cpu_diff_us"} <= set(
        throughput["overhead_0.01_vs_disabled"]
    )

    pipeline = report["pipeline"]
    assert set(pipeline["arms"]) == {"bare", "disabled", "ratio_0.01", "ratio_1.0"}
    assert pipeline["arms"]["ratio_1.0"]["sampled_share"] == 1.0
    assert pipeline["arms"]["disabled"]["sampled_share"] == 0.0
    assert "cpu_ratio_of_best_rounds" in pipeline["overhead_0.01_vs_disabled"]
    assert {"median_us", "sampled_share", "overhead_ratio_0.01_vs_disabled"} <= set(
        pipeline["per_request"]
    )
    assert set(pipeline["micro"]) == {
        "disabled_us",
        "unsampled_fast_path_us",
        "sdk_nonrecording_us",
    }
    assert pipeline["config"]["rounds"] == 2
