"""MinHash LSH clustering: near copies join, unrelated texts stay apart, survivors are stable."""

import random
import time

import numpy as np
import pytest

from lmforge.data.minhash import (
    MinHasher,
    MinHashParams,
    band_keys,
    cluster_sizes,
    find_clusters,
)
from lmforge.data.shingles import canonical_text, shingle_strings
from lmforge.demo.bank_en import DOMAINS as EN_DOMAINS
from lmforge.errors import ConfigError, InputDataError

PARAMS = MinHashParams()
# 80 Chinese characters once punctuation is dropped
ZH_80 = (
    "上个月买的蓝牙耳机，充一次电能用两天，连上手机只要几秒钟。地铁里通话对方也听得清清楚楚，"
    "戴一整天耳朵也不疼。做工精致，按键灵敏，音质饱满通透。唯一的缺点是盒子有点大，放口袋不方便。"
)
ZH_OTHER = (
    "晚上点了份麻辣烫，配送很快，分量足，味道正宗，包装严实干净。骑手态度也好，下次还会再点这家。"
)


def _english_words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = sorted(
        {
            w.lower()
            for d in EN_DOMAINS
            for phrase in d.pos_facts + d.neg_facts
            for w in phrase.split()
        }
    )
    return [rng.choice(vocab) for _ in range(count)]


def _jaccard(a: str, b: str) -> float:
    sa, sb = set(shingle_strings(a, 5, 3)), set(shingle_strings(b, 5, 3))
    return len(sa & sb) / len(sa | sb)


def _cluster(texts: list[str], params: MinHashParams = PARAMS, **kw) -> np.ndarray:
    sig = MinHasher(params).signatures(texts)
    return find_clusters(band_keys(sig, params.bands), sig, params.threshold, **kw)


def test_one_changed_word_in_sixty_joins_the_original_and_unrelated_texts_stay_apart():
    words = _english_words(60, seed=3)
    edited = list(words)
    edited[30] = "zeppelin"
    texts = [
        " ".join(words),
        " ".join(_english_words(60, seed=4)),
        " ".join(edited),
        " ".join(_english_words(60, seed=5)),
    ]
    assert _jaccard(texts[0], texts[2]) > 0.85
    labels = _cluster(texts)
    assert labels.tolist() == [0, 1, 0, 3]


def test_chinese_near_copies_with_two_changed_characters_are_clustered():
    assert len(canonical_text(ZH_80).replace(" ", "")) == 80
    swaps = [
        ("蓝牙", "降噪"),
        ("手机", "电脑"),
        ("地铁", "公交"),
        ("精致", "扎实"),
        ("饱满", "细腻"),
    ]
    copies = [ZH_80.replace(old, new, 1) for old, new in swaps]
    for copy in copies:
        assert sum(a != b for a, b in zip(ZH_80, copy, strict=True)) == 2
        assert _jaccard(ZH_80, copy) == pytest.approx(70 / 82)  # 6 of 76 shingles replaced
    labels = _cluster([ZH_OTHER, ZH_80, *copies])
    assert labels[0] == 0
    # The estimate from 112 hashes has sd ~0.034 at J = 0.85, so a single copy can fall under
    # the 0.8 threshold; most must be found, and a copy never joins the unrelated text.
    assert np.count_nonzero(labels[2:] == 1) >= 4
    assert not np.any(labels[1:] == 0)


def test_survivor_follows_priority_and_not_input_order():
    base = " ".join(_english_words(50, seed=11))
    copies = [base, base + " indeed", "well " + base, base.replace(" ", "  ")]
    unrelated = [" ".join(_english_words(50, seed=s)) for s in (12, 13)]
    texts = copies + unrelated
    priority = np.array([5.0, 1.0, 7.0, 3.0, 0.0, 2.0])  # copy 1 ranks first among the copies
    labels = _cluster(texts, priority=priority)
    assert labels.tolist() == [1, 1, 1, 1, 4, 5]

    order = np.array([5, 3, 0, 4, 2, 1])
    shuffled = _cluster([texts[i] for i in order], priority=priority[order])
    # map the shuffled labels back to original indices: same survivor, same clusters
    assert [order[label] for label in shuffled[np.argsort(order)]] == labels.tolist()

    default = _cluster(texts)  # no priority: the first read survives
    assert default.tolist() == [0, 0, 0, 0, 4, 5]


