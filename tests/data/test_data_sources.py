import csv
import gzip
import json
import sqlite3

import pytest

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources import SourceReader
from lmforge.errors import InputDataError


def read(path, **kw) -> list[Document | Malformed]:
    return list(SourceReader(SourceConfig(path=str(path), **kw)))


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            fh.write("\n")


def test_jsonl_keeps_ids_labels_and_extra_fields_with_byte_offsets(tmp_path):
    path = tmp_path / "posts.jsonl"
    write_jsonl(
        path, [{"id": "a", "text": "电池很好", "label": "positive", "user": "u1"}, {"text": "x"}]
    )
    first, second = read(path)
    assert (first.id, first.text, first.label, first.source) == (
        "a",
        "电池很好",
        "positive",
        "posts",
    )
    assert first.meta == {
        "source": "posts",
        "reader": "jsonl",
        "file": str(path),
        "offset": 0,
        "user": "u1",
    }
    assert second.meta["offset"] == len(path.read_bytes().splitlines(keepends=True)[0])
    assert second.label is None


def test_records_without_id_get_a_stable_id_that_differs_by_position(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"text": "one"}, {"text": "one"}])
    ids = [d.id for d in read(path)]
    assert ids == [d.id for d in read(path)]  # deterministic across runs
    assert ids[0] != ids[1]


