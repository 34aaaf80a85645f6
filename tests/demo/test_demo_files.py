"""The corpus files: shapes, ids, ground truth, corpus.json, sources, determinism, sharding."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from lmforge.config import CorpusConfig
from lmforge.demo import corpus_sources, generate_corpus
from lmforge.demo import writers as demo_writers
from lmforge.errors import ConfigError, InputDataError

GT_KEYS = ["id", "source", "lang", "label", "noise", "markers", "dup_group"]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_every_document_has_exactly_one_ground_truth_line(noisy_corpus):
    ids = noisy_corpus.doc_order
    assert len(ids) == len(set(ids)) == 2000, "document ids must be unique across sources"
    truth_ids = [t["id"] for t in noisy_corpus.truth]
    assert len(truth_ids) == len(set(truth_ids))
    assert set(truth_ids) == set(ids)
    for t in noisy_corpus.truth:
        assert list(t) == GT_KEYS
        doc = noisy_corpus.docs[t["id"]]
        assert t["source"] == doc.source
        assert t["label"] == doc.label
        assert t["lang"] in ("zh", "en", "other")


def test_corpus_json_counts_match_the_files(noisy_corpus):
    meta, truth = noisy_corpus.meta, noisy_corpus.truth
    assert meta["labels"] == ["negative", "neutral", "positive"]
    assert meta["docs"] == len(truth)
    assert meta["params"] == {"docs": 2000, "noise_rate": 0.37, "seed": 0, "zh_share": 0.5}
    assert meta["counts"]["source"] == dict(Counter(d.source for d in noisy_corpus.docs.values()))
    assert meta["counts"]["label"] == dict(Counter(t["label"] for t in truth))
    assert sum(meta["counts"]["lang"].values()) == len(truth)
    kinds = Counter(k for t in truth for k in t["noise"])
    assert {k: v for k, v in meta["counts"]["noise"].items() if v} == dict(kinds)
    assert meta["noisy_docs"] == sum(1 for t in truth if t["noise"])


def test_documents_are_spread_over_all_sources(noisy_corpus):
    shares = {k: v / 2000 for k, v in noisy_corpus.meta["counts"]["source"].items()}
    assert shares["posts"] > shares["web"] > shares["records_csv"] > shares["records_sql"] > 0.1


def test_posts_hold_a_few_malformed_lines_that_are_not_documents(noisy_corpus):
    malformed = noisy_corpus.malformed
    assert len(malformed) == noisy_corpus.meta["malformed_lines"] >= 1
    # Any line reader sees the same lines (no U+0085 or U+2028 left unescaped in the JSON).
    text = (noisy_corpus.root / "posts.jsonl").read_text(encoding="utf-8")
    assert len(text.splitlines()) == text.count("\n")
    truth_ids = {t["id"] for t in noisy_corpus.truth}
    for line in malformed:
        assert line.startswith("{")
        assert not any(f'"{i}"' in line for i in truth_ids)


def test_sources_describe_how_to_read_the_corpus(noisy_corpus):
    entries = noisy_corpus.meta["sources"]
    assert [(e["name"], e["kind"], e["path"]) for e in entries] == [
        ("web", "html", "web"),
        ("posts", "jsonl", "posts.jsonl"),
        ("records_csv", "csv", "records.csv"),
        ("records_sql", "sqlite", "records.sqlite"),
    ]
    sources = corpus_sources(noisy_corpus.root)
    assert all(Path(s.path).is_absolute() and Path(s.path).exists() for s in sources)
    sql = sources[3]
    assert sql.table == "tickets" and "{comment}" in sql.template
    # The template renders from the record's own columns.
    doc = next(d for d in noisy_corpus.docs.values() if d.source == "records_csv")
    assert doc.text in doc.rendered and doc.rendered != doc.text


def test_corpus_sources_names_the_fix_when_the_corpus_is_missing(tmp_path):
    with pytest.raises(InputDataError, match="generate the corpus"):
        corpus_sources(tmp_path)


def test_bad_parameters_raise_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="noise_rate"):
        generate_corpus(tmp_path, {"docs": 100, "noise_rate": 2.0})


def test_generation_is_byte_identical_for_the_same_parameters(tmp_path):
    cfg = CorpusConfig(docs=600, noise_rate=0.37, seed=7, zh_share=0.4)
    first = generate_corpus(tmp_path / "a", cfg)
    second = generate_corpus(tmp_path / "b", cfg)
    assert first == second
    digest_a, digest_b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert len(digest_a) > 100 and digest_a == digest_b
    other = generate_corpus(tmp_path / "c", cfg.model_copy(update={"seed": 8}))
    assert other["counts"] != first["counts"] or _digest(tmp_path / "c") != digest_a


def test_pages_are_sharded_and_regeneration_leaves_no_stale_file(
    tmp_path, monkeypatch, corpus_reader
):
    monkeypatch.setattr(demo_writers, "SHARD_SIZE", 50)
    generate_corpus(tmp_path, CorpusConfig(docs=1200, seed=3))
    shards = sorted(p for p in (tmp_path / "web").iterdir())
    assert len(shards) > 3
    assert all(len(list(s.iterdir())) <= 50 for s in shards)
    # A smaller corpus with another seed into the same folder: only its own pages remain.
    generate_corpus(tmp_path, CorpusConfig(docs=300, seed=4))
    corpus = corpus_reader(tmp_path)
    pages = {p.stem for p in (tmp_path / "web").rglob("*") if p.is_file()}
    assert pages == {t["id"] for t in corpus.truth if t["source"] == "web"}
    assert set(corpus.doc_order) == {t["id"] for t in corpus.truth}


def test_progress_reports_documents_done(tmp_path):
    seen: list[int] = []
    generate_corpus(tmp_path, CorpusConfig(docs=2500), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 2500


def test_corpus_json_is_plain_json(noisy_corpus):
    text = (noisy_corpus.root / "corpus.json").read_text(encoding="utf-8")
    assert json.loads(text) == noisy_corpus.meta
