import json

import pyarrow.parquet as pq
import pytest

from lmforge.config import DataConfig, SourceConfig
from lmforge.data.clean import clean_sources, sources_from_paths
from lmforge.errors import InputDataError
from lmforge.text.identifiers import luhn_check_digit

CARD = "622202123456789" + luhn_check_digit("622202123456789")

POSTS = [
    {"id": "p1", "text": "The kettle boils fast and the handle stays cool.", "label": "positive"},
    {"id": "p2", "text": "the kettle boils fast and  the handle stays cool.", "label": "positive"},
    {"id": "p3", "text": "ok", "label": "neutral"},
    {
        "id": "p4",
        "text": f"Refund went to card {CARD}, mail me at a.b@example.com",
        "label": "neutral",
    },
    {"id": "p5", "text": "Der Wasserkocher ist sehr laut und nicht gut.", "label": "negative"},
    {"id": "p6", "text": "电池续航很好，物流也很快，推荐购买。", "label": "positive"},
    {
        "id": "p7",
        "text": "Buy cheap phones at http://spam.example.com now! " * 6,
        "label": "neutral",
    },
]


def write_posts(path, rows, extra_lines=()):
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")


@pytest.fixture
def corpus(tmp_path):
    posts = tmp_path / "in" / "posts.jsonl"
    posts.parent.mkdir()
    write_posts(posts, POSTS, ['{"id": "bad", "text": "trunc'])
    csv_path = tmp_path / "in" / "records.csv"
    csv_path.write_text(
        "id,product,comment,label\n"
        "r1,耳机,音质不错，佩戴也舒服,positive\n"
        "r2,kettle,ok,neutral\n"
        "r3,fan,too,many,fields\n",
        encoding="utf-8",
    )
    sources = [
        SourceConfig(path=str(posts)),
        SourceConfig(path=str(csv_path), template="{product}: {comment}", text_field="comment"),
    ]
    truth = tmp_path / "in" / "truth.jsonl"
    rows = [
        {"id": "p1", "noise": [], "markers": [], "dup_group": "g1"},
        {"id": "p2", "noise": ["exact_duplicate"], "markers": [], "dup_group": "g1"},
        {"id": "p3", "noise": ["too_short"], "markers": [], "dup_group": None},
        {"id": "p4", "noise": ["pii"], "markers": [CARD, "a.b@example.com"], "dup_group": None},
        {"id": "p5", "noise": ["wrong_language"], "markers": [], "dup_group": None},
        {"id": "p6", "noise": [], "markers": [], "dup_group": None},
        {"id": "p7", "noise": ["spam"], "markers": [], "dup_group": None},
        {"id": "r1", "noise": [], "markers": [], "dup_group": None},
        {"id": "r2", "noise": ["too_short"], "markers": [], "dup_group": None},
        {"id": "lost", "noise": [], "markers": [], "dup_group": None},
    ]
    truth.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return sources, truth


def test_clean_sources_writes_shards_stats_and_metrics(tmp_path, corpus):
    sources, truth = corpus
    out = tmp_path / "out"
    stats = clean_sources(sources, out, DataConfig(), ground_truth=truth)

    clean = pq.read_table(out / "clean").to_pylist()
    assert [r["id"] for r in clean] == ["p1", "p4", "p6", "r1"]
    assert clean[1]["text"] == "Refund went to card [BANK_CARD], mail me at [EMAIL]"
    assert [r["lang"] for r in clean] == ["en", "en", "zh", "zh"]
    assert clean[3]["text"] == "耳机: 音质不错,佩戴也舒服"
    meta = json.loads(clean[3]["meta"])
    assert meta["source"] == "records" and meta["row"] == 1 and meta["reader"] == "csv"

    rejected = {r["id"]: r for r in pq.read_table(out / "rejected").to_pylist()}
    assert (rejected["p2"]["step"], rejected["p2"]["reason"]) == ("dedup", "exact_duplicate")
    assert rejected["p3"]["reason"] == "too_short"
    assert rejected["p5"]["reason"] == "lang_other"
    assert rejected["p7"]["step"] == "repetition"
    assert rejected["r2"]["reason"] == "too_short"
    malformed = [r for r in rejected.values() if r["step"] == "read"]
    assert sorted(r["reason"].split(":")[0] for r in malformed) == ["bad JSON", "wrong field count"]
    # rejected rows keep the text as read
    assert rejected["p2"]["text"] == POSTS[1]["text"]

    assert stats["docs_in"] == 11 and stats["docs_out"] == 4 and stats["docs_malformed"] == 2
    assert {k: v for k, v in stats["pii"].items() if v} == {"EMAIL": 1, "BANK_CARD": 1}
    assert set(stats["pii"]) == set(DataConfig().pii.types)
    assert stats["languages"] == {"en": 2, "zh": 2}
    funnel = {f["step"]: f for f in stats["funnel"]}
    assert next(iter(funnel)) == "read" and funnel["read"]["docs_out"] == 9
    assert funnel["dedup"]["dropped"] == {"exact_duplicate": 1}
    assert all(f["docs_in"] - f["docs_out"] == sum(f["dropped"].values()) for f in funnel.values())
    assert stats["sources"]["posts"] == {"records": 8, "documents": 7, "malformed": 1}

    # 6 noisy of 10; nothing noisy kept; "lost" was never read -> 1 of 4 clean docs lost
    assert stats["noise_rate_before"] == 0.6
    assert stats["noise_rate_after"] == 0.0
    assert stats["clean_docs_lost_rate"] == 0.25
    assert stats["clean_docs_lost_by"] == {"not read": 1}
    kinds = stats["noise_kinds"]
    assert kinds["pii"] == {
        "docs": 1,
        "removed": 0,
        "fixed": 1,
        "left": 0,
        "handled_rate": 1.0,
        "removed_by": {},
    }
    assert kinds["too_short"]["removed_by"] == {"length:too_short": 2}
    assert kinds["exact_duplicate"]["removed"] == 1

    assert json.loads((out / "stats.json").read_text()) == stats


