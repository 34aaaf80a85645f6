"""Parquet reader: fields, template, nested meta, streaming, damaged files."""

import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.config import SourceConfig
from lmforge.data.document import Document, Malformed
from lmforge.data.sources import SourceReader, kind_for
from lmforge.data.sources import parquet as parquet_reader
from lmforge.errors import InputDataError


def read(path, **kw) -> list[Document | Malformed]:
    return list(SourceReader(SourceConfig(path=str(path), **kw)))


FIELDS = dict(
    template="{product}: {comment}",
    text_field="comment",
    id_field="review_id",
    label_field="sentiment",
)


def reviews_table() -> pa.Table:
    return pa.table(
        {
            "review_id": ["a1", None, "a3"],
            "product": ["kettle", "fan", "lamp"],
            "comment": ["boils fast", "too loud", None],
            "sentiment": ["positive", "negative", None],
            "tags": [["kitchen", "sale"], [], None],
            "shop": [{"city": "杭州", "stars": 4}, {"city": "Lyon", "stars": 2}, None],
            "price": pa.array([Decimal("19.90"), Decimal("5.00"), None], pa.decimal128(6, 2)),
            "sold": [dt.date(2024, 1, 2), dt.date(2024, 3, 4), None],
            "row": [7, 8, 9],  # a column named like a lineage key
        }
    )


def test_parquet_rows_become_documents_with_id_label_template_and_json_meta(tmp_path):
    path = tmp_path / "reviews.parquet"
    pq.write_table(reviews_table(), path)
    docs = read(path, **FIELDS)
    assert kind_for(path) == "parquet"
    assert [d.text for d in docs] == ["kettle: boils fast", "fan: too loud", "lamp: "]
    assert [d.content for d in docs] == ["boils fast", "too loud", ""]
    assert [d.label for d in docs] == ["positive", "negative", None]
    assert docs[0].id == "a1" and docs[2].id == "a3"
    assert docs[1].id not in ("", "None") and docs[1].id == read(path, **FIELDS)[1].id
    first = docs[0].meta
    assert {k: first[k] for k in ("source", "reader", "file", "row")} == {
        "source": "reviews",
        "reader": "parquet",
        "file": str(path),
        "row": 1,
    }
    assert first["tags"] == ["kitchen", "sale"] and first["shop"] == {"city": "杭州", "stars": 4}
    assert first["price"] == "19.90" and first["sold"] == "2024-01-02"
    assert first["row_field"] == 7  # the column did not overwrite the lineage
    assert "product" not in first and "review_id" not in first
    json.dumps([d.meta for d in docs])  # meta is plain JSON


def test_parquet_is_streamed_in_batches_across_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_reader, "BATCH_ROWS", 7)
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(100)]}), path, row_group_size=30)
    docs = read(path, max_docs=50)
    assert [d.text for d in docs] == [f"t{i}" for i in range(50)]
    assert [d.meta["row"] for d in docs] == list(range(1, 51))


def test_parquet_text_field_missing_names_the_columns(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(InputDataError, match=r"no text field 'text'; available columns: body"):
        read(path)
    assert read(path, text_field="body")[0].text == "x"


def test_non_string_text_is_malformed_and_numbers_are_text(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"text": [["a", "list"], ["b"]], "n": [1, 2]}), path)
    records = read(path)
    assert [r.reason for r in records] == ["text field is not a string"] * 2
    assert read(path, text_field="n")[0].text == "1"


def test_damaged_parquet_in_a_folder_is_one_malformed_record(tmp_path):
    good = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["fine"]}), good)
    data = good.read_bytes()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) // 2])
    doc, bad = read(tmp_path)
    assert doc.text == "fine"
    assert isinstance(bad, Malformed) and bad.reason.startswith("corrupt or truncated file")
    assert bad.meta["file"] == str(tmp_path / "b.parquet")
