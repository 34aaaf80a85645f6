"""Smoke tests of bench/serve_shadow.py, serve_rollback.py and serve_soak.py.

Each script runs in-process in its shortest mode against a copy of a registry holding the tiny
test model (a real `lmforge serve` child process each), so the whole file takes a minute or
two; the helpers that turn raw samples into the reported numbers are checked on made-up data.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
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


def printed_json(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, "a bench prints exactly one JSON object on stdout"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def demo_registry(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model as `demo` v1 (production); each script copies it before changing it."""
    root = tmp_path_factory.mktemp("serving-benches") / "registry"
    ModelRegistry(root).register("demo", tiny_model_dir, alias="production")
    return root


# -- whole scripts -----------------------------------------------------------------------------
def test_serve_shadow_compares_arms(capsys, demo_registry):
    bench = load_bench("serve_shadow")
    argv = ["--registry", str(demo_registry), "--quick", "--round-s", "2", "--rounds", "2"]
    # A loose objective: the search must pass its trials even on a crowded test machine.
    report = bench.main([*argv, "--start-rate", "10", "--max-trials", "2", "--p99-ms", "5000"])
    assert printed_json(capsys) == report
    assert report["capacity"]["requests_per_s"] > 0 and len(report["capacity"]["trials"]) == 2
    # This report's capacity keeps its own keys: no second "rate", the search's duration.
    assert list(report["capacity"]) == [
        "requests_per_s",
        "capped",
        "lowest_fail",
        "trials",
        "search_s",
    ]
    assert report["rate"] == pytest.approx(0.7 * report["capacity"]["requests_per_s"], abs=0.1)
    assert report["model"]["live"] == 1 and report["model"]["shadow"] == 2
    assert [r["shadow"] for r in report["rounds"]] == ["off", "on", "on", "off"]
    off, on = report["shadow_off"], report["shadow_on"]
    for arm in (off, on):
        assert arm["scheduled"] > 0 and 0 < arm["p50_ms"] <= arm["p99_ms"]
    # Every answered live request of an ON round was mirrored once (one the client gave up on
    # may have been answered and mirrored too); OFF rounds mirror nothing.
    shadow = on["shadow"]
    assert on["ok"] <= shadow["compared"] + shadow["dropped"] + shadow["failed"] <= on["sent"]
    off_rounds = [r for r in report["rounds"] if r["shadow"] == "off"]
    assert all(sum(r["shadow_copies"].values()) == 0 for r in off_rounds)
    # The A/A figure: the two off rounds against each other, pooled as the arms are.
    noise = report["aa_noise"]
    assert noise["p99_ms"] == [r["p99_ms"] for r in off_rounds]
    assert noise["p99_change_pct"] == bench.increase_pct(*noise["p99_ms"][::-1])
    on_rounds = [r["p99_ms"] for r in report["rounds"] if r["shadow"] == "on"]
    assert on["round_p99_ms"] == sorted(on_rounds)
    assert report["shadow_model"] == "own process, idle priority"
    medians = report["median_round_p99_ms"]
    assert medians["on"] == pytest.approx(sum(on_rounds) / 2)  # two rounds: their mean
    assert report["shadow_sample"] == 1.0
    assert isinstance(report["p99_increase_pct"], float)
    assert isinstance(report["meets_target"], bool) and report["target_p99_increase_pct"] == 5.0
    assert 0.99 <= report["success"] <= 1.0


def test_serve_rollback_switches_and_counts_failures(capsys, demo_registry):
    bench = load_bench("serve_rollback")
    argv = ["--registry", str(demo_registry), "--quick", "--rate", "10", "--phase-s", "3"]
    report = bench.main([*argv, "--probe-interval-ms", "25"])
    assert printed_json(capsys) == report
    commands = report["commands"]
    assert [(c["command"], c["via"]) for c in commands] == [
        ("promote", "cli"),
        ("rollback", "cli"),
        ("promote", "api"),
        ("rollback", "api"),
    ]
    assert [c["to_version"] for c in commands] == [2, 1, 2, 1]
    for c in commands:
        assert c["error"] is None
        assert c["switch_s"] is not None and c["switch_s"] >= 0
        assert c["window"]["ok"] > 0
    assert report["all_switched"] is True and report["final_production_version"] == 1
    assert set(report["probe"]["versions"]) == {"1", "2"}
    assert report["load"]["scheduled"] > 0 and report["probe"]["sent"] > 0
    assert report["failed_requests"] == report["load"]["failed"] + report["probe"]["failed"]
    assert report["failed_requests"] == 0, report["load"]["failures"]


