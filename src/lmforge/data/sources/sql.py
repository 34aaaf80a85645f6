"""SQL databases through SQLAlchemy: a table, a query, or every table with the text column.

`SqlSource.check()` connects once when the source is set up, so a bad URL, a missing
driver, an unreachable server or a missing table is one clear error before any data is
read. The URL shown in errors and in lineage never includes the password.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources.records import RecordBuilder, template_fields
from lmforge.errors import InputDataError

FETCH_ROWS = 1000  # rows per fetchmany: the most a streamed result holds in memory at once

# Python module a dialect imports -> what to pip install to get it.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "mysql": "mysql-connector-python",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
    "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
}


def display_url(url: str) -> str:
    """The URL with its password replaced by ***, also when SQLAlchemy cannot parse it."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class SqlSource:
    """One database URL of a data.sources entry, with the tables or query to read."""

    def __init__(self, src: SourceConfig) -> None:
        self.src = src
        self.raw_url = src.url or ""
        self.url = display_url(self.raw_url)
        self.plan: list[tuple[str, sa.Executable]] = []  # (lineage table, statement)

    def check(self) -> None:
        """Connect and decide what to read; any problem is one InputDataError."""
        engine = self._engine()
        try:
            with engine.connect() as conn:
                self.plan = self._plan(conn)
        except SQLAlchemyError as exc:
            raise InputDataError(f"cannot read database {self.url}: {self._problem(exc)}") from None
        finally:
            engine.dispose()

    def read(self, name: str) -> Iterator[Document | Malformed]:
        """Rows in statement order, fetched FETCH_ROWS at a time from a streamed result."""
        if not self.plan:
            self.check()
        engine = self._engine()
        try:
            with engine.connect() as conn:
                streamed = conn.execution_options(stream_results=True, max_row_buffer=FETCH_ROWS)
                for table, statement in self.plan:
                    yield from self._read_one(streamed, table, statement, name)
        finally:
            engine.dispose()

    def _read_one(
        self, conn: Connection, table: str, statement: sa.Executable, name: str
    ) -> Iterator[Document | Malformed]:
        what = "the query" if table == "query" else f"table {table!r}"
        try:
            result = conn.execute(statement)
            columns = list(result.keys())
        except SQLAlchemyError as exc:
            raise InputDataError(
                f"{self.url}: reading {what} failed: {self._problem(exc)}; fix `query`/`table` "
                "in this data.sources entry"
            ) from None
        builder = RecordBuilder(
            self.src, name, where=f"{self.url} ({what})", rel_path="", columns=columns
        )
        row_no = 0
        with result:
            while True:
                try:
                    rows = result.fetchmany(FETCH_ROWS)
                except SQLAlchemyError as exc:
                    raise InputDataError(
                        f"{self.url}: reading {what} stopped after {row_no} rows: "
                        f"{self._problem(exc)}"
                    ) from None
                if not rows:
                    return
                for row in rows:
                    row_no += 1
                    lineage = {
                        "source": name,
                        "reader": "sql",
                        "file": self.url,
                        "table": table,
                        "row": row_no,
                    }
                    yield builder.build(dict(zip(columns, row, strict=True)), lineage)

    def _engine(self) -> Engine:
        try:
            url = make_url(self.raw_url)
        except (ArgumentError, ValueError):
            raise InputDataError(
                f"{self.url} is not a database URL; write it as "
                "dialect+driver://user:password@host:port/database (e.g. sqlite:///data.db)"
            ) from None
        _check_sqlite_file(url, self.url)
        try:
            # No pool: the reader opens one connection and closes it when done.
            return sa.create_engine(url, poolclass=sa.pool.NullPool)
        except NoSuchModuleError:
            raise InputDataError(
                f"{self.url}: unknown database dialect {url.drivername!r}; use one SQLAlchemy "
                "knows, e.g. postgresql://, mysql+pymysql://, sqlite:///"
            ) from None
        except ImportError as exc:
            module = exc.name or str(exc)
            package = DRIVER_PACKAGES.get(module.split(".")[0], module)
            raise InputDataError(
                f"{self.url}: the database driver {module!r} is not installed; "
                f"pip install '{package}' (or name an installed driver in the URL, "
                f"e.g. {url.get_backend_name()}+<driver>://...)"
            ) from None

    def _plan(self, conn: Connection) -> list[tuple[str, sa.Executable]]:
        src = self.src
        if src.query:
            return [("query", sa.text(src.query))]
        inspector = sa.inspect(conn)
        if src.table:
            schema, _, table = src.table.rpartition(".")
            if not inspector.has_table(table, schema=schema or None):
                listing = ", ".join(_relations(inspector, schema or None)) or "none"
                raise InputDataError(
                    f"{self.url} has no table {src.table!r}; tables: {listing}. Fix `table` in "
                    "this data.sources entry"
                )
            return [(src.table, _select_all(table, schema or None))]
        needed = set(template_fields(src.template)) if src.template else {src.text_field}
        columns = {t: [c["name"] for c in inspector.get_columns(t)] for t in _relations(inspector)}
        chosen = [t for t, cols in columns.items() if needed <= set(cols)]
        if not chosen:
            listing = "; ".join(f"{t} ({', '.join(c)})" for t, c in columns.items()) or "no tables"
            raise InputDataError(
                f"{self.url}: no table has the column(s) {', '.join(sorted(needed))}; tables: "
                f"{listing}. Choose one in this data.sources entry with `table:` (plus "
                "`text_field:` or `template:`) or `query:`"
            )
        return [(t, _select_all(t, None)) for t in chosen]

    def _problem(self, exc: BaseException) -> str:
        """The database's own message, first line only, with the password blanked out."""
        orig = getattr(exc, "orig", None)
        message = str(orig if orig is not None else exc).strip().splitlines()
        text = message[0] if message else type(exc).__name__
        password = _password(self.raw_url)
        return text.replace(password, "***") if password else text


def _relations(inspector: Any, schema: str | None = None) -> list[str]:
    return sorted(set(inspector.get_table_names(schema)) | set(inspector.get_view_names(schema)))


def _select_all(table: str, schema: str | None) -> sa.Executable:
    # sa.table quotes the names the way the dialect needs.
    return sa.select(sa.text("*")).select_from(sa.table(table, schema=schema))


def _password(url: str) -> str | None:
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return None
    return str(password) if password else None


def _check_sqlite_file(url: URL, shown: str) -> None:
    """SQLite creates a missing database file on connect; a typo in the path would then read
    as an empty database instead of an error."""
    if url.get_backend_name() != "sqlite":
        return
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    if not Path(database).is_file():
        raise InputDataError(
            f"{shown}: no database file at {database}; check the path in the URL "
            "(sqlite:///relative/path.db or sqlite:////absolute/path.db)"
        )
