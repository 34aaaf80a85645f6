"""Generated corpora shared by the demo tests, and an independent reader of their files.

The reader parses what is on disk with the standard library only (json, csv, sqlite3, regex
over the HTML), so the tests check the files a user gets, not the generator's objects.
"""

from __future__ import annotations

import csv
import html
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.config import CorpusConfig
from lmforge.demo import generate_corpus

_META = re.compile(r'<meta name="(id|label)" content="([^"]*)">')
_ARTICLE = re.compile(r'<article class="review"[^>]*>\n(.*?)\n</article>', re.S)
_PARA = re.compile(r"<p>(.*?)</p>", re.S)


@dataclass
class ReadDoc:
    id: str
    source: str
    label: str
    text: str  # review text (the comment, for records)
    rendered: str  # what a reader feeds the model: records go through the template
    raw: str  # the bytes on disk that hold this document (page, line, or row)


@dataclass
class ReadCorpus:
    root: Path
    meta: dict
    docs: dict[str, ReadDoc]
    doc_order: list[str]  # ids in file order, duplicates kept, to catch repeated ids
    truth: list[dict]
    malformed: list[str]


def _page(path: Path) -> ReadDoc:
    raw = path.read_text(encoding="utf-8")
    meta = dict(_META.findall(raw))
    match = _ARTICLE.search(raw)
    assert match, f"{path} has no review article"
    text = "\n".join(html.unescape(p) for p in _PARA.findall(match.group(1)))
    return ReadDoc(meta["id"], "web", meta["label"], text, text, raw)


def read_corpus(root: Path) -> ReadCorpus:
    meta = json.loads((root / "corpus.json").read_text(encoding="utf-8"))
    template = next(s["template"] for s in meta["sources"] if s["name"] == "records_csv")
    order: list[str] = []
    docs: dict[str, ReadDoc] = {}

    def add(doc: ReadDoc) -> None:
        order.append(doc.id)
        docs[doc.id] = doc

    for path in sorted((root / "web").rglob("*.html")):
        add(_page(path))
    malformed = []
    for line in (root / "posts.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            malformed.append(line)
            continue
        add(ReadDoc(row["id"], "posts", row["label"], row["text"], row["text"], line))
    with open(root / "records.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            raw = ",".join(row.values())
            rendered = template.format(**row)
            add(ReadDoc(row["id"], "records_csv", row["label"], row["comment"], rendered, raw))
    con = sqlite3.connect(root / "records.sqlite")
    con.row_factory = sqlite3.Row
    for row in con.execute("SELECT * FROM tickets"):
        fields = dict(row)
        rendered = template.format(**fields)
        raw = "\t".join(fields.values())
        add(ReadDoc(fields["id"], "records_sql", fields["label"], fields["comment"], rendered, raw))
    con.close()
    truth = [json.loads(line) for line in (root / "ground_truth.jsonl").open(encoding="utf-8")]
    return ReadCorpus(root, meta, docs, order, truth, malformed)


@pytest.fixture(scope="session")
def noisy_corpus(tmp_path_factory) -> ReadCorpus:
    """2000 documents at the default noise rate, read back from disk."""
    root = tmp_path_factory.mktemp("demo-noisy")
    generate_corpus(root, CorpusConfig(docs=2000, seed=0))
    return read_corpus(root)


@pytest.fixture(scope="session")
def clean_corpus(tmp_path_factory) -> ReadCorpus:
    """3000 documents without planted noise (labels still include annotator flips)."""
    root = tmp_path_factory.mktemp("demo-clean")
    generate_corpus(root, CorpusConfig(docs=3000, noise_rate=0.0, seed=1))
    return read_corpus(root)


@pytest.fixture(scope="session")
def corpus_reader():
    """The reader above, for tests that generate their own corpus."""
    return read_corpus