def test_jsonl_malformed_lines_are_reported_and_reading_goes_on(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(
        path, ['{"id": "a", "text": "fine"}', '{"id": "b", "te', "[1, 2]", '{"id": "c"}', ""]
    )
    records = read(path)
    assert [type(r).__name__ for r in records] == [
        "Document",
        "Malformed",
        "Malformed",
        "Malformed",
    ]
    reasons = [r.reason for r in records[1:]]
    assert reasons[0].startswith("bad JSON")
    assert reasons[1] == "line is not a JSON object"
    assert reasons[2] == "no text field"
    assert records[1].raw == '{"id": "b", "te'


def test_gzipped_jsonl_reads_like_plain(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    write_jsonl(path, [{"id": "a", "text": "hello there"}], opener=gzip.open)
    (doc,) = read(path)
    assert doc.text == "hello there" and doc.source == "p"


def test_truncated_gzip_is_malformed_not_a_crash(tmp_path):
    good = tmp_path / "good.jsonl.gz"
    write_jsonl(good, [{"id": str(i), "text": "some text " * 50} for i in range(200)], gzip.open)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    records = read(bad)
    assert isinstance(records[-1], Malformed)
    assert "corrupt or truncated" in records[-1].reason
    assert all(isinstance(r, Document) for r in records[:-1])


def test_template_renders_fields_and_keeps_the_others_in_meta(tmp_path):
    path = tmp_path / "records.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "product", "channel", "region", "comment", "label"])
        w.writerow(["r1", "耳机", "APP", "华东", "音质不错", "positive"])
    (doc,) = read(path, template="{product}, {channel}: {comment}", text_field="comment")
    assert doc.text == "耳机, APP: 音质不错"
    assert doc.content == "音质不错"  # what quality filters judge
    assert doc.meta["region"] == "华东" and "product" not in doc.meta
    assert doc.meta["row"] == 1 and doc.label == "positive"


def test_bad_template_field_names_the_field_and_the_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("id,product,comment\n1,a,b\n", encoding="utf-8")
    with pytest.raises(InputDataError, match=r"'prodct'.*available columns: id, product, comment"):
        read(path, template="{prodct}: {comment}")


def test_csv_without_text_column_explains_how_to_choose(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("id,review\n1,good\n", encoding="utf-8")
    with pytest.raises(InputDataError, match=r"no text field 'text'.*id, review.*text_field"):
        read(path)
    assert read(path, text_field="review")[0].text == "good"


def test_csv_rows_with_wrong_field_count_are_malformed(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('id,text\n1,"quoted, with comma"\n2,a,extra\n3\n4,ok\n', encoding="utf-8")
    records = read(path)
    assert [getattr(r, "text", None) for r in records] == ["quoted, with comma", None, None, "ok"]
    assert records[1].reason == "wrong field count: 3 fields, header has 2"
    assert records[1].raw == "2,a,extra" and records[1].meta["row"] == 2


def test_tsv_treats_quotes_as_text(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text('label\ttext\n1\t" the movie " is fine\n0\tnext line\n', encoding="utf-8")
    records = read(path)
    assert [r.text for r in records] == ['" the movie " is fine', "next line"]


def make_db(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE tickets (id TEXT, product TEXT, comment TEXT, label TEXT)")
    con.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.executemany(
        "INSERT INTO tickets VALUES (?, ?, ?, ?)",
        [("t1", "kettle", "boils fast", "positive"), ("t2", "fan", None, "negative")],
    )
    con.executemany("INSERT INTO notes VALUES (?, ?)", [(7, "first note"), (8, "second note")])
    con.commit()
    con.close()


def test_sqlite_reads_every_table_with_a_text_column(tmp_path):
    db = tmp_path / "data.sqlite"
    make_db(db)
    docs = read(db)
    assert [(d.id, d.text, d.meta["table"], d.meta["row"]) for d in docs] == [
        ("7", "first note", "notes", 1),
        ("8", "second note", "notes", 2),
    ]


def test_sqlite_table_with_template_and_null_text(tmp_path):
    db = tmp_path / "data.db"
    make_db(db)
    docs = read(db, table="tickets", template="{product}: {comment}", text_field="comment")
    assert [d.text for d in docs] == ["kettle: boils fast", "fan: "]
    assert docs[1].content == ""


def test_sqlite_query(tmp_path):
    db = tmp_path / "data.db"
    make_db(db)
    docs = read(db, query="SELECT id, comment AS text FROM tickets WHERE comment IS NOT NULL")
    assert [(d.id, d.text) for d in docs] == [("t1", "boils fast")]
    assert "table" not in docs[0].meta


def test_sqlite_without_a_text_table_names_the_tables(tmp_path):
    db = tmp_path / "data.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(InputDataError, match=r"users \(id, name\).*table:.*query:"):
        read(db)
    with pytest.raises(InputDataError, match="no table 'nope'"):
        read(db, table="nope")


def test_not_a_sqlite_file_is_a_clear_error(tmp_path):
    db = tmp_path / "x.db"
    db.write_text("not a database at all, just text " * 20)
    with pytest.raises(InputDataError, match="not a readable SQLite database"):
        read(db)


PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<meta name="id" content="page-7"><meta name="label" content="negative">
<title>Kettle review | Shop</title><script>var x = "<p>not text</p>";</script></head>
<body><div class="cookie-banner">We use cookies. <button>Accept</button></div>
<header><nav><a href="/">Home</a> | <a href="/c">Kitchen</a></nav></header>
<main><h1>Kettle review</h1><div class="byline">anna 2024-01-01</div>
<article><p>The lid broke after a week &amp; the handle gets hot.</p><p>Not worth it.</p></article>
<div class="share-buttons"><a>Share</a></div></main>
<footer>© 2024 Shop. All rights reserved.</footer></body></html>"""


def test_html_page_keeps_article_text_and_meta_id_label(tmp_path):
    page = tmp_path / "site" / "a" / "p.html"
    page.parent.mkdir(parents=True)
    page.write_text(PAGE, encoding="utf-8")
    (doc,) = read(tmp_path / "site")
    assert doc.id == "page-7" and doc.label == "negative" and doc.source == "site"
    assert doc.text == "The lid broke after a week & the handle gets hot.\nNot worth it."
    assert doc.meta["title"] == "Kettle review | Shop"
    assert doc.raw_text == PAGE  # rejected shards show the markup


def test_html_custom_meta_fields(tmp_path):
    page = tmp_path / "p.htm"
    page.write_text(
        '<meta name="doc-id" content="X1"><meta name="sentiment" content="pos"><p>Body text</p>'
    )
    (doc,) = read(page, id_field="doc-id", label_field="sentiment")
    assert (doc.id, doc.label, doc.text) == ("X1", "pos", "Body text")


def test_folder_dispatches_per_extension_and_reports_skipped_files(tmp_path):
    (tmp_path / "b.txt").write_text("plain text file", encoding="utf-8")
    write_jsonl(tmp_path / "a.jsonl", [{"id": "j", "text": "from jsonl"}])
    (tmp_path / "notes.md").write_text("# skipped")
    (tmp_path / ".hidden.txt").write_text("hidden")
    reader = SourceReader(SourceConfig(path=str(tmp_path)))
    docs = list(reader)
    assert [d.text for d in docs] == ["from jsonl", "plain text file"]
    assert reader.skipped == [str(tmp_path / "notes.md")]
    assert docs[1].meta["reader"] == "text"


def test_missing_path_and_unknown_extension_are_errors(tmp_path):
    with pytest.raises(InputDataError, match="input not found"):
        SourceReader(SourceConfig(path=str(tmp_path / "nope.jsonl")))
    odd = tmp_path / "data.xyz"
    odd.write_text("x")
    with pytest.raises(InputDataError, match="cannot tell how to read"):
        SourceReader(SourceConfig(path=str(odd)))
    (doc,) = read(odd, kind="text")
    assert doc.text == "x"
