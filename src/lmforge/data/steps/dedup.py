"""Exact deduplication on a normalized-text hash: the first document read wins."""

from __future__ import annotations

from lmforge.data.document import Document
from lmforge.data.steps.base import BaseFilter
from lmforge.text.hashing import HashSet64, dedup_key


class ExactDedup(BaseFilter):
    name = "dedup"

    def __init__(self) -> None:
        super().__init__()
        self.seen = HashSet64()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.seen.add(dedup_key(doc.text)):
            return True
        return False, "exact_duplicate"
