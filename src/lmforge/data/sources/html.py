"""HTML page reader: one document per page, main text only, id and label from <meta>."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed, derived_id
from lmforge.data.htmltext import extract_html
from lmforge.data.sources.lines import MAX_LINE_BYTES, read_head, too_long_preview

_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_-]+)""", re.IGNORECASE)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    declared = _CHARSET.search(data[:4096])
    if declared:
        try:
            return data.decode(declared.group(1).decode("ascii"), errors="replace")
        except LookupError:
            pass
    return data.decode("utf-8", errors="replace")


def read_html(path: Path, rel: str, src: SourceConfig, name: str) -> Iterator[Document | Malformed]:
    """The rejected shards keep the page's markup as its original text, so what the extractor
    dropped can be inspected. Pages are decoded by their declared charset, so only an
    over-long page is malformed here."""
    lineage = {"source": name, "reader": "html", "file": str(path)}
    data, cut = read_head(path)
    if cut:
        reason = f"file too long: over {MAX_LINE_BYTES} bytes"
        yield Malformed(reason, too_long_preview(data), name, lineage)
        return
    markup = _decode(data)
    content = extract_html(markup)
    doc_id = content.meta.get(src.id_field.lower()) or derived_id(name, rel, 0)
    label = content.meta.get(src.label_field.lower()) or None
    meta = dict(lineage)
    if content.title:
        meta["title"] = content.title
    doc = Document(id=doc_id, text=content.text, source=name, label=label, meta=meta)
    doc.original_text = markup
    yield doc
