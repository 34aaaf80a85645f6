"""`lmforge data clean` and `lmforge report --stats` from the command line."""

from __future__ import annotations

import json
import sqlite3

import pyarrow.parquet as pq

from lmforge.cli import main

REVIEWS = [
    ("r1", "The kettle boils fast and the handle stays cool, I like it."),
    ("r2", "电池续航很好，物流也很快，推荐购买。客服小王态度也不错。"),
    ("r3", "Call me at +44 20 7946 0958 about the refund, the blender broke."),
    ("r4", "ok"),
]


def _database(tmp_path):
    path = tmp_path / "shop.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE reviews (id TEXT, body TEXT, stars INTEGER)")
    con.executemany("INSERT INTO reviews VALUES (?, ?, ?)", [(i, t, 4) for i, t in REVIEWS])
    con.commit()
    con.close()
    return path


def test_database_url_input_is_cleaned_with_lineage(tmp_path, capsys):
    db = _database(tmp_path)
    out = tmp_path / "out"
    query = "SELECT id, body AS text, stars FROM reviews"
    code = main(
        ["data", "clean", f"sqlite:///{db}", "--query", query, "--out", str(out), "-w", "1"]
    )
    assert code == 0, capsys.readouterr().err
    clean = {r["id"]: r for r in pq.read_table(out / "clean").to_pylist()}
    rejected = {r["id"]: r for r in pq.read_table(out / "rejected").to_pylist()}
    assert set(clean) == {"r1", "r2", "r3"} and rejected["r4"]["reason"] == "too_short"
    assert "+44 20 7946 0958" not in clean["r3"]["text"] and "[PHONE]" in clean["r3"]["text"]
    meta = json.loads(clean["r1"]["meta"])
    assert meta["stars"] == 4 and meta["table"] == "query"
    assert json.loads(clean["r2"]["meta"])["row"] == meta["row"] + 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pii"]["PHONE"] == 1 and stats["executor"]["workers"] == 1


def test_database_url_without_table_or_query_is_a_clear_error(tmp_path, capsys):
    db = _database(tmp_path)
    assert main(["data", "clean", f"sqlite:///{db}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--table" in err


def test_pseudonym_mode_without_key_names_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LMFORGE_PII_KEY", raising=False)
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"id": "1", "text": "mail me at a.b@example.com please"}) + "\n")
    args = [
        "data",
        "clean",
        str(src),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "data.pii.mode=pseudonym",
    ]
    assert main(args) == 2
    assert "LMFORGE_PII_KEY" in capsys.readouterr().err
    monkeypatch.setenv("LMFORGE_PII_KEY", "a-secret-key")
    assert main(args) == 0
    text = pq.read_table(tmp_path / "o" / "clean").column("text").to_pylist()[0]
    assert "a.b@example.com" not in text and "[EMAIL_" in text


def test_report_renders_a_clean_run(tmp_path, capsys):
    db = _database(tmp_path)
    out = tmp_path / "out"
    query = "SELECT id, body AS text FROM reviews"
    assert main(["data", "clean", f"sqlite:///{db}", "--query", query, "--out", str(out)]) == 0
    assert main(["report", "--stats", str(out / "stats.json")]) == 0
    html = (out / "report.html").read_text()
    assert "<svg" in html and "What was removed" in html and "PHONE" in html
    assert main(["report", "--stats", str(tmp_path / "missing.json")]) == 2
