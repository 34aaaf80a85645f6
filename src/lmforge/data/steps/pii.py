"""The cleaning line's PII step: detects identifiers and masks them (see `lmforge.data.pii`).

Types, by priority when spans overlap: URL_SECRET, EMAIL, ID_CN, BANK_CARD, PASSPORT, IP,
PHONE, NAME (only with a name finder). Identifiers with check digits are masked only when
the check passes, so prices, dates, order and tracking numbers stay.
"""

from __future__ import annotations

from collections.abc import Collection

from lmforge.data.document import Document
from lmforge.data.pii import PII_TYPES, NameFinder, PiiRewriter, PiiSpan, detect_pii, mask_pii
from lmforge.data.steps.base import Transform

PLACEHOLDERS = PII_TYPES  # the name earlier callers import

__all__ = ["PII_TYPES", "PLACEHOLDERS", "PiiMasker", "PiiSpan", "detect_pii", "mask_pii"]


class PiiMasker(Transform):
    """Masks PII in place; events count spans by type and `docs_masked`."""

    name = "pii"

    def __init__(
        self,
        mode: str = "placeholder",
        key: bytes | str | None = None,
        types: Collection[str] | None = None,
        name_finder: NameFinder | None = None,
    ) -> None:
        super().__init__()
        self.rewriter = PiiRewriter(mode, key, types, name_finder)

    def transform(self, doc: Document) -> None:
        masked, counts = self.rewriter.mask(doc.text)
        if counts:
            doc.set_text(masked)
            self.stats.events.update(counts)
            self.stats.events["docs_masked"] += 1
            if doc.content:
                # The judged content of a templated record is part of its text: later steps
                # (anomaly features, the noise model) must not see the raw identifiers.
                doc.content = self.rewriter.mask(doc.content)[0]
