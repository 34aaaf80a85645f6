"""JSON Lines reader (.jsonl, .json, .ndjson, optionally gzip-compressed)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.records import RecordBuilder


def read_jsonl(
    path: Path, rel: str, src: SourceConfig, name: str
) -> Iterator[Document | Malformed]:
    """One document per line; `offset` in the lineage is the line's byte offset (after
    decompression for .gz files)."""
    builder = RecordBuilder(src, name, where=str(path), rel_path=rel)
    opener = gzip.open if path.name.endswith(".gz") else open
    offset = 0
    with opener(path, "rb") as fh:
        while True:
            try:
                line = fh.readline()
            except (EOFError, OSError, zlib.error) as exc:
                lineage = {"source": name, "reader": "jsonl", "file": str(path), "offset": offset}
                yield Malformed(f"corrupt or truncated file: {exc}", "", name, lineage)
                return
            if not line:
                return
            start, offset = offset, offset + len(line)
            stripped = line.strip()
            if not stripped:
                continue
            lineage = {"source": name, "reader": "jsonl", "file": str(path), "offset": start}
            text = stripped.decode("utf-8", errors="replace").lstrip("\ufeff")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Malformed(f"bad JSON: {exc.msg}", text, name, lineage)
                continue
            if not isinstance(obj, dict):
                yield Malformed("line is not a JSON object", text, name, lineage)
                continue
            yield builder.build(obj, lineage)
