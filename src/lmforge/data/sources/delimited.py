"""CSV and TSV readers (plain, gzip or zstd): the first row is the header."""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.lines import UNDECODABLE, Line, read_lines
from lmforge.data.sources.records import RecordBuilder

# Review exports can hold long fields; the csv module's 128 KiB default would reject them.
# Lines are still capped by MAX_LINE_BYTES before the csv module sees them.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_LONE_CR = re.compile(r"(?<=\r)(?!\n|$)")  # just after a CR that ends a row mid-line


class _Feed:
    """Hands clean lines to the csv module and sets the others aside.

    The csv module pulls lines lazily, so a problem noted while it built one row belongs to
    that row (an undecodable line) or comes just before it (a skipped line that was too
    long, a damaged compressed stream).
    """

    def __init__(self, path: Path) -> None:
        self.lines = read_lines(path)
        self.skipped: list[Line] = []  # lines the csv module never saw
        self.undecodable: list[Line] = []  # lines it saw with replacement characters

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            if line.problem == UNDECODABLE:
                self.undecodable.append(line)
            elif line.problem:
                self.skipped.append(line)
                continue
            text = line.text
            if "\r" in text and _LONE_CR.search(text):
                # Old Mac/Excel exports end rows with a bare CR; the csv module wants one
                # row ending per line it is given.
                yield from _LONE_CR.split(text)
            else:
                yield text


def read_delimited(
    path: Path, rel: str, src: SourceConfig, name: str, delimiter: str
) -> Iterator[Document | Malformed]:
    """One document per row. A row with the wrong number of fields, an undecodable or an
    over-long line is malformed.

    TSV is read without quote handling (the usual TSV convention), so a quote character in
    a sentence stays text instead of swallowing the following lines.
    """
    kind = "tsv" if delimiter == "\t" else "csv"
    quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
    feed = _Feed(path)
    reader = csv.reader(iter(feed), delimiter=delimiter, quoting=quoting)
    row_no = 0

    def lineage() -> dict[str, object]:
        return {"source": name, "reader": kind, "file": str(path), "row": row_no}

    try:
        header = next(reader, None)
    except csv.Error:
        header = None
    if feed.skipped:
        # No trustworthy header: report what went wrong and leave this file.
        row_no = 1
        first = feed.skipped[0]
        yield Malformed(f"{first.reason} (header line)", first.text, name, lineage())
        return
    if not header:
        return
    columns = [h.strip() for h in header]
    builder = RecordBuilder(src, name, where=str(path), rel_path=rel, columns=columns)
    feed.undecodable.clear()  # an odd byte in the header shows in the column names
    while True:
        try:
            row: list[str] | None = next(reader, None)
            error = None
        except csv.Error as exc:
            row, error = [], exc
        for line in feed.skipped:
            row_no += 1
            yield Malformed(line.reason, line.text, name, lineage())
        feed.skipped.clear()
        if row is None:
            return
        if error is not None:
            row_no += 1
            feed.undecodable.clear()
            yield Malformed(f"unreadable row: {error}", "", name, lineage())
            continue
        if not row:
            continue
        row_no += 1
        raw = delimiter.join(row)
        if feed.undecodable:
            reason = feed.undecodable[0].reason
            feed.undecodable.clear()
            yield Malformed(reason, raw, name, lineage())
            continue
        if len(row) != len(columns):
            reason = f"wrong field count: {len(row)} fields, header has {len(columns)}"
            yield Malformed(reason, raw, name, lineage())
            continue
        yield builder.build(dict(zip(columns, row, strict=True)), lineage())
