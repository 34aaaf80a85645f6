"""Benchmark near-duplicate detection (MinHash LSH) against exact Jaccard ground truth.

    python bench/near_dup.py --docs 20000
    python bench/near_dup.py --docs 20000 --variants 256x32/survivor/estimate

Generates a seeded corpus (see `make_corpus`): base documents in English and Chinese (50-600
chars, review sentences from the demo phrase banks mixed with random vocabulary), near copies
of some bases at controlled edit rates (word/character substitutions, insertions, deletions and
typos at rates 0.01 ... 0.4), and unrelated documents. The generator is not tuned to the
detector: at rates 0.02 and 0.05 a large share of the planted pairs lies within 0.05 of the
threshold, which the JSON reports ("planted_ambiguous", "planted_by_edit_rate").

Ground truth: a true pair is two documents whose exact Jaccard similarity of shingle sets, with
the detectors' shingling (`shingle_strings`, Python sets), is >= the threshold (0.8), found over
ALL pairs of the corpus (exact prefix-filtered similarity join), not only the planted ones.

Each variant PERMxBANDS/LINK/VERIFY runs `lmforge.data.minhash` with num_perm hashes in that many
bands, find_clusters(link=LINK), and candidate pairs checked by the signature estimate
(VERIFY=estimate) or by exact Jaccard of `MinHasher.sketch` shingle sets (VERIFY=exact). A
labelling removes every document whose label is not itself. Metrics, as a dedup user sees them:
- removal precision: share of removed documents whose survivor (the retained document they
  were matched to, their label) has true Jaccard >= threshold with them;
- pair recall: share of true pairs in which at least one document was removed (the pair no
  longer survives intact); planted recall: the same over planted pairs that are true pairs;
- cluster_pairs (the earlier figures, kept for comparison): a cluster of s documents declares
  all s * (s - 1) / 2 of its pairs; precision = |declared & true| / |declared|, recall =
  |declared & true| / |true|. Chaining caps these even for a perfect pair test ("ceilings":
  "exact_components" clusters the exact true pairs; "pairwise_estimate_N" thresholds the
  N-hash estimate of every pair, with no LSH and no clustering).
The first variant gives the headline; every variant reports its timing (wall and CPU seconds
per phase; the machine may be shared, so CPU seconds are the steadier figure), its curve by edit
rate and histograms of the true Jaccard of its false removals and missed pairs. All
definitions are repeated in the JSON ("definitions"). Prints ONE JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lmforge.data.minhash import (
    LINKS,
    MinHasher,
    MinHashParams,
    band_keys,
    cluster_sizes,
    find_clusters,
)
from lmforge.data.shingles import shingle_strings
from lmforge.demo import bank_en, bank_zh
from lmforge.demo.reviews import LABELS, compose_review

RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # a 1-2-5 ladder
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class Corpus:
    texts: list[str] = field(default_factory=list)
    langs: list[str] = field(default_factory=list)
    planted: list[tuple[int, int, float]] = field(default_factory=list)  # (base, copy, rate)


def _bank_strings(bank: object) -> list[str]:
    out: list[str] = []
    for dom in bank.DOMAINS:  # type: ignore[attr-defined]
        out += [*dom.products, *dom.openers, *dom.pos_facts, *dom.neg_facts, *dom.neutral_facts]
        for aspect in dom.aspects:
            out += [aspect.subject, *aspect.positive, *aspect.negative]
    return out


def vocabulary() -> dict[str, list[str]]:
    """Replacement units: English words and Chinese characters of the demo banks."""
    words = {w.strip(".,!?'\"()").lower() for s in _bank_strings(bank_en) for w in s.split()}
    chars = {c for s in _bank_strings(bank_zh) for c in s if "\u4e00" <= c <= "\u9fff"}
    return {"en": sorted(w for w in words if w.isalpha()), "zh": sorted(chars)}


def base_doc(rng: random.Random, lang: str, vocab: dict[str, list[str]]) -> str:
    """Reviews, with some random-vocabulary sentences, up to a log-uniform 50-600 chars."""
    target = int(math.exp(rng.uniform(math.log(50), math.log(600))))
    parts: list[str] = []
    size = 0
    while size < target:
        if rng.random() < 0.35:  # names, details: what makes real documents differ
            n = rng.randint(4, 12)
            if lang == "en":
                part = " ".join(rng.choice(vocab["en"]) for _ in range(n)).capitalize() + "."
            else:
                part = "".join(rng.choice(vocab["zh"]) for _ in range(n)) + "。"
        else:
            part = compose_review(rng, lang, rng.choice(LABELS)).text
        parts.append(part)
        size += len(part) + 1
    return (" " if lang == "en" else "").join(parts)


def near_copy(
    rng: random.Random, text: str, lang: str, rate: float, vocab: dict[str, list[str]]
) -> str:
    """Edit max(1, rate * units) units (English words, Chinese characters) at distinct places."""
    units = text.split(" ") if lang == "en" else list(text)
    places = [i for i, u in enumerate(units) if lang == "en" or "\u4e00" <= u <= "\u9fff"]
    count = min(len(places), max(1, round(rate * len(places))))
    for i in sorted(rng.sample(places, count), reverse=True):  # right to left: indices hold
        op = rng.choice(("sub", "ins", "del", "typo") if lang == "en" else ("sub", "ins", "del"))
        fresh = rng.choice(vocab[lang])
        if op == "sub":
            units[i] = fresh
        elif op == "ins":
            units.insert(i, fresh)
        elif op == "del" and len(units) > 1:
            del units[i]
        elif op == "typo":  # one character substituted inside the word
            word = units[i]
            j = rng.randrange(len(word)) if word else 0
            units[i] = word[:j] + rng.choice(_LETTERS) + word[j + 1 :]
    return (" " if lang == "en" else "").join(units)


def make_corpus(
    docs: int, seed: int, dup_share: float = 0.3, rates: tuple[float, ...] = RATES
) -> Corpus:
    """`docs` documents; about `dup_share` of them are near copies of a base (1-3 per base)."""
    rng = random.Random(seed)
    vocab = vocabulary()
    made: list[tuple[str, str, int, float]] = []  # text, lang, base slot (-1: original), rate
    while len(made) < docs:
        lang = rng.choice(("en", "zh"))
        base = base_doc(rng, lang, vocab)
        slot = len(made)
        made.append((base, lang, -1, 0.0))
        if rng.random() < dup_share / (1 - dup_share) / 2:  # 2 copies per base on average
            for _ in range(rng.randint(1, 3)):
                if len(made) < docs:
                    rate = rng.choice(rates)
                    made.append((near_copy(rng, base, lang, rate, vocab), lang, slot, rate))
    order = list(range(len(made)))
    rng.shuffle(order)  # copies are not next to their base
    where = {old: new for new, old in enumerate(order)}
    corpus = Corpus()
    for old in order:
        text, lang, base, rate = made[old]
        corpus.texts.append(text)
        corpus.langs.append(lang)
        if base >= 0:
            corpus.planted.append((where[base], where[old], rate))
    return corpus


def similar_pairs(sets: list[frozenset[str]], threshold: float) -> set[tuple[int, int]]:
    """All pairs (i < j) with exact Jaccard >= threshold: prefix filtering, then set checks.

    Shingles are ordered rarest first; two sets with Jaccard >= t always share one of the first
    |S| - ceil(t * |S|) + 1 shingles of each, so no true pair is missed.
    """
    t = Fraction(threshold).limit_denominator(10_000)
    df = Counter(s for shingles in sets for s in shingles)
    index: defaultdict[str, list[int]] = defaultdict(list)
    found: set[tuple[int, int]] = set()
    for i, shingles in enumerate(sets):
        ordered = sorted(shingles, key=lambda s: (df[s], s))
        prefix = ordered[: len(ordered) - math.ceil(t * len(ordered)) + 1]
        seen: set[int] = set()
        for s in prefix:
            seen.update(index[s])
            index[s].append(i)
        for j in seen:
            inter = len(shingles & sets[j])
            if inter * t.denominator >= t.numerator * (len(shingles) + len(sets[j]) - inter):
                found.add((j, i))
    return found


def cluster_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels.tolist()):
        groups[label].append(i)
    return {
        (a, b)
        for members in groups.values()
        if len(members) > 1
        for k, a in enumerate(members)
        for b in members[k + 1 :]
    }


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _precision_recall(declared: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict:
    hits = len(declared & truth)
    return {
        "precision": round(hits / max(len(declared), 1), 4),
        "recall": round(hits / max(len(truth), 1), 4),
    }


def _histogram(values: list[float], edges: tuple[float, ...]) -> dict[str, int]:
    counts, _ = np.histogram(values, bins=edges)
    return {f"{lo:g}-{hi:g}": int(c) for lo, hi, c in zip(edges, edges[1:], counts, strict=False)}


@dataclass(frozen=True)
class Variant:
    """One detector configuration: signature size, LSH bands, cluster link, pair verification."""

    num_perm: int
    bands: int
    link: str  # "component" or "survivor" (find_clusters)
    verify: str  # "estimate" (signature agreement) or "exact" (Jaccard of shingle sets)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        try:
            size, link, verify = spec.split("/")
            num_perm, bands = (int(v) for v in size.split("x"))
        except ValueError:
            msg = f"variant {spec!r} is not PERMxBANDS/LINK/VERIFY, e.g. {DEFAULT}"
            raise SystemExit(msg) from None
        if link not in LINKS or verify not in ("estimate", "exact"):
            raise SystemExit(f"variant {spec!r}: LINK is one of {LINKS}, VERIFY estimate or exact")
        return cls(num_perm, bands, link, verify)

    @property
    def name(self) -> str:
        return f"{self.num_perm}x{self.bands}/{self.link}/{self.verify}"


# With exact checks the signatures only propose candidates, so a short one with a low LSH
# threshold (64x16: rows 4, ~0.5) misses fewer true pairs than 256x32 and costs less to hash.
DEFAULT = "64x16/survivor/exact"
BASELINE = "112x14/component/estimate"  # the MinHashParams defaults as find_clusters ran them
VARIANTS = (
    DEFAULT,
    "256x32/survivor/exact",
    "256x32/component/exact",
    "512x64/survivor/estimate",
    "256x32/survivor/estimate",
    "112x14/survivor/estimate",
    BASELINE,
)


def run_variant(
    texts: list[str], variant: Variant, threshold: float, char_ngram: int, word_ngram: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels, signatures and timings (wall and CPU seconds per phase) of one configuration."""
    params = MinHashParams(
        num_perm=variant.num_perm,
        bands=variant.bands,
        char_ngram=char_ngram,
        word_ngram=word_ngram,
        threshold=threshold,
    )
    hasher = MinHasher(params)
    clock = [(time.perf_counter(), time.process_time())]

    def tick() -> None:
        clock.append((time.perf_counter(), time.process_time()))

    shingles = None
    if variant.verify == "exact":
        sig, shingles = hasher.sketch(texts)  # one shingling for both
    else:
        sig = hasher.signatures(texts)
    tick()
    keys = band_keys(sig, params.bands)
    tick()
    labels = find_clusters(keys, sig, params.threshold, link=variant.link, shingles=shingles)
    tick()
    phases = ("hashing", "band_keys", "find_clusters")
    wall = {p: round(clock[k + 1][0] - clock[k][0], 3) for k, p in enumerate(phases)}
    cpu = {p: round(clock[k + 1][1] - clock[k][1], 3) for k, p in enumerate(phases)}
    timing = {
        "seconds": wall,
        "cpu_seconds": cpu,
        "total_cpu_seconds": round(clock[-1][1] - clock[0][1], 3),
        "shingle_set_bytes_per_doc": (
            round((shingles.fingerprints.nbytes + shingles.offsets.nbytes) / len(texts), 1)
            if shingles is not None
            else 0
        ),
    }
    return labels, sig, timing


