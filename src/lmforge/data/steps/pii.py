"""The cleaning line's PII step: detects identifiers and masks them (see `lmforge.data.pii`).

Types, by priority when spans overlap: URL_SECRET, EMAIL, ID_CN, BANK_CARD, PASSPORT, IP,
PHONE, NAME (only with a name finder). Identifiers with check digits are masked only when
the check passes, so prices, dates, order and tracking numbers stay.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from lmforge.data.document import Document
from lmforge.data.pii import PII_TYPES, NameFinder, PiiRewriter, PiiSpan, detect_pii, mask_pii
from lmforge.data.steps.base import RejectFn, Transform

BatchNameFinder = Callable[[Sequence[str]], list[list[tuple[int, int]]]]

PLACEHOLDERS = PII_TYPES  # the name earlier callers import

__all__ = ["PII_TYPES", "PLACEHOLDERS", "PiiMasker", "PiiSpan", "detect_pii", "mask_pii"]


class PiiMasker(Transform):
    """Masks PII in place; events count spans by type and `docs_masked`."""

    name = "pii"

    batch_size = 256

    def __init__(
        self,
        mode: str = "placeholder",
        key: bytes | str | None = None,
        types: Collection[str] | None = None,
        name_finder: NameFinder | None = None,
        batch_name_finder: BatchNameFinder | None = None,
    ) -> None:
        super().__init__()
        self.batch_name_finder = batch_name_finder
        self._names: dict[str, list[tuple[int, int]]] = {}
        if batch_name_finder is not None:
            name_finder = self._names.__getitem__  # filled a batch at a time by `run`
        self.rewriter = PiiRewriter(mode, key, types, name_finder)

    def run(self, docs: Iterable[Document], reject: RejectFn) -> Iterator[Document]:
        if self.batch_name_finder is None:
            yield from super().run(docs, reject)
            return
        # A name model is cheap per batch and costly per call: find the names of a batch
        # of documents (text and judged content) at once, then mask them one by one.
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from self._run_batch(batch, reject)
                batch = []
        if batch:
            yield from self._run_batch(batch, reject)

    def _run_batch(self, batch: list[Document], reject: RejectFn) -> Iterator[Document]:
        texts = list(
            dict.fromkeys([d.text for d in batch] + [d.content for d in batch if d.content])
        )
        assert self.batch_name_finder is not None
        self._names.clear()
        self._names.update(zip(texts, self.batch_name_finder(texts), strict=True))
        yield from super().run(batch, reject)

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
