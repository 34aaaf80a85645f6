"""Render the run report as one self-contained HTML page (inline SVG plots, inline CSS)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Any

from lmforge.report import svg
from lmforge.report.contract import REPORT_CONTRACT

CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}.empty{color:#888}.muted{color:#666}
svg .t{font-size:13px;font-weight:600}svg .l{font-size:11px;fill:#444}
svg .k{font-size:10px;fill:#333}svg .g{stroke:#e5e7eb}
"""


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if abs(value) < 1 and value != 0:
            return f"{value:.4f}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))


def key_value_table(values: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    keys = [k for k in (keys or values) if k in values and not isinstance(values[k], dict | list)]
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{_num(values[k])}</td></tr>" for k in keys)
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def rows_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='empty'>no rows</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_num(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def funnel_items(funnel: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Flatten a funnel into bar items "step: reason" -> count.

    Accepts the data stage's list of step rows (`{"step", "dropped": {reason: n}}`) and
    nested `{step: {reason: n}}` mappings.
    """
    items: list[tuple[str, float]] = []
    if isinstance(funnel, dict):
        for key, value in funnel.items():
            label = f"{prefix}{key}"
            if isinstance(value, int | float) and not isinstance(value, bool):
                items.append((label, float(value)))
            else:
                items.extend(funnel_items(value, f"{label}: "))
    elif isinstance(funnel, list):
        for row in funnel:
            if isinstance(row, dict) and isinstance(row.get("dropped"), dict):
                items.extend(funnel_items(row["dropped"], f"{row.get('step', '?')}: "))
    return items


def remaining_items(funnel: Any) -> list[tuple[str, float]]:
    """Documents left after each step, in pipeline order (the funnel's shape)."""
    if not isinstance(funnel, list):
        return []
    rows = [r for r in funnel if isinstance(r, dict) and "docs_out" in r]
    if not rows:
        return []
    first = rows[0]
    start = [("input", float(first["docs_in"]))] if "docs_in" in first else []
    return start + [(str(r.get("step", "?")), float(r["docs_out"])) for r in rows]


def _ema(points: list[tuple[float, float]], decay: float) -> list[tuple[float, float]]:
    """Exponential moving average of a noisy curve, bias-corrected for the first points."""
    out, avg = [], 0.0
    for i, (x, y) in enumerate(points, start=1):
        avg = decay * avg + (1 - decay) * y
        out.append((x, avg / (1 - decay**i)))
    return out


def render_report(
    report: dict[str, Any],
    train_curve: list[dict[str, Any]],
    latencies_ms: list[float],
) -> str:
    sections = [
        f"<h1>lmforge run report</h1><p class='muted'>{escape(report.get('workdir', ''))} · "
        f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"
    ]
    data = report.get("data")
    if data:
        from lmforge.report.data_section import render_data_section

        sections.append(render_data_section(data))
    train = report.get("train")
    if train:
        steps = [r for r in train_curve if r.get("kind", "train") == "train" and "loss" in r]
        evals = [r for r in train_curve if r.get("kind") == "eval"]
        raw = [(r["step"], r["loss"]) for r in steps]
        loss = {"train loss": raw, "train loss (EMA 0.95)": _ema(raw, 0.95)}
        if evals and "eval_loss" in evals[0]:
            loss["eval loss"] = [(r["step"], r["eval_loss"]) for r in evals]
        acc = {
            "eval accuracy": [
                (r["step"], r["eval_accuracy"]) for r in evals if "eval_accuracy" in r
            ]
        }
        keys = [*REPORT_CONTRACT["train"], "baseline_accuracy", "macro_f1", "params"]
        sections.append(
            "<h2>Training</h2><div class='grid'>"
            + key_value_table(train, keys)
            + svg.line_chart(loss, "Loss", "step", "loss")
            + svg.line_chart(acc, "Held-out accuracy", "step", "accuracy")
            + "</div>"
        )
    compress = report.get("compress")
    if compress:
        sections.append(
            "<h2>Compression</h2>"
            + rows_table(compress.get("table") or [])
            + key_value_table(compress)
        )
    bench = report.get("bench")
    if bench:
        sections.append(
            "<h2>Serving benchmark</h2><div class='grid'>"
            + key_value_table(bench)
            + svg.histogram(latencies_ms, "Request latency", "milliseconds")
            + "</div>"
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>lmforge report</title><style>{CSS}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )
