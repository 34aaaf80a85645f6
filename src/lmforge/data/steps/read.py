"""The read step: pulls records from every source, sets malformed ones aside, and checks
that each source produced at least one document."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from lmforge.data.document import Document, Malformed
from lmforge.data.sources import SourceReader
from lmforge.data.steps.base import RejectFn, StepStats
from lmforge.errors import InputDataError


class ReadStep:
    name = "read"

    def __init__(self, readers: list[SourceReader]) -> None:
        self.readers = readers
        self.stats = StepStats(self.name)
        self.per_source: dict[str, Counter[str]] = {}

    def run(self, reject: RejectFn) -> Iterator[Document]:
        stats = self.stats
        clock = time.perf_counter
        for reader in self.readers:
            counts = self.per_source.setdefault(reader.name, Counter())
            records = iter(reader)
            while True:
                start = clock()
                record = next(records, None)
                stats.seconds += clock() - start
                if record is None:
                    break
                stats.docs_in += 1
                counts["records"] += 1
                if isinstance(record, Malformed):
                    counts["malformed"] += 1
                    stats.dropped[record.reason.split(":")[0]] += 1
                    reject(record.to_document(), self.name, record.reason)
                    continue
                counts["documents"] += 1
                stats.docs_out += 1
                yield record
            if not counts["documents"]:
                bad = (
                    f" ({counts['malformed']} malformed records, see rejected)"
                    if counts["malformed"]
                    else ""
                )
                raise InputDataError(
                    f"no documents in {reader.path}{bad}; check the path, the file format and "
                    "the text_field/template of this data.sources entry"
                )

    def source_stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, counts in self.per_source.items():
            out[name] = {k: counts[k] for k in ("records", "documents", "malformed")}
        return out