class Truth:
    """Exact Jaccard ground truth of one corpus, shared by all variants."""

    def __init__(self, corpus: Corpus, sets: list[frozenset[str]], threshold: float) -> None:
        self.corpus, self.sets = corpus, sets
        self.threshold = threshold
        self.t = Fraction(threshold).limit_denominator(10_000)
        self.pairs = similar_pairs(sets, threshold)
        self.planted_j = [jaccard(sets[a], sets[b]) for a, b, _ in corpus.planted]
        self.planted_true = [
            (a, b) for a, b, _ in corpus.planted if self.is_true(a, b)
        ]  # same exact test as the true pairs, not a float comparison

    def ambiguous(self, j: float) -> bool:
        return self.threshold - 0.05 <= j < self.threshold + 0.05

    def is_true(self, a: int, b: int) -> bool:
        inter = len(self.sets[a] & self.sets[b])
        union = len(self.sets[a]) + len(self.sets[b]) - inter
        return inter * self.t.denominator >= self.t.numerator * union

    def score(self, labels: np.ndarray) -> dict:
        """The user-facing metrics of one labelling (definitions in DEFINITIONS)."""
        sets = self.sets
        removed = labels != np.arange(len(labels))
        victims = np.flatnonzero(removed).tolist()
        bad = [i for i in victims if not self.is_true(i, int(labels[i]))]
        bad_j = [jaccard(sets[i], sets[int(labels[i])]) for i in bad]
        missed = [(a, b) for a, b in self.pairs if not (removed[a] or removed[b])]
        planted_missed = sum(not (removed[a] or removed[b]) for a, b in self.planted_true)
        t = self.threshold
        clear = [(a, b) for a, b in self.pairs if jaccard(sets[a], sets[b]) >= t + 0.1]
        declared = cluster_pairs(labels)
        return {
            "removed": len(victims),
            "removal_precision": _share(len(victims) - len(bad), len(victims)),
            "pair_recall": _share(len(self.pairs) - len(missed), len(self.pairs)),
            "planted_recall": _share(
                len(self.planted_true) - planted_missed, len(self.planted_true)
            ),
            "false_removals_by_jaccard": _histogram(bad_j, (0.0, t - 0.1, t - 0.05, t - 0.02, t)),
            "missed_pairs_by_jaccard": _histogram(
                [jaccard(sets[a], sets[b]) for a, b in missed],
                (t, t + 0.02, t + 0.05, t + 0.1, 1.0001),
            ),
            "tolerant": {
                "removal_precision_within_0.1": _share(
                    len(victims) - sum(j < t - 0.1 for j in bad_j), len(victims)
                ),
                "pair_recall_above_threshold_plus_0.1": _share(
                    sum(bool(removed[a] or removed[b]) for a, b in clear), len(clear)
                ),
            },
            "cluster_pairs": {"declared": len(declared), **_precision_recall(declared, self.pairs)},
            "cluster_sizes": cluster_sizes(labels),
            "curve": self.curve(labels, removed),
        }

    def curve(self, labels: np.ndarray, removed: np.ndarray) -> list[dict]:
        """Per edit rate: share of planted pairs broken up (one removed), overall and among the
        true pairs, and share in one cluster."""
        rows = []
        for rate in sorted({r for _, _, r in self.corpus.planted}):
            pairs = [(a, b) for a, b, r in self.corpus.planted if r == rate]
            true = [(a, b) for a, b in pairs if self.is_true(a, b)]
            rows.append(
                {
                    "edit_rate": rate,
                    "share_removed": _share(
                        sum(removed[a] or removed[b] for a, b in pairs), len(pairs)
                    ),
                    "recall_of_true_pairs": _share(
                        sum(removed[a] or removed[b] for a, b in true), len(true)
                    ),
                    "share_same_cluster": _share(
                        sum(labels[a] == labels[b] for a, b in pairs), len(pairs)
                    ),
                }
            )
        return rows

    def rate_table(self) -> list[dict]:
        """Per edit rate: how alike the planted pairs truly are (independent of any detector)."""
        rows, t = [], self.threshold
        planted = self.corpus.planted
        for rate in sorted({r for _, _, r in planted}):
            sims = [j for (_, _, r), j in zip(planted, self.planted_j, strict=True) if r == rate]
            rows.append(
                {
                    "edit_rate": rate,
                    "pairs": len(sims),
                    "mean_jaccard": round(float(np.mean(sims)), 4),
                    "share_true_pair": round(float(np.mean([s >= t for s in sims])), 4),
                    "share_ambiguous": round(float(np.mean([self.ambiguous(s) for s in sims])), 4),
                }
            )
        return rows


