"""The step protocol: a generator over documents that yields the kept ones.

A step decides per document in `process(doc)`: None keeps it (possibly rewritten), a string
drops it with that reason. The base class counts, times, and hands every drop to the
`reject` callback with (step name, reason). A filter implements only `filter(doc)`, a
rewriting step only `transform(doc)`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lmforge.data.document import Document

RejectFn = Callable[[Document, str, str], None]


@dataclass
class StepStats:
    name: str
    docs_in: int = 0
    docs_out: int = 0
    seconds: float = 0.0
    dropped: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)  # step-specific counts

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.name,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "dropped": dict(self.dropped.most_common()),
            "seconds": round(self.seconds, 4),
            "docs_per_second": round(self.docs_in / self.seconds, 1) if self.seconds else None,
        }
        if self.events:
            out["events"] = dict(self.events.most_common())
        return out


class PipelineStep(ABC):
    name: ClassVar[str]

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    @abstractmethod
    def process(self, doc: Document) -> str | None:
        """None keeps `doc`; a string drops it with that reason."""

    def run(self, docs: Iterable[Document], reject: RejectFn) -> Iterator[Document]:
        stats = self.stats
        clock = time.perf_counter
        for doc in docs:
            stats.docs_in += 1
            start = clock()
            reason = self.process(doc)
            stats.seconds += clock() - start
            if reason is None:
                stats.docs_out += 1
                yield doc
            else:
                stats.dropped[reason] += 1
                reject(doc, self.name, reason)


class BaseFilter(PipelineStep):
    """Keeps documents for which `filter` is true; a (False, reason) result names the reason."""

    @abstractmethod
    def filter(self, doc: Document) -> bool | tuple[bool, str]: ...

    def process(self, doc: Document) -> str | None:
        result = self.filter(doc)
        if isinstance(result, tuple):
            keep, reason = result
        else:
            keep, reason = result, self.name
        return None if keep else reason


class Transform(PipelineStep):
    """Rewrites documents in place (through `Document.set_text`); drops none."""

    @abstractmethod
    def transform(self, doc: Document) -> None: ...

    def process(self, doc: Document) -> str | None:
        self.transform(doc)
        return None
