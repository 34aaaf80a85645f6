"""The record that flows through the cleaning line, and the reader's stand-in for a bad one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Document:
    """One text with its identity, origin and lineage.

    `meta` holds lineage (`source`, `file`, `row` or `offset`, `table`) and the fields of
    structured records that were not rendered into the text. `original_text` is set the
    first time a step rewrites the text, so a rejected document can be stored as it was read.

    `content` is the free-text part of a record rendered from a template (the `text_field`
    value inside "{product} ({category}): {comment}"): quality and language filters judge it
    rather than the rendered text, whose fixed scaffolding would make an empty or foreign
    comment look like a fine document. None means the whole text is content.
    """

    id: str
    text: str
    source: str
    label: str | None = None
    lang: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    original_text: str | None = None
    content: str | None = None

    def set_text(self, text: str) -> None:
        if text != self.text:
            if self.original_text is None:
                self.original_text = self.text
            self.text = text

    @property
    def judged_text(self) -> str:
        """The text quality filters look at."""
        return self.text if self.content is None else self.content

    @property
    def raw_text(self) -> str:
        return self.text if self.original_text is None else self.original_text


@dataclass(slots=True)
class Malformed:
    """A record a reader could not turn into a document (bad JSON, wrong field count, ...).

    It is counted, written to the rejected shards with step "read", and the run goes on.
    """

    reason: str
    raw: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_document(self) -> Document:
        position = self.meta.get("row", self.meta.get("offset"))
        file_name = Path(str(self.meta.get("file", ""))).name
        doc_id = derived_id(self.source, f"{file_name}:{self.meta.get('table', '')}", position)
        return Document(id=doc_id, text=self.raw, source=self.source, meta=dict(self.meta))


def derived_id(source: str, file: str, position: object) -> str:
    """Deterministic id for a record that has none: stable across runs and machines."""
    key = f"{source}\x00{file}\x00{position}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()
