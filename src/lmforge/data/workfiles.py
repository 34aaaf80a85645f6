"""Intermediate shards of a cleaning run, under OUT/_work/<phase>/.

Documents travel between phases as Parquet rows that keep everything a later phase needs:
the text as read (for the rejected output), the judged content of templated records, the
language. Every file is written to a temp name and renamed, and a phase's per-shard JSON
marker is written last, so a shard is either complete or absent after a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data.document import Document
from lmforge.data.writer import CLEAN_SCHEMA, REJECTED_SCHEMA
from lmforge.workspace import atomic_path, atomic_write_json, read_json

DOC_SCHEMA = (
    CLEAN_SCHEMA.append(pa.field("content", pa.string()))
    .append(pa.field("original", pa.string()))
    # the reader's reason for a record that is not a document
    .append(pa.field("malformed", pa.string()))
)
# Rejected rows as they will be published, plus the normalised text the rules judged: the
# learned noise model trains on what the rules saw, not on the raw bytes.
WORK_REJECTED_SCHEMA = REJECTED_SCHEMA.append(pa.field("judged", pa.string()))


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def write_table(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def read_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def docs_table(docs: Iterable[Document], malformed: Iterable[str | None] | None = None) -> pa.Table:
    docs = list(docs)
    reasons = list(malformed) if malformed is not None else [None] * len(docs)
    columns: dict[str, list[Any]] = {
        "id": [d.id for d in docs],
        "text": [d.text for d in docs],
        "source": [d.source for d in docs],
        "label": [d.label for d in docs],
        "lang": [d.lang for d in docs],
        "meta": [json.dumps(d.meta, ensure_ascii=False, default=str) for d in docs],
        "content": [d.content for d in docs],
        "original": [d.original_text for d in docs],
        "malformed": reasons,
    }
    return pa.table(columns, schema=DOC_SCHEMA)


def read_docs(path: Path) -> Iterator[tuple[Document, str | None]]:
    """Documents of a shard in order, each with its malformed reason (None for documents)."""
    table = pq.read_table(path, schema=DOC_SCHEMA)
    cols = {name: table.column(name).to_pylist() for name in DOC_SCHEMA.names}
    for i in range(table.num_rows):
        doc = Document(
            id=cols["id"][i],
            text=cols["text"][i],
            source=cols["source"][i],
            label=cols["label"][i],
            lang=cols["lang"][i],
            meta=json.loads(cols["meta"][i]),
            original_text=cols["original"][i],
            content=cols["content"][i],
        )
        yield doc, cols["malformed"][i]


class RejectedRows:
    """Collects rejected documents of one shard in the published schema (+ judged text)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {name: [] for name in WORK_REJECTED_SCHEMA.names}

    def add(self, doc: Document, step: str, reason: str) -> None:
        rows = self.rows
        rows["id"].append(doc.id)
        rows["text"].append(doc.raw_text)
        rows["source"].append(doc.source)
        rows["label"].append(doc.label)
        rows["lang"].append(doc.lang)
        rows["meta"].append(json.dumps(doc.meta, ensure_ascii=False, default=str))
        rows["step"].append(step)
        rows["reason"].append(reason)
        rows["judged"].append(doc.judged_text)

    def __len__(self) -> int:
        return len(self.rows["id"])

    def table(self) -> pa.Table:
        return pa.table(self.rows, schema=WORK_REJECTED_SCHEMA)


def marker_path(folder: Path, index: int) -> Path:
    return folder / f"{shard_name(index)}.json"


def write_marker(folder: Path, index: int, payload: dict[str, Any]) -> None:
    atomic_write_json(marker_path(folder, index), payload)


def read_marker(folder: Path, index: int) -> dict[str, Any] | None:
    path = marker_path(folder, index)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None  # a marker is written atomically; an unreadable one means redo the shard
