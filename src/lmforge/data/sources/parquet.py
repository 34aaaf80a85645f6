"""Parquet reader: one document per row, streamed record batch by record batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.lines import CORRUPT
from lmforge.data.sources.records import RecordBuilder

# Rows per batch: large enough for Arrow to convert efficiently, small enough that wide rows
# never add up to much memory.
BATCH_ROWS = 1024


def read_parquet(
    path: Path, rel: str, src: SourceConfig, name: str
) -> Iterator[Document | Malformed]:
    """`row` in the lineage counts from 1 in file order. A damaged file yields the rows read
    before the damage, then one Malformed record."""
    row_no = 0

    def lineage() -> dict[str, object]:
        return {"source": name, "reader": "parquet", "file": str(path), "row": row_no}

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        yield Malformed(f"{CORRUPT}: {exc}", "", name, lineage())
        return
    with parquet:
        columns = parquet.schema_arrow.names
        builder = RecordBuilder(src, name, where=str(path), rel_path=rel, columns=columns)
        batches = parquet.iter_batches(batch_size=BATCH_ROWS)  # lazy: errors come on next()
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                row_no += 1
                yield Malformed(f"{CORRUPT}: {exc}", "", name, lineage())
                return
            if batch is None:
                return
            for fields in batch.to_pylist():
                row_no += 1
                yield builder.build(fields, lineage())
