"""The data section of the report: a cleaning run's stats.json as tables and inline plots."""

from __future__ import annotations

from html import escape
from typing import Any

from lmforge.report import svg
from lmforge.report.contract import REPORT_CONTRACT
from lmforge.report.html import _num, funnel_items, key_value_table, remaining_items, rows_table


def _noise_rows(kinds: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for kind, value in sorted(kinds.items()):
        row = {"kind": kind}
        if isinstance(value, dict):
            row.update({k: v for k, v in value.items() if not isinstance(v, dict | list)})
        else:
            row["docs"] = value
        rows.append(row)
    return rows


def _threshold_rows(anomaly: dict[str, Any] | None) -> list[dict[str, Any]]:
    thresholds = (anomaly or {}).get("thresholds") or {}
    rows = []
    for group, features in sorted(thresholds.items()):
        if not isinstance(features, dict):
            continue
        for feature, bounds in features.items():
            if not isinstance(bounds, dict):
                continue
            if bounds.get("low") is None and bounds.get("high") is None:
                continue
            rows.append(
                {
                    "language": group,
                    "feature": feature,
                    "low": bounds.get("low"),
                    "high": bounds.get("high"),
                    "median": bounds.get("median"),
                }
            )
    return rows


def _cluster_items(clusters: dict[str, Any], kind: str) -> list[tuple[str, float]]:
    sizes = (clusters or {}).get(kind) or {}
    items = sorted(((int(k), v) for k, v in sizes.items()), key=lambda kv: kv[0])
    return [(f"{kind} size {size}", float(count)) for size, count in items[:15]]


def _speed_items(funnel: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [
        (row["step"], float(row["docs_per_second"]))
        for row in funnel
        if isinstance(row, dict) and row.get("docs_per_second")
    ]


def render_data_section(data: dict[str, Any]) -> str:
    """HTML for one cleaning run: funnel, removals, PII, dedup, languages, speeds, models."""
    funnel = data.get("funnel", [])
    removed = sorted(
        ((label, v) for label, v in funnel_items(funnel) if v > 0), key=lambda i: -i[1]
    )
    pii = sorted(funnel_items(data.get("pii", {})), key=lambda i: -i[1])
    languages = sorted(
        ((k, float(v)) for k, v in (data.get("languages") or {}).items()), key=lambda i: -i[1]
    )
    clusters = data.get("dedup_clusters") or {}
    dup_items = _cluster_items(clusters, "exact") + _cluster_items(clusters, "near")
    keys = [
        *REPORT_CONTRACT["data"],
        "docs_rejected",
        "docs_malformed",
        "docs_per_second",
        "pii_docs_masked",
    ]
    parts = [
        "<h2>Data</h2><div class='grid'>",
        key_value_table(data, keys),
        svg.bar_chart(remaining_items(funnel), "Documents left after each step", "docs"),
        svg.bar_chart(removed[:20], "What was removed, and why", "documents"),
        svg.bar_chart(pii, "PII masked, by type", "identifiers") if pii else "",
        svg.bar_chart(dup_items, "Duplicate clusters by size", "clusters") if dup_items else "",
        svg.bar_chart(languages, "Languages kept", "documents") if languages else "",
        svg.bar_chart(_speed_items(funnel), "Speed per step (one core)", "docs/s"),
        "</div>",
    ]
    executor = data.get("executor")
    if isinstance(executor, dict):
        phases = data.get("phase_seconds") or {}
        shown = ", ".join(f"{escape(k)} {_num(v)} s" for k, v in phases.items())
        parts.append(
            f"<p class='muted'>executor {escape(str(executor.get('name')))} with "
            f"{_num(executor.get('workers'))} workers; phases: {shown}</p>"
        )
    thresholds = _threshold_rows(data.get("anomaly"))
    if thresholds:
        parts.append("<h3>Anomaly thresholds fitted on this corpus</h3>" + rows_table(thresholds))
    model = data.get("noise_model")
    filters = data.get("model_filters")
    if isinstance(model, dict) or isinstance(filters, dict):
        rows = []
        for step, values in (filters or {}).items():
            rows.append({"filter": step, **values})
        parts.append(
            "<h3>Learned filters</h3>"
            + (key_value_table(model) if isinstance(model, dict) else "")
            + (rows_table(rows) if rows else "")
        )
    kinds = data.get("noise_kinds")
    if isinstance(kinds, dict) and kinds:
        parts.append(
            "<h3>Planted noise against the ground truth, by kind</h3>"
            + rows_table(_noise_rows(kinds))
        )
    return "".join(parts)


def render_data_page(stats: dict[str, Any], title: str) -> str:
    """A standalone page for `lmforge report --stats OUT/stats.json`."""
    from lmforge.report.html import CSS

    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
        + render_data_section(stats)
        + "</body></html>"
    )
