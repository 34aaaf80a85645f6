"""The table printed at the end of a run: the headline number of each stage."""

from __future__ import annotations

from typing import Any

from rich.table import Table

HEADLINES: dict[str, tuple[tuple[str, str], ...]] = {
    "corpus": (("docs", "documents generated"), ("noise_rate", "planted noise rate")),
    "data": (
        ("docs_in", "documents in"),
        ("docs_out", "documents kept"),
        ("noise_rate_before", "noise rate before"),
        ("noise_rate_after", "noise rate after"),
        ("clean_docs_lost_rate", "clean docs lost"),
    ),
    "train": (
        ("steps", "steps"),
        ("final_loss", "final loss"),
        ("eval_accuracy", "eval accuracy"),
        ("majority_class_accuracy", "majority-class accuracy"),
        ("baseline_accuracy", "TF-IDF+LR floor accuracy"),
        ("tokens_per_second", "tokens/s"),
    ),
    "compress": (
        ("size_mb_before", "size MB fp32"),
        ("size_mb_after", "size MB int8"),
        ("latency_ms_before", "latency ms fp32 (batch 1)"),
        ("latency_ms_after", "latency ms int8 (batch 1)"),
        ("accuracy_before", "accuracy fp32"),
        ("accuracy_after", "accuracy int8"),
    ),
    "bench": (
        ("requests", "requests"),
        ("errors", "errors"),
        ("requests_per_second", "requests/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
    ),
}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary_table(summaries: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="lmforge summary", show_lines=False)
    table.add_column("stage", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for stage, keys in HEADLINES.items():
        summary = summaries.get(stage)
        if not summary:
            continue
        first = True
        for key, label in keys:
            if key in summary:
                table.add_row(stage if first else "", label, _fmt(summary[key]))
                first = False
        if "seconds" in summary:
            table.add_row("", "seconds", _fmt(summary["seconds"]))
    return table
