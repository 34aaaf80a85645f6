"""SQLite reader: a table, a query, or every table that holds the text column."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.records import RecordBuilder, template_fields
from lmforge.errors import InputDataError


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        con.close()
        raise InputDataError(f"{path} is not a readable SQLite database ({exc})") from None
    return con


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tables(con: sqlite3.Connection) -> dict[str, list[str]]:
    names = [
        r[0]
        for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {n: [r[1] for r in con.execute(f"PRAGMA table_info({_quote_ident(n)})")] for n in names}


def _plan(con: sqlite3.Connection, path: Path, src: SourceConfig) -> list[tuple[str | None, str]]:
    """(table, SQL) pairs to read, in order."""
    if src.query:
        return [(None, src.query)]
    tables = _tables(con)
    listing = "; ".join(f"{t} ({', '.join(c)})" for t, c in tables.items()) or "no tables"
    if src.table:
        if src.table not in tables:
            raise InputDataError(
                f"{path} has no table {src.table!r}; tables: {listing}. Fix `table` in the "
                "data.sources entry"
            )
        chosen = [src.table]
    else:
        needed = set(template_fields(src.template)) if src.template else {src.text_field}
        chosen = [t for t, cols in tables.items() if needed <= set(cols)]
        if not chosen:
            raise InputDataError(
                f"{path}: no table has the column(s) {', '.join(sorted(needed))}; tables: "
                f"{listing}. Choose one in a config data.sources entry with `table:` (plus "
                "`text_field:` or `template:`) or `query:`"
            )
    return [(t, f"SELECT * FROM {_quote_ident(t)}") for t in chosen]


def read_sqlite(
    path: Path, rel: str, src: SourceConfig, name: str
) -> Iterator[Document | Malformed]:
    con = _connect(path)
    try:
        for table, sql in _plan(con, path, src):
            try:
                cursor = con.execute(sql)
            except sqlite3.Error as exc:
                raise InputDataError(f"{path}: query {sql!r} failed: {exc}") from None
            columns = [d[0] for d in cursor.description or ()]
            where = f"{path} ({'table ' + table if table else 'query'})"
            builder = RecordBuilder(src, name, where=where, rel_path=rel, columns=columns)
            for row_no, row in enumerate(cursor, start=1):
                lineage = {"source": name, "reader": "sqlite", "file": str(path)}
                if table is not None:
                    lineage["table"] = table
                lineage["row"] = row_no
                yield builder.build(dict(zip(columns, row, strict=True)), lineage)
    finally:
        con.close()
