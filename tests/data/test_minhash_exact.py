"""Exact verification of near-duplicate candidates with shingle sets (find_clusters shingles=)."""

import random

import numpy as np
import pytest

from lmforge.data.minhash import MinHasher, MinHashParams, band_keys, find_clusters
from lmforge.data.shingles import shingle_strings
from lmforge.demo.bank_en import DOMAINS as EN_DOMAINS
from lmforge.errors import InputDataError

_PHRASES = [p for d in EN_DOMAINS for p in d.pos_facts + d.neg_facts]
VOCAB = sorted({w.lower().strip(".,!?") for p in _PHRASES for w in p.split()})
ZH = (
    "上个月买的蓝牙耳机充一次电能用两天连上手机只要几秒钟"
    "地铁里通话对方也听得清清楚楚戴一整天耳朵也不疼"
)


def _edit(words: list[str], count: int, rng: random.Random) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), count):
        out[i] = rng.choice(VOCAB)
    return out


def _jaccard(a: str, b: str, params: MinHashParams) -> float:
    sa = set(shingle_strings(a, params.char_ngram, params.word_ngram))
    sb = set(shingle_strings(b, params.char_ngram, params.word_ngram))
    return len(sa & sb) / len(sa | sb)


@pytest.mark.parametrize("word_ngram", [3, 0])
def test_exact_check_decides_at_the_threshold(word_ngram):
    params = MinHashParams(word_ngram=word_ngram)
    hasher = MinHasher(params)
    rng = random.Random(word_ngram)
    base = [rng.choice(VOCAB) for _ in range(80)]
    pairs = [(" ".join(base), " ".join(_edit(base, k, rng))) for k in (1, 3, 6, 12)]
    pairs.append((ZH, ZH.replace("蓝牙", "降噪").replace("地铁", "公交")))
    keys = np.zeros((2, 1), dtype=np.uint64)  # one run: the pair is a candidate
    for a, b in pairs:
        j = _jaccard(a, b, params)
        assert 0.3 < j < 1
        sets = hasher.shingle_sets([a, b])
        assert find_clusters(keys, None, j, shingles=sets).tolist() == [0, 0]
        assert find_clusters(keys, None, j + 1e-3, shingles=sets).tolist() == [0, 1]


def test_sketch_gives_the_signatures_and_the_reference_shingle_sets():
    hasher = MinHasher(MinHashParams())
    filler = [f"filler text number {i} with a few more words" for i in range(2100)]
    texts = [*filler, "one two three two three four", ZH, "", "ok"]
    sig, sets = hasher.sketch(texts)
    assert np.array_equal(sig, hasher.signatures(texts))
    alone = hasher.shingle_sets(texts)
    assert np.array_equal(sets.fingerprints, alone.fingerprints)
    assert np.array_equal(sets.offsets, alone.offsets)
    assert len(sets) == len(texts)
    sizes = np.diff(sets.offsets)
    assert sizes.tolist() == [len(set(shingle_strings(t, 5, 3))) for t in texts]
    for i in (0, 2100, 2101):  # sorted and distinct within each text
        own = sets.fingerprints[sets.offsets[i] : sets.offsets[i + 1]]
        assert np.all(own[1:] > own[:-1])


def _chained_corpus(seed: int) -> list[str]:
    # bases of 120 words; each copy edits 2-3 words of the previous one, so a copy of a copy of
    # a copy drifts below Jaccard 0.8 with its base while each step stays above it
    rng = random.Random(seed)
    texts = []
    for _ in range(40):
        words = [rng.choice(VOCAB) for _ in range(120)]
        texts.append(" ".join(words))
        for _ in range(rng.randint(0, 4)):
            words = _edit(words, rng.randint(2, 3), rng)
            texts.append(" ".join(words))
    rng.shuffle(texts)
    return texts


def test_exact_survivor_removals_are_true_near_duplicates_and_pairs_are_found():
    params = MinHashParams(num_perm=64, bands=16, threshold=0.8)
    texts = _chained_corpus(seed=5)
    sig, sets = MinHasher(params).sketch(texts)
    keys = band_keys(sig, params.bands)
    n = len(texts)
    sh = [set(shingle_strings(t, 5, 3)) for t in texts]

    def is_true(a: int, b: int) -> bool:
        return 5 * len(sh[a] & sh[b]) >= 4 * len(sh[a] | sh[b])

    truth = [(a, b) for a in range(n) for b in range(a + 1, n) if is_true(a, b)]
    assert len(truth) > 50
    for link, all_justified in (("component", False), ("survivor", True)):
        labels = find_clusters(keys, sig, 0.8, link=link, shingles=sets)
        removed = np.flatnonzero(labels != np.arange(n))
        justified = [is_true(int(i), int(labels[i])) for i in removed]
        assert all(justified) is all_justified  # chains make the component link overreach
        broken = sum(labels[a] != a or labels[b] != b for a, b in truth)
        assert broken >= 0.95 * len(truth)


def test_exact_verification_needs_no_signatures_but_matching_sets():
    hasher = MinHasher(MinHashParams())
    rng = random.Random(1)
    base = " ".join(rng.choice(VOCAB) for _ in range(60))
    texts = [base, base + " again", "something else entirely different here"]
    keys = np.zeros((3, 1), dtype=np.uint64)
    sets = hasher.shingle_sets(texts)
    assert find_clusters(keys, None, 0.8, link="survivor", shingles=sets).tolist() == [0, 0, 2]
    with pytest.raises(InputDataError, match="shingles \\(2\\) do not match 3 band keys"):
        find_clusters(keys, None, 0.8, shingles=hasher.shingle_sets(texts[:2]))
