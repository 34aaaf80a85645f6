"""CSV and TSV readers: the first row is the header."""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.records import RecordBuilder

# Review exports can hold long fields; the csv module's 128 KiB default would reject them.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def read_delimited(
    path: Path, rel: str, src: SourceConfig, name: str, delimiter: str
) -> Iterator[Document | Malformed]:
    """One document per row. A row with the wrong number of fields is malformed.

    TSV is read without quote handling (the usual TSV convention), so a quote character in
    a sentence stays text instead of swallowing the following lines.
    """
    kind = "tsv" if delimiter == "\t" else "csv"
    quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader, None)
        except csv.Error:
            header = None
        if not header:
            return
        columns = [h.strip() for h in header]
        builder = RecordBuilder(src, name, where=str(path), rel_path=rel, columns=columns)
        row_no = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row_no += 1
                lineage = {"source": name, "reader": kind, "file": str(path), "row": row_no}
                yield Malformed(f"unreadable row: {exc}", "", name, lineage)
                continue
            if not row:
                continue
            row_no += 1
            lineage = {"source": name, "reader": kind, "file": str(path), "row": row_no}
            if len(row) != len(columns):
                raw = delimiter.join(row)
                reason = f"wrong field count: {len(row)} fields, header has {len(columns)}"
                yield Malformed(reason, raw, name, lineage)
                continue
            yield builder.build(dict(zip(columns, row, strict=True)), lineage)
