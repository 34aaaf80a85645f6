"""Smoke tests of bench/engine_overhead.py and bench/mixed_precision.py on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
TINY = ["--d-model", "32", "--layers", "2", "--seq-len", "16", "--batch", "4", "--docs", "300"]


def load_bench(name: str) -> ModuleType:
    """Import a bench script by path: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def printed_json(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, "a bench prints exactly one JSON object on stdout"
    return json.loads(lines[0])


def test_engine_overhead_compares_engine_and_bare_loop(capsys):
    bench = load_bench("engine_overhead")
    argv = [*TINY, "--steps", "3", "--warmup", "1", "--rounds", "1", "--threads", "1"]
    report = bench.main(argv)
    assert printed_json(capsys) == report
    assert report["engine_tokens_per_second"] > 0 and report["bare_tokens_per_second"] > 0
    assert isinstance(report["ratio"], float) and report["ratio"] > 0
    assert isinstance(report["meets_target"], bool)
    for arm in ("engine", "bare"):
        assert report["step_ms_median"][arm]["total"] > 0
    loss = report["loss"]
    # Same init, same batches, same optimizer: only float rounding may separate the arms.
    assert loss["initial_weights_equal"] is True
    assert len(loss["engine"]) == len(loss["bare"]) == 4
    assert math.isfinite(loss["max_abs_diff"]) and loss["max_rel_diff"] < 1e-4


def test_mixed_precision_reports_speed_memory_and_ratios(capsys):
    bench = load_bench("mixed_precision")
    argv = [*TINY, "--device", "cpu", "--steps", "3", "--warmup", "1", "--in-process"]
    report = bench.main([*argv, "--precisions", "fp32", "bf16"])
    assert printed_json(capsys) == report
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert isinstance(report["device"]["native_bf16"], bool)
    arms = report["arms"]
    assert set(arms) == {"fp32", "bf16"}
    for arm in arms.values():
        assert arm["tokens_per_second"] > 0 and arm["wall_tokens_per_second"] > 0
        assert len(arm["losses"]) == 4 and all(math.isfinite(x) for x in arm["losses"])
        assert arm["state_bytes"]["total"] > 0
    fp32, bf16 = arms["fp32"]["saved_for_backward"], arms["bf16"]["saved_for_backward"]
    # Autocast keeps fp32 master weights and state, and saves some activations in bf16.
    assert arms["bf16"]["state_bytes"] == arms["fp32"]["state_bytes"]
    assert "bfloat16" in bf16["activations_by_dtype"] and fp32["weight_casts"] == 0
    assert bf16["activations"] < fp32["activations"]
    ratio = report["ratios"]["bf16/fp32"]
    assert ratio["tokens_per_second"] > 0 and 0 < ratio["saved_activations"] < 1