def test_noise_left_in_kept_documents_is_measured(tmp_path, corpus):
    sources, truth = corpus
    cfg = DataConfig(
        dedup=False, near_dedup={"enabled": False}, pii="off", languages=["zh", "en", "other"]
    )
    stats = clean_sources(sources, tmp_path / "out", cfg, ground_truth=truth)
    # kept now: p1, p2 (second of group g1), p4 (markers left), p5 (wrong language), p6, r1
    assert stats["docs_out"] == 6
    assert stats["noise_rate_after"] == 0.5
    kinds = stats["noise_kinds"]
    assert kinds["exact_duplicate"]["left"] == 1
    assert kinds["pii"]["left"] == 1
    assert kinds["wrong_language"]["left"] == 1


def test_rerun_with_fewer_documents_leaves_no_stale_shards(tmp_path):
    posts = tmp_path / "posts.jsonl"
    write_posts(
        posts, [{"id": str(i), "text": f"Review number {i} says it works well."} for i in range(7)]
    )
    out = tmp_path / "out"
    clean_sources([SourceConfig(path=str(posts))], out, DataConfig(shard_docs=2))
    assert len(list((out / "clean").glob("part-*.parquet"))) == 4
    write_posts(posts, [{"id": "x", "text": "Only one review is left in this file now."}])
    stats = clean_sources([SourceConfig(path=str(posts))], out, DataConfig(shard_docs=2))
    assert sorted(p.name for p in (out / "clean").iterdir()) == ["part-00000.parquet"]
    assert pq.read_table(out / "clean").num_rows == 1
    # no rejects: still one (empty) rejected shard with the full schema
    rejected = pq.read_table(out / "rejected" / "part-00000.parquet")
    assert rejected.num_rows == 0 and rejected.schema.names[-2:] == ["step", "reason"]
    assert stats["shards"] == {"clean": 1, "rejected": 1}


def test_a_source_with_no_documents_is_an_error(tmp_path):
    good = tmp_path / "good.jsonl"
    write_posts(good, [{"id": "1", "text": "A perfectly fine review text."}])
    empty = tmp_path / "empty.jsonl"
    write_posts(empty, [], ['{"broken'])
    with pytest.raises(InputDataError, match=r"no documents in .*empty.jsonl \(1 malformed"):
        clean_sources(
            [SourceConfig(path=str(good)), SourceConfig(path=str(empty))],
            tmp_path / "out",
            DataConfig(),
        )


def test_sources_from_paths(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    sources = sources_from_paths([str(tmp_path / "a.jsonl.gz"), str(tmp_path / "folder")])
    assert [s.path for s in sources] == [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "folder")]
    assert all(s.kind == "auto" for s in sources)
    with pytest.raises(InputDataError, match=r"input not found: .*missing\.csv"):
        sources_from_paths([str(tmp_path / "missing.csv")])
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(InputDataError, match=r"data.xlsx.*supported: .*\.csv"):
        sources_from_paths([str(tmp_path / "data.xlsx")])


def test_ground_truth_errors_name_the_file(tmp_path):
    posts = tmp_path / "posts.jsonl"
    write_posts(posts, [{"id": "1", "text": "A perfectly fine review text."}])
    bad = tmp_path / "truth.jsonl"
    bad.write_text('{"noise": []}\n')
    with pytest.raises(InputDataError, match=r"truth.jsonl line 1"):
        clean_sources(
            [SourceConfig(path=str(posts))], tmp_path / "o", DataConfig(), ground_truth=bad
        )
