import itertools
import json
import re

import pytest

from lmforge.config import load_config
from lmforge.errors import StageError
from lmforge.report import stage as report_stage
from lmforge.report.html import funnel_items
from lmforge.report.svg import _nice_ticks, histogram, line_chart
from lmforge.workspace import SUCCESS_MARKER, Workspace, atomic_write_json


def test_nice_ticks_cover_the_range_with_round_steps():
    ticks = _nice_ticks(0.13, 0.87)
    assert ticks[0] <= 0.13 and ticks[-1] >= 0.87
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1 and steps.pop() in (0.1, 0.2, 0.25)


def test_line_chart_draws_one_polyline_per_series():
    svg = line_chart({"a": [(0, 1.0), (1, 0.5)], "b": [(0, 2.0), (1, 1.0)]}, "t", "x", "y")
    assert svg.count("<polyline") == 2 and svg.startswith("<svg")


def test_histogram_counts_every_value():
    values = [float(v) for v in range(100)]
    svg = histogram(values, "lat", "ms", bins=10)
    heights = [
        float(h)
        for h in re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)"', svg)
    ]
    assert len(heights) == 10 and all(h > 0 for h in heights)


def test_empty_series_render_a_note_not_a_crash():
    assert "no data" in line_chart({"a": []}, "t", "x", "y")
    assert "no data" in histogram([], "t", "x")


def test_funnel_flattens_step_rows_and_nested_counts():
    items = funnel_items({"quality": {"too_short": 3, "spam": 2}, "dedup": {"exact": 5}})
    assert ("quality: too_short", 3.0) in items and ("dedup: exact", 5.0) in items
    rows = [{"step": "length", "docs_in": 5, "docs_out": 3, "dropped": {"empty": 2}}]
    assert funnel_items(rows) == [("length: empty", 2.0)]


def test_report_stage_writes_json_contract_and_html(tmp_path):
    cfg = load_config(None, [f"workdir={tmp_path}"])
    ws = Workspace(tmp_path)
    funnel = [
        {"step": "read", "docs_in": 10, "docs_out": 9, "dropped": {"bad JSON": 1}},
        {"step": "length", "docs_in": 9, "docs_out": 8, "dropped": {"too_short": 1}},
    ]
    noise = {"pii": {"docs": 3, "removed": 0, "fixed": 3, "removed_by": {}}}
    atomic_write_json(
        ws.stage_dir("data") / "summary.json",
        {"docs_in": 10, "docs_out": 8, "funnel": funnel, "pii": {"EMAIL": 2}, "noise_kinds": noise},
    )
    atomic_write_json(ws.stage_dir("bench") / "summary.json", {"requests": 5, "errors": 0})
    atomic_write_json(ws.stage_dir("bench") / "latencies.json", [1.0, 2.0, 3.0])
    (ws.stage_dir("train") / "metrics.jsonl").write_text(
        '{"kind": "train", "step": 1, "loss": 1.0}\n{"kind": "train", "step": 2, "loss": 0.5}\n'
        '{"kind": "eval", "step": 2, "eval_accuracy": 0.7}\n{"kind": "tra'
    )
    atomic_write_json(ws.stage_dir("train") / "summary.json", {"steps": 2, "eval_accuracy": 0.7})
    for stage in ("data", "bench", "train"):
        (ws.stage_dir(stage) / SUCCESS_MARKER).write_text("done\n")
    atomic_write_json(ws.stage_dir("compress") / "summary.json", {"size_mb_before": 1.0})
    result = report_stage.run(cfg, ws, console=__import__("rich").console.Console(quiet=True))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["docs_out"] == 8 and report["bench"]["errors"] == 0
    assert "compress" not in report  # a summary without _SUCCESS is from an unfinished run
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") >= 5 and "too_short" in html and "bad JSON" in html
    assert "EMAIL" in html and "<td>pii</td>" in html
    assert result.summary["html"].endswith("report.html")


def test_report_with_nothing_to_report_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"workdir={tmp_path}"])
    with pytest.raises(StageError, match="nothing to report"):
        report_stage.run(cfg, Workspace(tmp_path), console=None)
