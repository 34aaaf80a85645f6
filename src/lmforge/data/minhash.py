"""Near-duplicate detection with MinHash LSH, in two halves for a sharded run.

1. Per shard, in any process: `MinHasher.signatures(texts)` -> (n, num_perm) uint32, then
   `band_keys(signatures, bands)` -> (n, bands) uint64. Both are deterministic across processes
   and machines (no `hash()`; permutations come from `seed` through a fixed mixer).
2. Once, over all shards: `find_clusters(keys, signatures, threshold, priority)` -> labels, where
   labels[i] is the index of the document that survives for i's cluster.

Memory of `find_clusters` for n documents, beyond the caller's keys (8 * bands B/doc) and
signatures (4 * num_perm B/doc), i.e. 560 B/doc with the default params: about 70 B/doc of
working arrays (a priority ranking, the component roots, one band's sort) plus 16 B per pending
candidate edge. Every band contributes at most two candidate edges per document whatever the
run lengths, and accepted edges are folded into component roots once n/4 of them wait, so
nothing grows with the square of a run. Measured on 1M signatures with 10% near copies: 62-70
B/doc of numpy allocations (tracemalloc), 1.4 s; bench/dedup_speed.py --memory-docs 1000000
peaks at ~700 MB RSS for the whole process.

Two options trade a little work for removals a user can trust:
- `link="survivor"`: connected components chain (a copy of a copy joins the original even when
  the two are not alike), so each member is then kept unless it passes the threshold against a
  kept member of its component, taken greedily in priority order; every removal then names a
  retained document that really is its near duplicate.
- `shingles=` (`MinHasher.sketch` or `shingle_sets`): candidate pairs are checked by exact
  Jaccard of the shingle sets instead of the signature estimate (whose sd at J = 0.8 is ~0.038
  with 112 hashes, ~0.025 with 256). The sets cost 8 B per distinct shingle, so this is for
  corpora held in memory; the signatures then only propose candidates and can be short.
On bench/near_dup.py --docs 20000 (threshold 0.8), share of removals matched to a true near
duplicate / share of true pairs broken up: 0.86 / 0.93 for 112 hashes in 14 bands with
components, 0.94 / 0.95 for 256 in 32 bands with survivor links, 1.0 / 1.0 for 64 in 16 bands
with survivor links and exact checks, at 0.62 s CPU for the 20k documents against 0.55 s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lmforge.data.shingles import hash_shingles, mix64
from lmforge.errors import ConfigError, InputDataError

_U64 = np.uint64
_GOLDEN = 0x9E3779B97F4A7C15
_TEXT_BATCH = 2048  # texts shingled together: large enough to amortise the numpy calls
_KEY_CHUNK = 1 << 16  # signature rows banded at once
_VERIFY_CHUNK = 1 << 15  # candidate edges compared at once: bounds the gathered signatures
_EXACT_CHUNK = 1 << 20  # fingerprints gathered at once by the exact check (8 MB)
# Shingle sets keep the top 44 bits of each hash, so that one value sort (an argsort or lexsort
# is ~20x slower) can order (group, fingerprint) keys with a group index in the 20 bits above:
# a text of a batch of _TEXT_BATCH, or a pair of a chunk of at most _EXACT_CHUNK / 2 pairs.
_FP_BITS = 44
_FP_MASK = _U64((1 << _FP_BITS) - 1)
_MAX_PIVOTS = 16  # kept documents per component a member is compared with (link="survivor")
LINKS = ("component", "survivor")


@dataclass(frozen=True)
class MinHashParams:
    """How texts are shingled, hashed and banded, and how strict a duplicate must be."""

    num_perm: int = 112  # hashes per signature
    bands: int = 14  # LSH bands; rows per band = num_perm // bands
    char_ngram: int = 5  # shingle size for CJK text (character shingles)
    word_ngram: int = 3  # shingle size for space-delimited text (word shingles); 0: characters
    threshold: float = 0.8  # estimated Jaccard a candidate pair must reach; 0 keeps every pair
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("num_perm", "bands", "char_ngram", "word_ngram"):
            value = getattr(self, name)
            least = 0 if name == "word_ngram" else 1
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"minhash {name}={value!r} is invalid: use an integer >= {least}")
        if self.num_perm % self.bands:
            raise ConfigError(
                f"minhash bands={self.bands} does not divide num_perm={self.num_perm}: "
                f"choose bands among the divisors of num_perm, e.g. bands=14 with num_perm=112"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(
                f"minhash threshold={self.threshold!r} is out of range: use a value in [0, 1]"
            )

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.uint64]:
    # splitmix64 of a counter: fixed by `seed` alone, unlike a library RNG whose stream may change
    start = (seed * (num_perm + 1)) % (1 << 64)
    counter = np.arange(num_perm + 1, dtype=np.uint64) + _U64(start)
    words = mix64(counter * _U64(_GOLDEN) + _U64(_GOLDEN))
    return words[:num_perm] | _U64(1), words[num_perm]


@dataclass(frozen=True)
class ShingleSets:
    """Distinct shingle fingerprints of many documents: document i has
    fingerprints[offsets[i]:offsets[i + 1]], sorted. A fingerprint is the top 44 bits of the
    shingle hash: two different shingles of a pair of documents share one with probability
    ~(|A| + |B|)^2 / 2^45, so a Jaccard from them is exact to ~(|A| + |B|) / 2^44."""

    fingerprints: np.ndarray  # uint64, < 2**44
    offsets: np.ndarray  # int64, documents + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _distinct_per_text(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # one value sort of (text, fingerprint) keys for the whole batch, not a np.unique per text
    text = np.repeat(np.arange(len(offsets) - 1, dtype=np.uint64), np.diff(offsets))
    keys = np.sort((text << _U64(_FP_BITS)) | (hashes >> _U64(64 - _FP_BITS)))
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys = keys[first]
    counts = np.bincount((keys >> _U64(_FP_BITS)).astype(np.int64), minlength=len(offsets) - 1)
    return keys & _FP_MASK, counts


class MinHasher:
    """Shingles texts and turns them into MinHash signatures, many texts per numpy call."""

    def __init__(self, params: MinHashParams) -> None:
        self.params = params
        self._a, self._c = _permutations(params.num_perm, params.seed)

    def shingles(self, text: str) -> np.ndarray:
        """The distinct uint64 shingle hashes of one text (sorted)."""
        batch = hash_shingles([text], self.params.char_ngram, self.params.word_ngram)
        return np.unique(batch.hashes)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32: per permutation, the minimum over the text's shingles.

        Permutation k is h -> a_k * h + b_k in uint64 (a_k odd and random, b_k = a_k * c with one
        random c, so it is one multiplication of the shifted hashes h + c), keeping the high 32
        bits. The minimum is taken on the full 64-bit values, which have the same minimiser.
        """
        return self._sketch(texts, with_sets=False)[0]

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32: the row `signatures([text])` gives, in one numpy product (faster
        for a single text than the batch path's per-permutation loop)."""
        hashes = hash_shingles([text], self.params.char_ngram, self.params.word_ngram).hashes
        if not len(hashes):
            return self.signatures([text])[0]
        mins = ((hashes + self._c)[:, None] * self._a[None, :]).min(axis=0)
        return (mins >> _U64(32)).astype(np.uint32)

    def shingle_sets(self, texts: Sequence[str]) -> ShingleSets:
        """The distinct shingle fingerprints of every text, for exact checks in `find_clusters`."""
        return self._sketch(texts, with_signatures=False)[1]

    def sketch(self, texts: Sequence[str]) -> tuple[np.ndarray, ShingleSets]:
        """Signatures and shingle sets together, shingling each text once."""
        return self._sketch(texts)

    def _sketch(
        self, texts: Sequence[str], with_signatures: bool = True, with_sets: bool = True
    ) -> tuple[np.ndarray, ShingleSets]:
        p = self.params
        out = np.empty((len(texts) if with_signatures else 0, p.num_perm), dtype=np.uint32)
        parts: list[np.ndarray] = [np.zeros(0, dtype=np.uint64)]
        counts: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        for lo in range(0, len(texts), _TEXT_BATCH):
            chunk = texts[lo : lo + _TEXT_BATCH]
            batch = hash_shingles(chunk, p.char_ngram, p.word_ngram)
            if with_signatures:
                out[lo : lo + len(chunk)] = self._min_hashes(batch.hashes, batch.offsets).T
            if with_sets:
                distinct, count = _distinct_per_text(batch.hashes, batch.offsets)
                parts.append(distinct)
                counts.append(count)
        return out, ShingleSets(np.concatenate(parts), np.cumsum(np.concatenate(counts)))

    def _min_hashes(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        # One permutation at a time over all shingles of the batch: a contiguous multiply by a
        # scalar and a segmented minimum are ~4x faster than one (shingles, num_perm) product.
        shifted = hashes + self._c
        product = np.empty_like(shifted)
        mins = np.empty((self.params.num_perm, len(offsets) - 1), dtype=np.uint64)
        for k, a in enumerate(self._a):
            np.multiply(shifted, a, out=product)
            np.minimum.reduceat(product, offsets[:-1], out=mins[k])
        return (mins >> _U64(32)).astype(np.uint32)


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) uint64: one hash of each band's rows; equal keys make candidate pairs."""
    sig = np.asarray(signatures)
    if sig.ndim != 2 or not np.issubdtype(sig.dtype, np.integer):
        raise InputDataError(
            f"signatures of shape {sig.shape} and dtype {sig.dtype} are not a 2-D integer "
            f"array: pass the (n, num_perm) output of MinHasher.signatures"
        )
    if bands < 1 or sig.shape[1] % bands:
        raise ConfigError(
            f"bands={bands} does not divide the signature length {sig.shape[1]}: "
            f"pass the bands of the MinHashParams that made the signatures"
        )
    if sig.dtype != np.uint32 and sig.size and (sig.min() < 0 or sig.max() > 0xFFFFFFFF):
        raise InputDataError(
            f"signature values span [{sig.min()}, {sig.max()}], outside uint32: pass the "
            f"signatures of MinHasher.signatures (any integer dtype holding those values works)"
        )
    rows = sig.shape[1] // bands
    keys = np.empty((len(sig), bands), dtype=np.uint64)
    for lo in range(0, len(sig), _KEY_CHUNK):  # chunks bound the uint64 temporaries
        keys[lo : lo + _KEY_CHUNK] = _hash_bands(sig[lo : lo + _KEY_CHUNK], bands, rows)
    return keys


def _hash_bands(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    # Two 32-bit values per 64-bit word (packed by value, not by a byte-order dependent view):
    # half the mixing rounds, same information, and the same keys whatever the integer dtype.
    grid = sig.reshape(len(sig), bands, rows)
    if rows % 2:
        grid = np.concatenate((grid, np.zeros((len(sig), bands, 1), grid.dtype)), axis=2)
    words = grid[:, :, 0::2].astype(np.uint64)
    words |= grid[:, :, 1::2].astype(np.uint64) << _U64(32)
    keys = np.full((len(sig), bands), _U64(rows), dtype=np.uint64)
    for r in range(words.shape[2]):
        keys = mix64(keys * _U64(_GOLDEN) + words[:, :, r])
    return keys


def _check_inputs(
    keys: np.ndarray,
    signatures: np.ndarray | None,
    threshold: float,
    priority: np.ndarray | None,
    link: str,
    shingles: ShingleSets | None,
) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.ndim != 2:
        raise InputDataError(
            f"band keys of shape {keys.shape} are not 2-D: pass the (n, bands) output of band_keys"
        )
    n = len(keys)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold!r} is out of range: use a value in [0, 1]")
    if threshold > 0 and signatures is None and shingles is None:
        raise ConfigError(
            f"threshold={threshold} needs the signatures to verify candidate pairs: "
            f"pass signatures=... (or shingles=...), or threshold=0 to keep every candidate"
        )
    if link not in LINKS:
        raise ConfigError(f"link={link!r} is unknown: use one of {', '.join(LINKS)}")
    if link == "survivor" and threshold <= 0:
        raise ConfigError(
            "link='survivor' compares members with their survivor and needs threshold > 0: "
            "pass a threshold (e.g. 0.8) or use link='component'"
        )
    if signatures is not None and (np.ndim(signatures) != 2 or len(signatures) != n):
        raise InputDataError(
            f"signatures of shape {np.shape(signatures)} do not match {n} band keys: "
            f"pass one signature row per key row, in the same order"
        )
    if shingles is not None and (not isinstance(shingles, ShingleSets) or len(shingles) != n):
        got = len(shingles) if isinstance(shingles, ShingleSets) else type(shingles).__name__
        raise InputDataError(
            f"shingles ({got}) do not match {n} band keys: pass MinHasher.shingle_sets of the "
            f"same texts, in the same order"
        )
    if priority is not None and np.shape(priority) != (n,):
        raise InputDataError(
            f"priority of shape {np.shape(priority)} does not match {n} band keys: "
            f"pass one value per document"
        )
    return keys


def _runs(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the documents that share their key with another one, grouped by key and in
    rank order within a group, with their keys.

    Ranks ride in the low bits of the keys so that one value sort (SIMD, ~10x faster than an
    argsort) groups keys and orders members by rank; groups made only by the truncated bits are
    split again on the full key, which is cheap because few documents are in any group at all.
    """
    n = len(column)
    bits = (n - 1).bit_length()
    low = _U64((1 << bits) - 1)
    packed = np.sort((column & ~low) | np.arange(n, dtype=np.uint64))
    high = packed & ~low
    same = high[1:] == high[:-1]
    grouped = np.zeros(n, dtype=bool)
    grouped[1:] |= same
    grouped[:-1] |= same
    ranks = (packed[grouped] & low).astype(np.int64)
    regroup = np.argsort(column[ranks], kind="stable")  # stable: rank order survives
    ranks = ranks[regroup]
    return ranks, column[ranks]


def _band_candidates(column: np.ndarray, verifying: bool) -> tuple[np.ndarray, np.ndarray]:
    """Candidate edges of one band, in rank space: every run member to the run's first member,
    plus (when verifying) to its predecessor, so a first member that fails verification does not
    cut the rest of the run apart. At most two edges per document, however long the run."""
    order, ordered = _runs(column)
    if len(order) == 0:
        return order, order
    starts = np.empty(len(order), dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    member = ~starts
    run_first = order[starts][np.cumsum(starts) - 1]
    src, dst = run_first[member], order[member]
    if verifying:
        chained = member[1:] & member[:-1]  # predecessor is not the run's first: a new edge
        src = np.concatenate((src, order[:-1][chained]))
        dst = np.concatenate((dst, order[1:][chained]))
    return src, dst


_PairCheck = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _estimate_check(signatures: np.ndarray, threshold: float) -> _PairCheck:
    """Pairs of documents whose signatures agree on at least threshold * num_perm positions."""
    need = int(np.ceil(threshold * signatures.shape[1] - 1e-9))

    def check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        keep = np.zeros(len(a), dtype=bool)
        for lo in range(0, len(a), _VERIFY_CHUNK):
            x = signatures[a[lo : lo + _VERIFY_CHUNK]]
            y = signatures[b[lo : lo + _VERIFY_CHUNK]]
            keep[lo : lo + len(x)] = np.count_nonzero(x == y, axis=1) >= need
        return keep

    return check


def _exact_check(sets: ShingleSets, threshold: float) -> _PairCheck:
    """Pairs of documents whose shingle sets have Jaccard >= threshold, counted exactly on
    their fingerprints."""
    offsets = np.asarray(sets.offsets, dtype=np.int64)

    def check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sizes = np.stack((offsets[a + 1] - offsets[a], offsets[b + 1] - offsets[b]), axis=1)
        ends = np.cumsum(sizes.sum(axis=1))
        keep = np.zeros(len(a), dtype=bool)
        lo = 0
        while lo < len(a):  # chunks of about _EXACT_CHUNK shingles (one pair at least)
            base = ends[lo - 1] if lo else 0
            hi = max(lo + 1, int(np.searchsorted(ends, base + _EXACT_CHUNK, side="right")))
            starts = np.stack((offsets[a[lo:hi]], offsets[b[lo:hi]]), axis=1)
            inter = _intersections(sets.fingerprints, starts.ravel(), sizes[lo:hi].ravel())
            union = sizes[lo:hi].sum(axis=1) - inter
            keep[lo:hi] = inter >= threshold * union - 1e-9
            lo = hi
        return keep

    return check


def _intersections(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """|A & B| for consecutive segment pairs (2k, 2k + 1) of distinct fingerprints: sorted
    together as (pair, fingerprint) keys, a shared shingle is two equal neighbours."""
    total = int(sizes.sum())
    seg_first = np.cumsum(sizes) - sizes
    idx = np.repeat(starts - seg_first, sizes) + np.arange(total)
    pair = np.repeat(np.arange(len(sizes), dtype=np.uint64) >> _U64(1), sizes)
    keys = np.sort((pair << _U64(_FP_BITS)) | (values[idx] & _FP_MASK))
    shared = keys[1:][keys[1:] == keys[:-1]]
    return np.bincount((shared >> _U64(_FP_BITS)).astype(np.int64), minlength=len(sizes) // 2)


def _merge(root: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """New component roots (the smallest rank of each component) after adding edges."""
    n = len(root)
    members = np.flatnonzero(root != np.arange(n))
    rows = np.concatenate((src, members))
    cols = np.concatenate((dst, root[members]))
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    count, comp = connected_components(graph, directed=False)
    smallest = np.full(count, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n))
    return smallest[comp]


def _survivor_links(root: np.ndarray, check: _PairCheck) -> np.ndarray:
    """Rank-space labels where each member links to a kept member of its component that it
    passes `check` with, else keeps itself.

    Greedy in rank order: the root is kept; a member is compared with the kept members ranked
    before it, in rank order, and links to the first it passes; one that passes none is kept.
    Done in rounds, each comparing all unplaced members with one pivot per component (the
    smallest unplaced rank becomes the next kept pivot), so the work is linear in the members
    and at most _MAX_PIVOTS rounds; members still unplaced then are kept (no unjustified
    removal, at worst a missed one in a long chain of dissimilar documents).
    """
    label = np.arange(len(root))
    pending = np.flatnonzero(root != label)  # ascending ranks
    pivot = root[pending]
    for _ in range(_MAX_PIVOTS):
        if not len(pending):
            break
        ok = check(pending, pivot)
        label[pending[ok]] = pivot[ok]
        pending = pending[~ok]
        # pending is in ascending rank, so a component's first entry is its smallest rank
        _, first, group = np.unique(root[pending], return_index=True, return_inverse=True)
        pivot = pending[first][group]
        unplaced = pending != pivot  # a new pivot is kept: nothing to compare it with
        pending, pivot = pending[unplaced], pivot[unplaced]
    return label


def find_clusters(
    keys: np.ndarray,
    signatures: np.ndarray | None = None,
    threshold: float = 0.0,
    priority: np.ndarray | None = None,
    *,
    link: Literal["component", "survivor"] = "component",
    shingles: ShingleSets | None = None,
) -> np.ndarray:
    """Cluster documents whose band keys collide (and, with threshold > 0, whose signatures agree).

    Returns int64 labels: labels[i] is the index of the survivor of i's cluster, so survivors are
    where labels[i] == i. The survivor is the member with the smallest `priority` (default: the
    index, i.e. the first read; ties go to the smaller index). With distinct priorities the
    result does not depend on the order of the input rows.

    link="component" (default): a cluster is a connected component of verified candidate pairs,
    so a member may be unlike its survivor (A~B, B~C, A!~C puts C with A). link="survivor"
    (needs threshold > 0): a member is removed only for a kept member of its component that it
    passes the threshold with (see `_survivor_links`); labels[i] is that member.
    shingles: `MinHasher.shingle_sets` of the same texts; candidate pairs and survivor links are
    then checked by exact Jaccard instead of the signature estimate (signatures may be None).
    """
    keys = _check_inputs(keys, signatures, threshold, priority, link, shingles)
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Work in rank space (rank 0 = highest priority): a run's first member and a component's
    # root are then simply the smallest rank, whatever order the rows came in.
    if priority is None:
        rank_to_doc = np.arange(n)
    else:
        rank_to_doc = np.argsort(np.asarray(priority), kind="stable")
    verifying = threshold > 0
    check: _PairCheck | None = None
    if verifying:
        by_doc = (
            _exact_check(shingles, threshold)
            if shingles is not None
            else _estimate_check(signatures, threshold)
        )

        def check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return by_doc(rank_to_doc[a], rank_to_doc[b])

    root = np.arange(n)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    waiting = 0
    for band in range(keys.shape[1]):
        column = keys[:, band] if priority is None else keys[rank_to_doc, band]
        src, dst = _band_candidates(column.astype(np.uint64, copy=False), verifying)
        fresh = root[src] != root[dst]  # already joined through another band: nothing to learn
        src, dst = src[fresh], dst[fresh]
        if check is not None and len(src):
            ok = check(src, dst)
            src, dst = src[ok], dst[ok]
        pending.append((src, dst))
        waiting += len(src)
        # Folding edges into roots costs a pass over all n documents: do it only once enough
        # edges wait (memory bound) or at the end.
        if waiting and (waiting > n // 4 or band == keys.shape[1] - 1):
            root = _merge(root, *(np.concatenate(side) for side in zip(*pending, strict=True)))
            pending, waiting = [], 0
    if link == "survivor" and check is not None:
        root = _survivor_links(root, check)
    labels = np.empty(n, dtype=np.int64)
    labels[rank_to_doc] = rank_to_doc[root]
    return labels


def cluster_sizes(labels: np.ndarray) -> dict[int, int]:
    """Histogram of duplicate clusters: cluster size -> number of clusters (sizes >= 2 only)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return {}
    sizes = np.bincount(labels)
    sizes = sizes[sizes >= 2]
    values, counts = np.unique(sizes, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}
