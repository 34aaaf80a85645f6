import importlib
import json
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.timeout(120)
def test_pipeline_bubble_shrinks_with_microbatches_and_1f1b_caps_memory(monkeypatch, capsys):
    # bench/ is not a package; on sys.path, the spawned ranks can import the bench by name.
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    bench = importlib.import_module("pipeline_bubble")
    argv = ["--stages", "2", "--microbatches", "2", "4", "--repeats", "1", "--warmup", "1"]
    argv += ["--timeout", "100"]  # the bench kills its ranks before pytest-timeout fires
    assert bench.main([*argv, "--schedules", "gpipe", "1f1b"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["compute"] == "sleep" and report["method"]
    rows = {(r["schedule"], r["microbatches"]): r for r in report["results"]}
    assert set(rows) == {(s, m) for s in ("gpipe", "1f1b") for m in (2, 4)}
    for row in rows.values():
        for key in ("step_ms", "busy_ms", "bubble", "bubble_theory", "utilisation"):
            assert key in row
        assert row["stages"] == 2
        assert row["utilisation"] == pytest.approx(1 - row["bubble"])
        assert 0 < row["bubble"] < 1
    assert rows["gpipe", 2]["bubble_theory"] == pytest.approx(1 / 3, abs=1e-4)

    for schedule in ("gpipe", "1f1b"):
        assert rows[schedule, 4]["bubble"] < rows[schedule, 2]["bubble"]
        for m in (2, 4):
            assert rows["1f1b", m]["peak_live_microbatches_stage0"] <= 2
    assert rows["gpipe", 4]["peak_live_microbatches_stage0"] == 4
    assert rows["gpipe", 4]["peak_live_bytes_stage0"] > rows["1f1b", 4]["peak_live_bytes_stage0"]