def test_verification_removes_a_false_candidate():
    texts = [" ".join(_english_words(60, seed=s)) for s in (21, 22)]
    sig = MinHasher(PARAMS).signatures(texts)
    sig[1, :8] = sig[0, :8]  # unrelated texts that happen to collide in band 0
    keys = band_keys(sig, PARAMS.bands)
    assert find_clusters(keys).tolist() == [0, 0]  # unverified: the candidate is taken
    assert find_clusters(keys, sig, threshold=0.8).tolist() == [0, 1]


def test_a_bad_first_member_does_not_split_the_rest_of_its_run():
    # Rows 1-3 agree everywhere; row 0 only shares the band key: it fails verification, yet the
    # other members must still be joined through each other.
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, size=(4, 112), dtype=np.uint32)
    sig[2] = sig[1]
    sig[3] = sig[1]
    sig[0, :8] = sig[1, :8]
    keys = np.zeros((4, 1), dtype=np.uint64)  # one band, one run
    assert find_clusters(keys, sig, threshold=0.9).tolist() == [0, 1, 1, 1]


def test_huge_run_of_identical_keys_stays_linear():
    n = 100_000
    keys = np.zeros((n, 2), dtype=np.uint64)
    sig = np.zeros((n, 16), dtype=np.uint32)
    started = time.perf_counter()
    labels = find_clusters(keys, sig, threshold=0.5)
    assert time.perf_counter() - started < 10
    assert np.all(labels == 0)
    assert cluster_sizes(labels) == {n: 1}


def test_cluster_sizes_histogram():
    labels = np.array([0, 0, 2, 3, 3, 3, 6, 0, 8, 8])
    assert cluster_sizes(labels) == {2: 1, 3: 2}
    assert cluster_sizes(np.arange(5)) == {}
    assert cluster_sizes(np.zeros(0, dtype=np.int64)) == {}


def test_find_clusters_rejects_bad_inputs():
    keys = np.zeros((3, 14), dtype=np.uint64)
    with pytest.raises(ConfigError, match="pass signatures"):
        find_clusters(keys, threshold=0.8)
    with pytest.raises(InputDataError, match="do not match 3 band keys"):
        find_clusters(keys, np.zeros((2, 112), dtype=np.uint32), threshold=0.8)
    with pytest.raises(InputDataError, match="priority"):
        find_clusters(keys, priority=np.zeros(4))
    with pytest.raises(ConfigError, match="threshold=2"):
        find_clusters(keys, np.zeros((3, 112), dtype=np.uint32), threshold=2)
    assert find_clusters(np.zeros((0, 14), dtype=np.uint64)).tolist() == []


