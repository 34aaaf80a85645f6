"""Generated originals are kept apart: no two are near-duplicates the ground truth misses."""

from __future__ import annotations

import random

import numpy as np

from lmforge.config import CorpusConfig
from lmforge.data.minhash import MinHasher, MinHashParams, band_keys, find_clusters
from lmforge.data.shingles import shingle_strings
from lmforge.demo.distinct import LIMIT, LatestByKey, NearTwinGuard
from lmforge.demo.planner import DocumentPlanner


def _jaccard(a: str, b: str) -> float:
    x, y = set(shingle_strings(a, 3, 0)), set(shingle_strings(b, 3, 0))
    return len(x & y) / len(x | y)


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(n)]


def test_latest_by_key_grows_and_keeps_the_last_value():
    index = LatestByKey(capacity=4)
    rng = random.Random(1)
    keys = list({rng.randrange(0, 2**64) for _ in range(3000)})
    for value, key in enumerate(keys):
        index.put(key, value)
    index.put(keys[0], -7)
    assert len(index) == len(keys)
    assert index.get(keys[0]) == -7
    assert all(index.get(k) == v for v, k in enumerate(keys) if v)
    assert index.get(12345) is None or 12345 in keys


def test_guard_refuses_twins_and_admits_texts_that_only_share_a_topic():
    rng = random.Random(0)
    guard = NearTwinGuard()
    base = " ".join(_words(rng, 30))
    assert guard.admit(base)
    words = base.split()
    twin = " ".join(words[:28] + _words(rng, 2))  # two of thirty words changed
    assert _jaccard(base, twin) >= LIMIT
    assert not guard.admit(twin)
    cousin = " ".join(words[:12] + _words(rng, 18))
    assert _jaccard(base, cousin) < LIMIT
    assert guard.admit(cousin)
    assert guard.admitted == 2  # the refused twin is not remembered


def test_guard_catches_nearly_every_twin_among_many_texts():
    rng = random.Random(2)
    guard = NearTwinGuard()
    bases = [" ".join(_words(rng, 20)) for _ in range(2000)]
    assert all(guard.admit(b) for b in bases)
    refused = 0
    for b in bases[:300]:
        words = b.split()
        i = rng.randrange(len(words))
        words[i] = _words(rng, 1)[0]  # Jaccard about 0.85
        refused += not guard.admit(" ".join(words))
    assert refused >= 297


def test_generated_originals_have_almost_no_near_twin():
    # 8000 originals drawn without the guard hold ~150 twins at Jaccard >= 0.65.
    planner = DocumentPlanner(CorpusConfig(docs=8000, noise_rate=0.0, seed=4))
    texts = [planner.build(i).text for i in range(8000)]
    # The cleaning line's own engine, verifying candidates exactly, finds pairs >= 0.65.
    hasher = MinHasher(MinHashParams(num_perm=120, bands=40, char_ngram=3, word_ngram=0))
    signatures, sets = hasher.sketch(texts)
    labels = find_clusters(band_keys(signatures, 40), None, 0.65, shingles=sets)
    twins = np.flatnonzero(labels != np.arange(len(texts)))
    pairs = [(texts[i], texts[labels[i]]) for i in twins]
    assert all(_jaccard(a, b) >= 0.65 for a, b in pairs)  # the engine's pairs are real
    assert len(pairs) <= 8, pairs[:5]
