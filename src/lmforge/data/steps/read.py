"""The read step: pulls records from every source, sets malformed ones aside, and checks
that each source produced at least one document."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from lmforge.data.document import Document, Malformed
from lmforge.data.sources import EMPTY_FILE, SourceReader
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
                    if record.reason.startswith(EMPTY_FILE):
                        counts["empty_files"] += 1
                    stats.dropped[record.reason.split(":")[0]] += 1
                    reject(record.to_document(), self.name, record.reason)
                    continue
                counts["documents"] += 1
                stats.docs_out += 1
                yield record
            counts["sampled_out"] += reader.sampled_out
            counts["capped"] += int(reader.capped)
            if not counts["documents"]:
                # One empty file among good ones is only counted; a source that gave nothing
                # at all is almost surely a wrong path, format or field, so it stops the run.
                raise InputDataError(_nothing_read(reader, counts))

    def source_stats(self) -> dict[str, dict[str, int]]:
        """records, documents and malformed per source; sampled_out, capped_at and
        empty_files are added for the sources where they happened."""
        out = {}
        for reader in self.readers:
            counts = self.per_source.get(reader.name)
            if counts is None:
                continue
            row = {k: counts[k] for k in ("records", "documents", "malformed")}
            if counts["sampled_out"]:
                row["sampled_out"] = counts["sampled_out"]
            if counts["capped"] and reader.src.max_docs is not None:
                row["capped_at"] = reader.src.max_docs
            if counts["empty_files"]:
                row["empty_files"] = counts["empty_files"]
            out[reader.name] = row
        return out


def _nothing_read(reader: SourceReader, counts: Counter[str]) -> str:
    where = f"no documents in {reader.location}"
    malformed, empty = counts["malformed"], counts["empty_files"]
    if malformed:
        detail = f", {empty} of them empty files" if empty else ""
        where += f" ({malformed} malformed records{detail}, see rejected)"
    elif reader.skipped:
        skipped = reader.skipped
        where += f" ({len(skipped)} files of kinds no reader handles, e.g. {skipped[0]})"
    if reader.sampled_out:
        return (
            f"{where}: weight {reader.src.weight} kept none of its {reader.sampled_out} records; "
            "raise `weight` in this data.sources entry"
        )
    return (
        f"{where}; check the path, the file format and the text_field/template of this "
        "data.sources entry"
    )
