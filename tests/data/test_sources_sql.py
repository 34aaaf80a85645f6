"""SQL sources through SQLAlchemy URLs (exercised on SQLite files)."""

import sqlite3

import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources import SourceReader
from lmforge.data.sources import sql as sql_reader
from lmforge.errors import ConfigError, InputDataError


def make_db(path) -> str:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE reviews (id TEXT, product TEXT, comment TEXT, label TEXT, n REAL)")
    con.execute('CREATE TABLE "odd name" (text TEXT)')
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.executemany(
        "INSERT INTO reviews VALUES (?, ?, ?, ?, ?)",
        [
            ("r1", "kettle", "boils fast", "positive", 1.5),
            ("r2", "fan", "too loud", "negative", 2.0),
            (None, "lamp", "bright", None, None),
        ],
    )
    con.execute("""INSERT INTO "odd name" VALUES ('from a quoted table')""")
    con.commit()
    con.close()
    return f"sqlite:///{path}"


def read(**kw) -> list[Document | Malformed]:
    return list(SourceReader(SourceConfig(**kw)))


def test_query_through_a_url_with_lineage(tmp_path):
    url = make_db(tmp_path / "shop.db")
    docs = read(url=url, query="SELECT id, comment AS text, label, n FROM reviews ORDER BY id")
    assert [d.text for d in docs] == ["bright", "boils fast", "too loud"]  # NULL sorts first
    assert docs[1].id == "r1" and docs[1].label == "positive"
    assert docs[1].meta == {
        "source": "sql",
        "reader": "sql",
        "file": url,
        "table": "query",
        "row": 2,
        "n": 1.5,
    }
    # a row without id gets a stable derived id
    again = read(url=url, query="SELECT id, comment AS text, label, n FROM reviews ORDER BY id")
    assert docs[0].id == again[0].id and docs[0].id not in ("", "None")


def test_table_with_template_and_default_name(tmp_path):
    url = make_db(tmp_path / "shop.db")
    src = SourceConfig(
        url=url, table="reviews", template="{product}: {comment}", text_field="comment"
    )
    reader = SourceReader(src)
    docs = list(reader)
    assert reader.name == "reviews" and reader.location == url
    assert [d.text for d in docs] == ["kettle: boils fast", "fan: too loud", "lamp: bright"]
    assert [(d.meta["table"], d.meta["row"]) for d in docs] == [("reviews", i) for i in (1, 2, 3)]


def test_without_table_or_query_every_table_with_the_text_column_is_read(tmp_path):
    url = make_db(tmp_path / "shop.db")
    (doc,) = read(url=url)
    assert (doc.text, doc.meta["table"]) == ("from a quoted table", "odd name")


def test_rows_are_fetched_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(sql_reader, "FETCH_ROWS", 2)
    path = tmp_path / "big.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (text TEXT)")
    con.executemany("INSERT INTO t VALUES (?)", [(f"row {i}",) for i in range(9)])
    con.commit()
    con.close()
    docs = read(url=f"sqlite:///{path}", table="t")
    assert [d.text for d in docs] == [f"row {i}" for i in range(9)]
    assert docs[-1].meta["row"] == 9


def test_missing_table_is_one_clear_error_when_the_reader_starts(tmp_path):
    url = make_db(tmp_path / "shop.db")
    with pytest.raises(InputDataError, match=r"has no table 'nope'; tables: odd name, reviews"):
        SourceReader(SourceConfig(url=url, table="nope"))
    with pytest.raises(InputDataError, match=r"no table has the column\(s\) body"):
        SourceReader(SourceConfig(url=url, text_field="body"))


def test_bad_query_names_the_url_and_the_database_message(tmp_path):
    url = make_db(tmp_path / "shop.db")
    with pytest.raises(InputDataError, match=r"shop.db: reading the query failed: no such column"):
        read(url=url, query="SELECT nope FROM reviews")


def test_missing_sqlite_file_is_an_error_not_a_new_empty_database(tmp_path):
    missing = tmp_path / "typo.db"
    with pytest.raises(InputDataError, match=r"no database file at .*typo.db"):
        SourceReader(SourceConfig(url=f"sqlite:///{missing}", table="t"))
    assert not missing.exists()


def test_unreachable_postgres_hides_the_password(tmp_path):
    url = "postgresql://u:secret@127.0.0.1:1/db"
    with pytest.raises(InputDataError) as info:
        SourceReader(SourceConfig(url=url, table="reviews"))
    message = str(info.value)
    assert "secret" not in message and "postgresql://u:***@127.0.0.1:1/db" in message
    try:
        import psycopg  # noqa: F401
    except ImportError:
        assert "pip install 'psycopg[binary]'" in message  # which driver to install
    else:
        assert "cannot read database" in message


def test_connection_failure_message_never_shows_the_password(monkeypatch):
    def refuse(*args, **kwargs):
        raise OperationalError("connect", {}, Exception("login failed: password hunter2 wrong"))

    class Engine:
        def connect(self):
            refuse()

        def dispose(self):
            pass

    monkeypatch.setattr(sqlalchemy, "create_engine", lambda *a, **k: Engine())
    with pytest.raises(InputDataError) as info:
        SourceReader(SourceConfig(url="mysql+pymysql://me:hunter2@db.example:3306/shop"))
    message = str(info.value)
    assert message == (
        "cannot read database mysql+pymysql://me:***@db.example:3306/shop: "
        "login failed: password *** wrong"
    )


@pytest.mark.parametrize(
    "url, expected",
    [
        ("not a url", r"not a database URL"),
        ("nodialect://u:pw@h/x", r"nodialect://u:\*\*\*@h/x: unknown database dialect"),
    ],
)
def test_bad_urls_are_clear_errors(url, expected):
    with pytest.raises(InputDataError, match=expected) as info:
        SourceReader(SourceConfig(url=url))
    assert ":pw@" not in str(info.value)


def test_url_with_a_file_kind_is_a_config_error(tmp_path):
    url = make_db(tmp_path / "shop.db")
    with pytest.raises(ConfigError, match="read with kind 'sql'"):
        SourceReader(SourceConfig(url=url, kind="jsonl"))
    with pytest.raises(ConfigError, match="kind 'sql' reads a database `url`"):
        SourceReader(SourceConfig(path=str(tmp_path / "shop.db"), kind="sql"))
