"""JSON Lines reader (.jsonl, .json, .ndjson; plain, gzip or zstd)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.lines import read_lines
from lmforge.data.sources.records import RecordBuilder


def read_jsonl(
    path: Path, rel: str, src: SourceConfig, name: str
) -> Iterator[Document | Malformed]:
    """One document per line; `offset` in the lineage is the line's byte offset (after
    decompression for .gz/.zst files). Bad lines become Malformed records in place."""
    builder = RecordBuilder(src, name, where=str(path), rel_path=rel)
    for line in read_lines(path):
        lineage = {"source": name, "reader": "jsonl", "file": str(path), "offset": line.offset}
        if line.problem:
            yield Malformed(line.reason, line.text.strip(), name, lineage)
            continue
        text = line.text.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Malformed(f"bad JSON: {exc.msg}", text, name, lineage)
            continue
        if not isinstance(obj, dict):
            yield Malformed("line is not a JSON object", text, name, lineage)
            continue
        yield builder.build(obj, lineage)
