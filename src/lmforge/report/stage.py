"""The report stage: gather every stage's summary into report.json and render report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.config import RunConfig
from lmforge.errors import StageError
from lmforge.pipeline import StageResult
from lmforge.report.html import render_report
from lmforge.workspace import Workspace, atomic_write_json, atomic_write_text, read_json

REPORTED_STAGES = ("corpus", "data", "train", "compress", "bench")


def stage_inputs(cfg: RunConfig, ws: Workspace) -> list[Path]:
    return [ws.stage_dir(s, create=False) / "summary.json" for s in REPORTED_STAGES]


def build_report(ws: Workspace) -> dict[str, Any]:
    report: dict[str, Any] = {"workdir": str(ws.root)}
    for stage in REPORTED_STAGES:
        summary = ws.summary(stage) if ws.is_complete(stage) else None
        if summary is not None:
            report[stage] = summary
    if len(report) == 1:
        raise StageError(f"nothing to report in {ws.root}: no stage has finished there yet")
    return report


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write
    return rows


def run(cfg: RunConfig, ws: Workspace, console: Console) -> StageResult:
    report = build_report(ws)
    curve = read_metrics(ws.stage_dir("train", create=False) / "metrics.jsonl")
    latency_file = ws.stage_dir("bench", create=False) / "latencies.json"
    latencies = read_json(latency_file) if latency_file.exists() else []
    json_path, html_path = ws.root / "report.json", ws.root / "report.html"
    atomic_write_json(json_path, report)
    atomic_write_text(html_path, render_report(report, curve, latencies))
    console.print(f"wrote {html_path}")
    return StageResult(
        summary={"json": str(json_path), "html": str(html_path)}, outputs=[json_path, html_path]
    )
