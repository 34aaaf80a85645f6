"""The keys `report.json` promises per stage. Later versions add keys, never remove these."""

from __future__ import annotations

REPORT_CONTRACT: dict[str, tuple[str, ...]] = {
    "data": (
        "docs_in",
        "docs_out",
        "noise_rate_before",
        "noise_rate_after",
        "clean_docs_lost_rate",
        "seconds",
    ),
    "train": (
        "steps",
        "final_loss",
        "eval_accuracy",
        "majority_class_accuracy",
        "tokens_per_second",
        "seconds",
    ),
    "compress": (
        "size_mb_before",
        "size_mb_after",
        "latency_ms_before",
        "latency_ms_after",
        "accuracy_before",
        "accuracy_after",
    ),
    "bench": ("requests", "errors", "requests_per_second", "p50_ms", "p99_ms"),
}