def ceilings(
    sets: list[frozenset[str]],
    truth: set[tuple[int, int]],
    sigs: dict[int, np.ndarray],
    threshold: float,
) -> dict[str, dict]:
    """Cluster-pair precision/recall of idealised detectors (see the module docstring)."""
    n = len(sets)
    edges = np.array(sorted(truth), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    exact = cluster_pairs(connected_components(graph, directed=False)[1])
    out = {"exact_components": _precision_recall(exact, truth)}
    # every pair the estimate could plausibly pass: J >= threshold - 0.2 is > 5 sd away below
    near = similar_pairs(sets, max(threshold - 0.2, 0.05))
    for num_perm, sig in sorted(sigs.items()):
        need = math.ceil(threshold * num_perm - 1e-9)
        estimated = {(a, b) for a, b in near if np.count_nonzero(sig[a] == sig[b]) >= need}
        out[f"pairwise_estimate_{num_perm}"] = _precision_recall(estimated, truth)
    return out


DEFINITIONS = {
    "removed": "documents whose label is not themselves: find_clusters would drop them",
    "removal_precision": "share of removed documents whose label (the retained document they "
    "were matched to) has true Jaccard >= threshold with them",
    "pair_recall": "share of true pairs (exact Jaccard >= threshold, over all pairs of the "
    "corpus) in which at least one document was removed",
    "planted_recall": "pair_recall restricted to the planted (base, copy) pairs whose true "
    "Jaccard is >= threshold",
    "planted_ambiguous": "planted pairs whose true Jaccard lies within 0.05 of the threshold "
    "([0.75, 0.85) at 0.8): where the estimate's noise decides",
    "cluster_pairs": "old figures: every two documents with the same label form a declared "
    "pair; precision = share of declared pairs that are true pairs, recall = share of true "
    "pairs that are declared",
    "tolerant": "removal precision counting a match with Jaccard >= threshold - 0.1 as right; "
    "pair recall over true pairs with Jaccard >= threshold + 0.1",
    "curve": "per edit rate of the planted copies: share_removed = share of planted pairs with "
    "one document removed, recall_of_true_pairs = the same among its true pairs",
    "variant": "PERMxBANDS/LINK/VERIFY: num_perm hashes in that many LSH bands; LINK is "
    "find_clusters' link; VERIFY estimate = signature agreement, exact = Jaccard of shingle sets",
    "lsh_threshold": "(1 / bands) ** (1 / rows): Jaccard at which a pair becomes a candidate "
    "with probability ~1/2",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=12_000, help="documents in the corpus")
    parser.add_argument("--dup-share", type=float, default=0.3, help="share of planted copies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.8, help="true-pair Jaccard")
    parser.add_argument(
        "--rates", default=",".join(map(str, RATES)), help="edit rates of the planted copies"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma list of PERMxBANDS/LINK/VERIFY; the first gives the headline figures",
    )
    parser.add_argument("--char-ngram", type=int, default=MinHashParams.char_ngram)
    parser.add_argument(
        "--word-ngram", type=int, default=MinHashParams.word_ngram, help="0: characters for all"
    )
    parser.add_argument(
        "--ceilings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compute the idealised detectors (slow at low thresholds)",
    )
    args = parser.parse_args(argv)

    variants = [Variant.parse(v) for v in args.variants.split(",")]
    # the shingling of truth and detectors alike (default: the MinHashParams defaults)
    shingling = MinHashParams(char_ngram=args.char_ngram, word_ngram=args.word_ngram)
    MinHasher(shingling).signatures(["warm up", "预热"])  # lookup tables: not what is timed
    rates = tuple(float(r) for r in args.rates.split(","))
    corpus = make_corpus(args.docs, args.seed, args.dup_share, rates)
    sets = [
        frozenset(shingle_strings(t, shingling.char_ngram, shingling.word_ngram))
        for t in corpus.texts
    ]
    truth = Truth(corpus, sets, args.threshold)

    results, sigs = [], {}
    for variant in variants:
        labels, sig, timing = run_variant(
            corpus.texts, variant, args.threshold, shingling.char_ngram, shingling.word_ngram
        )
        sigs.setdefault(variant.num_perm, sig)
        rows = variant.num_perm // variant.bands
        results.append(
            {
                "variant": variant.name,
                "lsh_threshold": round((1 / variant.bands) ** (1 / rows), 3),
                **truth.score(labels),
                "timing": timing,
            }
        )
    head = results[0]
    planted_j = truth.planted_j
    result = {
        "definitions": DEFINITIONS,
        "docs": len(corpus.texts),
        "docs_zh": corpus.langs.count("zh"),
        "mean_chars": round(float(np.mean([len(t) for t in corpus.texts])), 1),
        "threshold": args.threshold,
        "shingling": {"char_ngram": shingling.char_ngram, "word_ngram": shingling.word_ngram},
        "planted_pairs": len(corpus.planted),
        "planted_true_pairs": len(truth.planted_true),
        "planted_ambiguous": sum(truth.ambiguous(j) for j in planted_j),
        "true_pairs": len(truth.pairs),
        "true_pairs_not_planted": len(
            truth.pairs - {(min(a, b), max(a, b)) for a, b, _ in corpus.planted}
        ),
        "headline": {
            k: head[k]
            for k in ("variant", "removal_precision", "pair_recall", "planted_recall", "removed")
        }
        | {"cluster_pairs": head["cluster_pairs"]},
        "planted_by_edit_rate": truth.rate_table(),
        "ceilings": ceilings(sets, truth.pairs, sigs, args.threshold) if args.ceilings else None,
        "variants": results,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
