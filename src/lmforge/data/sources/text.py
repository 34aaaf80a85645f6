"""Plain-text reader: one document per file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed, derived_id


def read_text(path: Path, rel: str, src: SourceConfig, name: str) -> Iterator[Document | Malformed]:
    text = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    meta = {"source": name, "reader": "text", "file": str(path)}
    yield Document(id=derived_id(name, rel, 0), text=text, source=name, meta=meta)