def test_serve_soak_samples_memory_and_latency(capsys, demo_registry):
    bench = load_bench("serve_soak")
    argv = ["--registry", str(demo_registry), "--quick", "--rate", "10", "--warmup-s", "3"]
    report = bench.main([*argv, "--duration-s", "6", "--bucket-s", "3", "--rss-interval-s", "0.5"])
    assert printed_json(capsys) == report
    memory = report["memory"]
    assert memory["start_mib"] > 10 and memory["max_mib"] >= memory["start_mib"] * 0.9
    assert math.isfinite(memory["growth_pct"]) and memory["samples"] >= 10
    rows = report["per_bucket"]["rows"]
    assert rows[0]["phase"] == "warmup" and rows[-1]["phase"] == "soak" and len(rows) >= 3
    assert sum(r["ok"] + r["failed"] for r in rows) == report["load"]["scheduled"]
    assert report["failures_total"] == 0 and report["server_alive_at_end"] is True
    assert isinstance(report["meets_target"], bool)


# -- shared setup ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["serve_shadow", "serve_rollback", "serve_soak"])
def test_scripts_use_the_shared_setup(name):
    bench = load_bench(name)
    # One copy of each helper: the script's name is serving_setup's function.
    for helper in ("prepare_registry_copy", "load_rate", "add_load_rate_args", "parse_with_quick"):
        assert getattr(bench, helper) is getattr(setup, helper)
    if name != "serve_soak":  # the soak serves production alone
        assert bench.add_second_version is setup.add_second_version
        assert bench.merge_open_loop is setup.merge_open_loop
    source = (BENCH / f"{name}.py").read_text(encoding="utf-8")
    for copied in ("prepare_registry", "add_candidate", "search_capacity", "merge"):
        assert f"def {copied}(" not in source
    assert "shutil.copytree(" not in source and "find_capacity(" not in source


# -- helpers on made-up data -------------------------------------------------------------------
def test_shadow_helpers():
    bench = load_bench("serve_shadow")
    assert bench.round_order(3) == ["off", "on", "on", "off", "off", "on"]
    assert bench.increase_pct(105.0, 100.0) == 5.0 and bench.increase_pct(1.0, None) is None
    line = 'lmforge_shadow_total{model="demo",outcome="dropped"} 7.0'
    match = bench.SHADOW_METRIC.match(line)
    assert match and (match["model"], match["outcome"], match["value"]) == (
        "demo",
        "dropped",
        "7.0",
    )


def test_rollback_analysis_from_probe_answers():
    bench = load_bench("serve_rollback")
    command = bench.Command("promote", "cli", 1.0, 2, run=None)  # type: ignore[arg-type]
    command.issued, command.done, command.changed_at, command.from_version = 99.0, 101.0, 100.0, 1
    answers = [
        bench.ProbeAnswer(99.9, 100.05, 200, 1),  # in flight at the change: old version
        bench.ProbeAnswer(100.1, 100.25, 200, 2),  # the first answer from v2
        bench.ProbeAnswer(100.3, 100.35, 200, 1),  # a stale answer after the switch
        bench.ProbeAnswer(100.4, 100.45, 200, 2),
        bench.ProbeAnswer(110.0, 110.1, 200, 1),  # after the next change: not this command's
    ]
    loads = [(99.5, 200, 0.01), (100.5, 200, 0.03), (100.6, "503", 0.002), (105.0, 200, 0.5)]
    out = bench.analyse_command(command, answers, loads, 1.0, until=109.0)
    assert out["switch_s"] == pytest.approx(0.25) and out["from_command_s"] == pytest.approx(1.25)
    assert out["last_old_s"] == pytest.approx(0.35) and out["stale_after_switch"] == 1
    assert out["window"]["ok"] == 2 and out["window"]["failures"] == {"503": 1}


def test_soak_memory_report_baseline_and_growth():
    bench = load_bench("serve_soak")
    mib = bench.MIB
    # 100 MiB through the warm-up (60 s), then a steady climb to 120 MiB at 660 s.
    samples = [
        (float(t), int(100 * mib + max(0, t - 60) * 20 * mib / 600)) for t in range(0, 661, 5)
    ]
    out = bench.memory_report(samples, warmup_s=60.0, end_s=660.0, interval_s=5.0)
    assert out["start_mib"] == pytest.approx(100.0)
    assert out["end_mib"] == pytest.approx(119.5, abs=0.1)  # median of the last 30 s
    assert out["max_mib"] == pytest.approx(120.0)
    assert out["growth_pct"] == pytest.approx(19.5, abs=0.1)
    assert out["slope_mib_per_min"] == pytest.approx(2.0, abs=0.01)
    assert "error" in bench.memory_report(samples[:1], 60.0, 660.0, 5.0)
