"""The whole lifecycle, as a user runs it: `lmforge demo --quick` in a fresh folder."""

import json
import os
import subprocess
import sys
import time

import pytest

from lmforge.report.contract import REPORT_CONTRACT


def lmforge(*args, timeout=420):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_quick_demo_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    started = time.perf_counter()
    proc = lmforge("demo", "--quick", "--workdir", str(workdir))
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report.html" in proc.stdout

    report = json.loads((workdir / "report.json").read_text())
    for section, keys in REPORT_CONTRACT.items():
        assert set(keys) <= set(report[section]), (
            f"{section} lacks {set(keys) - set(report[section])}"
        )
    data, train, compress, bench = (report[s] for s in ("data", "train", "compress", "bench"))
    assert data["noise_rate_after"] < data["noise_rate_before"]
    assert 0.3 < data["noise_rate_before"] < 0.45
    assert data["clean_docs_lost_rate"] < 0.05
    assert train["eval_accuracy"] > train["majority_class_accuracy"] + 0.1
    assert compress["size_mb_after"] < compress["size_mb_before"]
    assert compress["accuracy_after"] > train["majority_class_accuracy"]
    assert bench["errors"] == 0 and bench["requests"] > 0
    assert bench["p50_ms"] <= bench["p99_ms"]
    html = (workdir / "report.html").read_text()
    assert html.count("<svg") >= 4
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert all(e["status"] == "complete" for e in manifest["stages"].values())
    assert (workdir / "registry" / "registry.sqlite").exists()
    assert not list(workdir.rglob("*.pt")) and not list(workdir.rglob("*.pkl"))
    print(f"quick demo took {elapsed:.0f} s")

    # A rerun with nothing changed skips every stage but the report.
    rerun = lmforge("demo", "--quick", "--workdir", str(workdir), timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for stage in ("corpus", "data", "train", "compress", "bench"):
        assert f"{stage}: up to date, skipped" in rerun.stdout
