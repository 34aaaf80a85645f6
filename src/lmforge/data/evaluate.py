"""Noise metrics of a cleaning run against a ground-truth side file (docs/demo-corpus.md).

- noise_rate_before: noisy documents / all documents in the ground truth.
- noise_rate_after: kept documents still noisy / kept documents. Still noisy: a removal
  kind, a surviving marker string, or a duplicate-group member beyond the first kept one.
- clean_docs_lost_rate: clean documents removed / clean documents; a clean document whose
  duplicate group kept a member is not lost (its text survived).

The per-kind breakdown says, for every noise kind, how many documents were removed (and by
which step/reason), fixed while kept, or left noisy.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lmforge.errors import InputDataError

REMOVAL_KINDS = frozenset({"html_junk", "too_short", "gibberish", "wrong_language", "spam"})
DUPLICATE_KINDS = frozenset({"exact_duplicate", "near_duplicate"})


@dataclass(slots=True)
class _Truth:
    noise: tuple[str, ...]
    markers: tuple[str, ...]
    dup_group: str | None


def load_ground_truth(path: Path) -> dict[str, _Truth]:
    truth: dict[str, _Truth] = {}
    if not path.is_file():
        raise InputDataError(f"ground truth not found: {path}; fix data.ground_truth")
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                truth[str(row["id"])] = _Truth(
                    tuple(row.get("noise") or ()),
                    tuple(row.get("markers") or ()),
                    row.get("dup_group"),
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputDataError(
                    f"ground truth {path} line {line_no} is not a valid record ({exc}); "
                    'expected {"id": ..., "noise": [...], "markers": [...], "dup_group": ...}'
                ) from None
    if not truth:
        raise InputDataError(f"ground truth {path} is empty")
    return truth


def _iter_rows(folder: Path, columns: list[str]):
    for shard in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(shard, columns=columns)
        yield from zip(*(table.column(c).to_pylist() for c in columns), strict=True)


def evaluate_noise(ground_truth: Path, clean_dir: Path, rejected_dir: Path) -> dict[str, Any]:
    truth = load_ground_truth(ground_truth)
    removed_by: dict[str, str] = {}
    for doc_id, step, reason in _iter_rows(rejected_dir, ["id", "step", "reason"]):
        if doc_id in truth:
            removed_by[doc_id] = f"{step}:{reason}"

    kept_in_group: Counter[str] = Counter()
    kept_noisy = kept_known = unknown = 0
    kinds: dict[str, Counter[str]] = {}
    kept_ids: set[str] = set()
    for doc_id, text in _iter_rows(clean_dir, ["id", "text"]):
        entry = truth.get(doc_id)
        if entry is None:
            unknown += 1
            continue
        kept_ids.add(doc_id)
        kept_known += 1
        extra_dup = False
        if entry.dup_group is not None:
            kept_in_group[entry.dup_group] += 1
            extra_dup = kept_in_group[entry.dup_group] > 1
        marker_left = any(m and m in text for m in entry.markers)
        removal_left = any(k in REMOVAL_KINDS for k in entry.noise)
        if extra_dup or marker_left or removal_left:
            kept_noisy += 1
        for kind in entry.noise:
            if kind in REMOVAL_KINDS:
                left = True
            elif kind in DUPLICATE_KINDS:
                left = extra_dup
            else:
                left = marker_left
            kinds.setdefault(kind, Counter())["left" if left else "fixed"] += 1

    clean_total = clean_lost = noisy_total = 0
    lost_by: Counter[str] = Counter()
    removed_reasons: dict[str, Counter[str]] = {}
    for doc_id, entry in truth.items():
        kept = doc_id in kept_ids
        if entry.noise:
            noisy_total += 1
            if not kept:
                for kind in entry.noise:
                    kinds.setdefault(kind, Counter())["removed"] += 1
                    removed_reasons.setdefault(kind, Counter())[
                        removed_by.get(doc_id, "not read")
                    ] += 1
            continue
        clean_total += 1
        if kept or (entry.dup_group is not None and kept_in_group[entry.dup_group] > 0):
            continue
        clean_lost += 1
        lost_by[removed_by.get(doc_id, "not read")] += 1

    breakdown = {}
    for kind in sorted(kinds):
        c = kinds[kind]
        total = c["removed"] + c["fixed"] + c["left"]
        breakdown[kind] = {
            "docs": total,
            "removed": c["removed"],
            "fixed": c["fixed"],
            "left": c["left"],
            "handled_rate": round((c["removed"] + c["fixed"]) / total, 4) if total else None,
            "removed_by": dict(removed_reasons.get(kind, Counter()).most_common()),
        }
    return {
        "noise_rate_before": round(noisy_total / len(truth), 4),
        "noise_rate_after": round(kept_noisy / kept_known, 4) if kept_known else 0.0,
        "clean_docs_lost_rate": round(clean_lost / clean_total, 4) if clean_total else 0.0,
        "ground_truth_docs": len(truth),
        "kept_docs_evaluated": kept_known,
        "kept_docs_not_in_ground_truth": unknown,
        "kept_docs_still_noisy": kept_noisy,
        "clean_docs_lost": clean_lost,
        "clean_docs_lost_by": dict(lost_by.most_common()),
        "noise_kinds": breakdown,
    }


MODEL_STEPS = ("anomaly", "noise_model")
_AFTER_MODELS = frozenset({"dedup", "near_dedup"})


def evaluate_model_filters(
    ground_truth: Path, clean_dir: Path, rejected_dir: Path
) -> dict[str, Any]:
    """Precision and recall of the learned filters against the ground truth.

    A document counts as noise here when it carries a removal kind (junk, too short,
    gibberish, wrong language, spam): duplicates, PII and mojibake are other steps' work.
    Both filters see the documents the rules kept, in order (anomaly, then noise_model);
    each is judged on the documents that reached it.
    """
    truth = load_ground_truth(ground_truth)

    def noisy(doc_id: str) -> bool | None:
        entry = truth.get(doc_id)
        return None if entry is None else any(k in REMOVAL_KINDS for k in entry.noise)

    flagged: dict[str, list[str]] = {step: [] for step in MODEL_STEPS}
    passed: list[str] = []  # reached the end of the model filters
    for doc_id, step in _iter_rows(rejected_dir, ["id", "step"]):
        if step in flagged:
            flagged[step].append(doc_id)
        elif step in _AFTER_MODELS:
            passed.append(doc_id)
    passed.extend(doc_id for (doc_id,) in _iter_rows(clean_dir, ["id"]))
    out: dict[str, Any] = {}
    reached = passed + flagged["noise_model"]
    for step, population in (("noise_model", reached), ("anomaly", reached + flagged["anomaly"])):
        hits = [noisy(i) for i in flagged[step]]
        known = [n for n in hits if n is not None]
        noise_reached = sum(1 for i in population if noisy(i))
        true_pos = sum(known)
        out[step] = {
            "flagged": len(flagged[step]),
            "flagged_noise": true_pos,
            "flagged_clean": len(known) - true_pos,
            "noise_reaching_step": noise_reached,
            "precision": round(true_pos / len(known), 4) if known else None,
            "recall": round(true_pos / noise_reached, 4) if noise_reached else None,
        }
    return out
