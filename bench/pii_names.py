"""Benchmark the person-name detectors used for PII masking.

    python bench/pii_names.py --msra /path/to/msra_ner.zip

Chinese: entity-level PER precision / recall / F1 of the shipped tagger on the full held-out
MSRA test split (the 10 % of sentences the trainer never sees), both for the raw tagger and for
`find_chinese_names` (chunking + surname gate), and throughput on one core. English: precision
and recall of `find_english_names` on a synthetic set built here from templates. Prints ONE
JSON object on stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads its BLAS: one core

import argparse
import json
import random
import sys
import time
from pathlib import Path

from lmforge.data.names import find_chinese_names, find_english_names
from lmforge.data.names.msra import read_msra, span_score, split_sentences, tag_spans
from lmforge.data.names.zh_names import get_tagger
from lmforge.data.names.zh_tagger import WEIGHTS

DEFAULT_MSRA = Path(__file__).resolve().parents[2] / "shared/data/chinese/msra_ner.zip"

# Synthetic English set: templates with a {name} slot, filled with names, and sentences that
# hold capitalised non-names (places, brands, months) where nothing should be found.
# The last three are also everyday words: alone they are not found, by design (recall cost).
_EN_FIRST = ["John", "Sarah", "Michael", "Emily", "David", "Laura", "James", "Olivia", "Kevin"]
_EN_FIRST += ["Jordan", "Grace", "Will"]
_EN_LAST = ["Smith", "Johnson", "Lee", "Garcia", "Brown", "Nguyen", "Patel", "Walker", "Reed"]
_EN_TITLES = ["Mr.", "Mrs.", "Ms.", "Dr.", "Prof."]
_EN_TEMPLATES = [
    "Please call {name} about the refund.",
    "The package was signed for by {name} yesterday.",
    "{name} said the battery lasts two days.",
    "I spoke with {name} from the support team.",
    "Thanks to {name}, the issue was fixed quickly.",
    "Send the invoice to {name} before Friday.",
]
_EN_NEGATIVES = [
    "I bought a Kindle in Paris last May.",
    "Jordan shoes run small, order a size up.",
    "The Apple Watch Series 9 arrived on Monday.",
    "We drove from Austin to Dallas in June.",
    "Will the Samsung Galaxy charger work with this?",
    "Grace Hospital is on Lincoln Avenue.",
    "The Amazon Basics cable broke after a week.",
    "Hope the Chelsea game is on Sunday.",
    "Victoria Park and Sydney Harbour were crowded.",
    "General Motors announced a new Chevrolet model.",
    "Chase Bank closed my account without notice.",
    "We visited the Lincoln Memorial and Jackson Hole.",
    "Mark the date: April Fools is on a Tuesday.",
    "The Georgia Peach Festival starts in July.",
]


def english_synthetic(n: int, seed: int) -> list[tuple[str, list[tuple[int, int]]]]:
    rng = random.Random(seed)
    items: list[tuple[str, list[tuple[int, int]]]] = []
    for i in range(n):
        if i % 3 == 2:
            items.append((rng.choice(_EN_NEGATIVES), []))
            continue
        first, last = rng.choice(_EN_FIRST), rng.choice(_EN_LAST)
        form = rng.randrange(3)
        name = f"{first} {last}" if form == 0 else last if form == 1 else first
        shown = f"{rng.choice(_EN_TITLES)} {name}" if form == 1 else name
        template = rng.choice(_EN_TEMPLATES)
        text = template.format(name=shown)
        start = text.index(shown) + len(shown) - len(name)
        items.append((text, [(start, start + len(name))]))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msra", default=str(DEFAULT_MSRA), help="path of msra_ner.zip")
    parser.add_argument("--batch-size", type=int, default=256, help="tagger batch size")
    parser.add_argument("--en-items", type=int, default=600, help="synthetic English sentences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    test = split_sentences(read_msra(args.msra)).test
    texts = [s.text for s in test]
    gold = [tag_spans(s.tags) for s in test]
    tagger = get_tagger()
    tagger.spans(texts[:256], args.batch_size)  # warm-up: first-call allocations

    started = time.perf_counter()
    raw = tagger.spans(texts, args.batch_size)
    raw_seconds = time.perf_counter() - started
    started = time.perf_counter()
    public = [find_chinese_names(t) for t in texts]
    public_seconds = time.perf_counter() - started
    raw_score = span_score(gold, raw)
    public_score = span_score(gold, public)

    en = english_synthetic(args.en_items, args.seed)
    en_score = span_score([g for _, g in en], [find_english_names(t) for t, _ in en])

    result = {
        "weights": WEIGHTS.name,
        "weights_bytes": WEIGHTS.stat().st_size,
        "zh_test_sentences": len(test),
        "zh_test_chars_mean": round(sum(map(len, texts)) / len(texts), 1),
        "zh_test_entities": raw_score.gold,
        "zh_per_precision": round(raw_score.precision, 4),
        "zh_per_recall": round(raw_score.recall, 4),
        "zh_per_f1": round(raw_score.f1, 4),
        "zh_batched_sentences_per_s": round(len(texts) / raw_seconds, 1),
        "zh_find_chinese_names_per_s": round(len(texts) / public_seconds, 1),
        "zh_find_chinese_names_f1": round(public_score.f1, 4),
        "zh_find_chinese_names_recall": round(public_score.recall, 4),
        "threads": 1,
        "cpu_load_1min": round(os.getloadavg()[0], 2),  # throughput drops on a shared machine
        "en_synthetic": True,
        "en_items": len(en),
        "en_entities": en_score.gold,
        "en_precision": round(en_score.precision, 4),
        "en_recall": round(en_score.recall, 4),
        "en_f1": round(en_score.f1, 4),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
