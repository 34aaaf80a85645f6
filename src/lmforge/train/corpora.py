"""Texts (and labels) for a training run: the embedded generated reviews or a user's file.

A file is csv, tsv, jsonl or parquet with a text column and, for a classifier, a label
column. Column names are configurable; when the configured text column is absent, the
common names (text, sentence, content, review) are tried so a split that spells it
differently (SST-2's train vs dev) still reads.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import ConfigError, InputDataError

TEXT_FALLBACKS = ("text", "sentence", "content", "review")


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[str]  # empty when the source has no labels (language modelling)


def demo_reviews(docs: int, seed: int) -> LabelledTexts:
    """`docs` generated bilingual reviews with their sentiment labels (no network, no files)."""
    from lmforge.demo.reviews import LABELS, compose_review

    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(docs):
        review = compose_review(rng, rng.choice(("en", "zh")), rng.choice(LABELS))
        texts.append(review.text)
        labels.append(review.label)
    return LabelledTexts(texts, labels)


def read_table(
    path: str | Path, text_field: str, label_field: str, limit: int | None
) -> LabelledTexts:
    """Rows of a csv/tsv/jsonl/parquet file; rows without text are skipped and counted."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"training data file not found: {path}")
    rows = _rows(path, limit)
    if not rows:
        raise InputDataError(f"{path} has no rows")
    columns = set(rows[0])
    text_col = (
        text_field
        if text_field in columns
        else next((c for c in TEXT_FALLBACKS if c in columns), None)
    )
    if text_col is None:
        raise ConfigError(
            f"{path} has no column '{text_field}' (columns: {sorted(columns)}); "
            "set data.text_field to the one holding the text"
        )
    has_labels = label_field in columns
    texts, labels = [], []
    for row in rows:
        text = row.get(text_col)
        if text is None or not str(text).strip():
            continue
        texts.append(str(text))
        if has_labels:
            labels.append(str(row[label_field]).strip())
    return LabelledTexts(texts, labels)


def _rows(path: Path, limit: int | None) -> list[dict]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = table.slice(0, limit).to_pylist() if limit else table.to_pylist()
        return rows
    if name.endswith(".jsonl"):
        out = []
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    out.append(json.loads(line))
                if limit and len(out) >= limit:
                    break
        return out
    if name.endswith((".csv", ".tsv")):
        delimiter = "\t" if name.endswith(".tsv") else ","
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
            out = []
            for row in reader:
                out.append(row)
                if limit and len(out) >= limit:
                    break
            return out
    raise ConfigError(f"{path}: unsupported file type; use .csv, .tsv, .jsonl or .parquet")


def split_eval(
    data: LabelledTexts, fraction: float, seed: int
) -> tuple[LabelledTexts, LabelledTexts]:
    """A seeded random split: (train, eval)."""
    order = list(range(len(data.texts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(order) * fraction))
    pick = lambda idx: LabelledTexts(  # noqa: E731
        [data.texts[i] for i in idx], [data.labels[i] for i in idx] if data.labels else []
    )
    return pick(order[n_eval:]), pick(order[:n_eval])
