"""Parquet shard writer: fixed-size shards, each written to a temp file and renamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data.document import Document
from lmforge.workspace import atomic_path

CLEAN_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("lang", pa.string()),
        ("meta", pa.string()),
    ]
)
REJECTED_SCHEMA = CLEAN_SCHEMA.append(pa.field("step", pa.string())).append(
    pa.field("reason", pa.string())
)
SHARD_GLOB = "part-*.parquet"


def clear_shards(folder: Path) -> None:
    """Remove shards of an earlier run, so a smaller rerun leaves no stale ones behind."""
    if folder.is_dir():
        for old in folder.glob(SHARD_GLOB):
            old.unlink()


class ShardWriter:
    """Buffers rows and writes `part-NNNNN.parquet` every `shard_docs` rows.

    A folder always ends with at least one shard (possibly empty), so readers can rely on
    `part-00000.parquet` existing.
    """

    def __init__(self, folder: Path, schema: pa.Schema, shard_docs: int) -> None:
        self.folder = folder
        self.schema = schema
        self.shard_docs = shard_docs
        self.paths: list[Path] = []
        self.rows = 0
        self._buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        clear_shards(folder)
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, doc: Document, text: str, **extra: str) -> None:
        buf = self._buffer
        buf["id"].append(doc.id)
        buf["text"].append(text)
        buf["source"].append(doc.source)
        buf["label"].append(doc.label)
        buf["lang"].append(doc.lang)
        buf["meta"].append(json.dumps(doc.meta, ensure_ascii=False, default=str))
        for key, value in extra.items():
            buf[key].append(value)
        self.rows += 1
        if len(buf["id"]) >= self.shard_docs:
            self._flush()

    def _flush(self) -> None:
        table = pa.table(self._buffer, schema=self.schema)
        path = self.folder / f"part-{len(self.paths):05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.paths.append(path)
        self._buffer = {name: [] for name in self.schema.names}

    def close(self) -> list[Path]:
        if self._buffer["id"] or not self.paths:
            self._flush()
        return self.paths
