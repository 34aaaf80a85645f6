"""Plain-text reader: one document per file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed, derived_id
from lmforge.data.sources.lines import MAX_LINE_BYTES, decode_utf8, read_head, too_long_preview


def read_text(path: Path, rel: str, src: SourceConfig, name: str) -> Iterator[Document | Malformed]:
    """A file that is only whitespace yields nothing (the source reader reports it empty)."""
    meta = {"source": name, "reader": "text", "file": str(path)}
    data, cut = read_head(path)
    if cut:
        reason = f"file too long: over {MAX_LINE_BYTES} bytes"
        yield Malformed(reason, too_long_preview(data), name, meta)
        return
    text, bad = decode_utf8(data)
    text = text.lstrip("\ufeff")
    if bad:
        yield Malformed(bad, text, name, meta)
        return
    if text.strip():
        yield Document(id=derived_id(name, rel, 0), text=text, source=name, meta=meta)