def _reference_clusters(keys: np.ndarray, priority: np.ndarray) -> list[int]:
    # all pairs that share a key in any band, joined by a plain union-find
    n = len(keys)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if np.any(keys[i] == keys[j]):
                parent[find(i)] = find(j)
    best: dict[int, int] = {}
    for i in range(n):
        r = find(i)
        if r not in best or (priority[i], i) < (priority[best[r]], best[r]):
            best[r] = i
    return [best[find(i)] for i in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_unverified_clusters_match_a_brute_force_union_find(seed):
    rng = np.random.default_rng(seed)
    n = 150
    keys = rng.integers(0, 400, size=(n, 3)).astype(np.uint64) * np.uint64(7919)
    keys[:, 1] += np.uint64(1_000_003)  # a few collisions per band, chained across bands
    priority = rng.permutation(n).astype(float)
    got = find_clusters(keys, priority=priority)
    assert got.tolist() == _reference_clusters(keys, priority)
    order = rng.permutation(n)
    shuffled = find_clusters(keys[order], priority=priority[order])
    assert order[shuffled][np.argsort(order)].tolist() == got.tolist()


def test_keys_that_differ_only_in_their_low_bits_stay_apart():
    keys = np.array([[4], [5], [4], [5], [6]], dtype=np.uint64)
    assert find_clusters(keys).tolist() == [0, 1, 0, 1, 4]
    big = np.array([[2**64 - 1], [2**64 - 2], [2**64 - 1]], dtype=np.uint64)
    assert find_clusters(big).tolist() == [0, 1, 0]


def _chain(rows: int, width: int = 100, step: int = 15, seed: int = 0) -> np.ndarray:
    """Signatures where row k + 1 is row k with `step` fresh positions: neighbours agree on
    width - step positions, rows two apart on width - 2 * step, and so on."""
    rng = np.random.default_rng(seed)
    sig = np.empty((rows, width), dtype=np.uint32)
    sig[0] = rng.integers(0, 2**32, width, dtype=np.uint32)
    for k in range(1, rows):
        sig[k] = sig[k - 1]
        cols = (np.arange(step) + (k - 1) * step) % width
        sig[k, cols] = rng.integers(0, 2**32, step, dtype=np.uint32)
    return sig


def test_survivor_link_does_not_remove_a_copy_of_a_copy_for_the_original():
    # A~B and B~C agree on 85 of 100 hashes, A and C on 70 only; D~C on 90 but D~A on 60, D~B
    # on 75: with threshold 0.8, C and D are not near duplicates of A, whatever chains them.
    sig = _chain(3)
    d = sig[2].copy()
    d[30:40] = np.arange(10, dtype=np.uint32)
    sig = np.vstack((sig, d))
    keys = np.zeros((4, 1), dtype=np.uint64)  # one run: every document is a candidate
    assert find_clusters(keys, sig, 0.8).tolist() == [0, 0, 0, 0]  # chaining
    # B is removed for A; C fails A and is kept; D then links to the kept C, not to A
    assert find_clusters(keys, sig, 0.8, link="survivor").tolist() == [0, 0, 2, 2]
    # D first: C links to D; B fails D and is kept; A fails D and links to the kept B
    priority = np.array([3.0, 2.0, 1.0, 0.0])
    labels = find_clusters(keys, sig, 0.8, priority, link="survivor")
    assert labels.tolist() == [1, 1, 3, 3]


def test_survivor_link_keeps_every_other_document_of_a_chain():
    sig = _chain(30, step=12)  # neighbours agree on 88%, rows two apart on 76%
    keys = np.zeros((30, 2), dtype=np.uint64)
    assert np.all(find_clusters(keys, sig, 0.8) == 0)  # one chained component
    labels = find_clusters(keys, sig, 0.8, link="survivor")
    # greedy in priority order: 0 kept, 1 removed for 0, 2 unlike 0 so kept, 3 removed for 2...
    expected = np.arange(30)
    expected[1::2] -= 1
    assert labels.tolist() == expected.tolist()


def test_every_survivor_link_removal_is_justified_even_past_the_pivot_limit():
    sig = _chain(200, step=12)
    keys = np.zeros((200, 2), dtype=np.uint64)
    component = find_clusters(keys, sig, 0.8)
    assert np.count_nonzero(sig[199] == sig[component[199]]) < 80  # removed for a stranger
    labels = find_clusters(keys, sig, 0.8, link="survivor")
    removed = np.flatnonzero(labels != np.arange(200))
    assert len(removed) >= 10
    assert np.all(labels[labels] == labels)  # labels name kept documents
    assert np.all(np.count_nonzero(sig[removed] == sig[labels[removed]], axis=1) >= 80)


@pytest.mark.parametrize("seed", range(3))
def test_survivor_link_is_deterministic_and_ignores_row_order(seed):
    rng = np.random.default_rng(seed)
    sig = np.vstack([_chain(6, step=8, seed=seed * 10 + k) for k in range(20)])
    n = len(sig)
    keys = band_keys(sig, 4)  # 25 rows per band: candidates come from real collisions
    priority = rng.permutation(n).astype(float)
    labels = find_clusters(keys, sig, 0.8, priority, link="survivor")
    assert np.array_equal(labels, find_clusters(keys, sig, 0.8, priority, link="survivor"))
    order = rng.permutation(n)
    shuffled = find_clusters(keys[order], sig[order], 0.8, priority[order], link="survivor")
    assert order[shuffled][np.argsort(order)].tolist() == labels.tolist()
    assert np.count_nonzero(labels != np.arange(n)) >= 20  # the chains did join


def test_survivor_link_options_are_checked():
    keys = np.zeros((3, 1), dtype=np.uint64)
    sig = np.zeros((3, 8), dtype=np.uint32)
    with pytest.raises(ConfigError, match=r"link='survivor' .* needs threshold > 0"):
        find_clusters(keys, link="survivor")
    with pytest.raises(ConfigError, match="link='chain' is unknown"):
        find_clusters(keys, sig, 0.8, link="chain")  # type: ignore[arg-type]
