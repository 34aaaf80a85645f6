"""MSRA NER corpus reading, the deterministic train/dev/test split and PER span scoring.

The corpus is one `char<TAB>tag` pair a line with a blank line between sentences. Only person
names matter here, so every tag other than B-PER/I-PER is read as O. The split hashes the
sentence text, so it never depends on file order and duplicates land in the same part.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import InputDataError

MEMBER = "dh_msra.txt"
# Tag ids shared by the trainer, the tagger and the decoder.
TAG_O, TAG_B, TAG_I = 0, 1, 2
_PER_TAGS = {"B-PER": TAG_B, "I-PER": TAG_I}


@dataclass(frozen=True)
class Sentence:
    text: str
    tags: tuple[int, ...]  # TAG_O / TAG_B / TAG_I, one per character


@dataclass(frozen=True)
class Split:
    train: list[Sentence]
    dev: list[Sentence]
    test: list[Sentence]


def read_msra(path: str | Path) -> list[Sentence]:
    """All sentences of the MSRA zip (or of an extracted `dh_msra.txt`), in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(
            f"MSRA NER data not found at {path}: pass --msra with the path of msra_ner.zip"
        )
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                raw = zf.read(MEMBER)
        else:
            raw = path.read_bytes()
        lines = raw.decode("utf-8").splitlines()
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise InputDataError(
            f"cannot read MSRA NER data from {path} ({exc}): expected a zip holding {MEMBER} "
            "with one 'char<TAB>tag' pair a line"
        ) from None
    return parse_lines(lines, str(path))


def parse_lines(lines: Iterable[str], origin: str = "<lines>") -> list[Sentence]:
    sentences: list[Sentence] = []
    chars: list[str] = []
    tags: list[int] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            if chars:
                sentences.append(Sentence("".join(chars), tuple(tags)))
                chars, tags = [], []
            continue
        parts = line.split("\t")
        if len(parts) != 2 or len(parts[0]) != 1:
            raise InputDataError(
                f"{origin} line {lineno}: {line!r} is not 'char<TAB>tag'; "
                "use the MSRA NER file in its original format"
            )
        tag = _PER_TAGS.get(parts[1].strip(), TAG_O)
        if tag == TAG_I and (not tags or tags[-1] == TAG_O):
            tag = TAG_B  # a few stray I-PER open a name; the CRF forbids I after O
        chars.append(parts[0])
        tags.append(tag)
    if chars:
        sentences.append(Sentence("".join(chars), tuple(tags)))
    return sentences


def _bucket(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def split_sentences(sentences: Sequence[Sentence], dev_mod: int = 20) -> Split:
    """Test: hash % 10 == 0 (about 10 %). Dev: a further 1/dev_mod of the rest, for early
    stopping. Train: everything else."""
    train: list[Sentence] = []
    dev: list[Sentence] = []
    test: list[Sentence] = []
    for sent in sentences:
        h = _bucket(sent.text)
        if h % 10 == 0:
            test.append(sent)
        elif (h // 10) % dev_mod == 0:
            dev.append(sent)
        else:
            train.append(sent)
    return Split(train, dev, test)


def tag_spans(tags: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) spans of names in a B/I/O sequence; a stray I starts a new name, as the
    usual conlleval scoring does."""
    spans: list[tuple[int, int]] = []
    start = -1
    for i, tag in enumerate(tags):
        if tag == TAG_B or (tag == TAG_I and start < 0):
            if start >= 0:
                spans.append((start, i))
            start = i
        elif tag == TAG_O and start >= 0:
            spans.append((start, i))
            start = -1
    if start >= 0:
        spans.append((start, len(tags)))
    return spans


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float
    gold: int
    predicted: int
    correct: int


def span_score(
    gold: Iterable[Iterable[tuple[int, int]]], predicted: Iterable[Iterable[tuple[int, int]]]
) -> Score:
    """Entity-level exact-match precision / recall / F1 over aligned lists of span sets."""
    n_gold = n_pred = n_ok = 0
    for g, p in zip(gold, predicted, strict=True):
        gs, ps = set(g), set(p)
        n_gold += len(gs)
        n_pred += len(ps)
        n_ok += len(gs & ps)
    precision = n_ok / n_pred if n_pred else 0.0
    recall = n_ok / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(precision, recall, f1, n_gold, n_pred, n_ok)
