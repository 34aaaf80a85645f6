"""The cleaning line's near-duplicate step removes a document only at the configured Jaccard."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq

from lmforge.config import DataConfig, SourceConfig
from lmforge.data.clean import clean_sources
from lmforge.data.shingles import shingle_strings
from lmforge.demo.reviews import compose_review

THRESHOLD = 0.65


def _jaccard(a: str, b: str) -> float:
    x, y = set(shingle_strings(a, 3, 0)), set(shingle_strings(b, 3, 0))
    return len(x & y) / len(x | y)


def _pairs(count: int) -> list[tuple[str, str]]:
    """Originals of several English reviews each, with a copy that has some words swapped
    for words of an unrelated review: Jaccard spread over about 0.3-0.95."""
    rng = random.Random(5)

    def review() -> str:
        return " ".join(
            compose_review(rng, "en", rng.choice(["positive", "negative"])).text for _ in range(3)
        )

    pairs = []
    while len(pairs) < count:
        original, other = review(), review().split()
        copy = original.split()
        for i in rng.sample(range(len(copy)), rng.randrange(1, len(copy) // 3)):
            copy[i] = rng.choice(other)
        pairs.append((original, " ".join(copy)))
    return pairs


def _run(tmp_path, verify: str) -> tuple[set[str], dict[str, str]]:
    pairs = _pairs(120)
    path = tmp_path / "posts.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for side in (0, 1):  # every original is read before any copy
            for n, pair in enumerate(pairs):
                fh.write(json.dumps({"id": f"{'ab'[side]}{n}", "text": pair[side]}) + "\n")
    cfg = DataConfig(
        anomaly={"enabled": False},
        noise_model={"enabled": False},
        near_dedup={"verify": verify, "threshold": THRESHOLD},
        workers=1,
    )
    out = tmp_path / verify
    clean_sources([SourceConfig(name="posts", path=str(path))], out, cfg)
    removed: dict[str, str] = {}
    for shard in sorted((out / "rejected").glob("part-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            assert row["step"] == "near_dedup", row  # nothing else may drop these reviews
            removed[row["id"]] = json.loads(row["meta"])["duplicate_of"]
    expected = {f"b{n}" for n, (a, b) in enumerate(pairs) if _jaccard(a, b) >= THRESHOLD}
    return expected, removed


def test_exact_verification_removes_exactly_the_pairs_at_the_threshold(tmp_path):
    expected, removed = _run(tmp_path, "exact")
    assert 20 <= len(expected) <= 100  # the corpus spans both sides of the threshold
    assert set(removed) == expected
    assert all(removed[f"b{n[1:]}"] == f"a{n[1:]}" for n in removed)


def test_estimate_verification_is_the_lighter_option(tmp_path):
    expected, removed = _run(tmp_path, "estimate")
    agree = len(expected & set(removed))
    assert agree >= 0.8 * len(expected)  # close, but signature noise decides near the line
