"""Shingling for near-duplicate detection: texts -> uint64 shingle hashes, a whole batch at once.

Canonical form: case-folded, punctuation and symbols dropped, whitespace collapsed (NFKC is done
upstream). A text whose letters are mostly CJK (Han, kana, hangul: share >= `CJK_SHARE`) is
shingled by characters with spaces removed, since it has no word boundaries; any other text by
words, unless `word_ngram` is 0: then every text is shingled by characters, which keeps a short
text with a typo or two close to its original. A text shorter than one shingle gives one
shingle of the whole text.

Hashes are polynomial over code points in uint64 wrap-around arithmetic, taken for every span at
once from prefix sums, then mixed: no per-shingle Python loop and no `hash()`, so the values are
the same in every process and on every machine. `shingle_strings` is the slow reference of the
same shingling, for ground truth and for feeding other libraries.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmforge.data.charclass import CJK

CJK_SHARE = 0.3
_SEP = "\x00"  # joins a batch; replaced where a text carries it
_P = np.uint64(0x100000001B3 | 0x9E3779B97F4A7C15)  # odd base of the polynomial hash
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_LEN_SALT = np.uint64(0xD6E8FEB86659FD93)
_U64 = np.uint64


def mix64(x: np.ndarray) -> np.ndarray:
    """Spread every input bit over the whole word (splitmix64 finaliser); returns a new array."""
    z = x ^ (x >> _U64(30))
    z *= _U64(0xBF58476D1CE4E5B9)
    z ^= z >> _U64(27)
    z *= _U64(0x94D049BB133111EB)
    z ^= z >> _U64(31)
    return z


def _ranges(spec: str) -> list[tuple[int, int]]:
    # charclass writes classes as "a-bc-d..." with one character per bound
    return [(ord(spec[i]), ord(spec[i + 2])) for i in range(0, len(spec), 3)]


@functools.cache
def _cjk_table() -> np.ndarray:
    table = np.zeros(0x10000, dtype=bool)  # every CJK range of charclass lies in the BMP
    for lo, hi in _ranges(CJK):
        table[lo : hi + 1] = True
    return table


def _keeps(char: str) -> bool:
    # letters, digits and combining marks (without marks, Indic words would fall apart)
    return char.isalnum() or unicodedata.category(char)[0] == "M"


@functools.cache
def _keep_table() -> np.ndarray:
    return np.array([_keeps(chr(c)) for c in range(0x10000)], dtype=bool)


def canonical_text(text: str) -> str:
    """Case-folded text with everything but letters, digits and marks turned into single spaces."""
    return " ".join("".join(c if _keeps(c) else " " for c in text.casefold()).split())


def _is_cjk_counts(canon: str) -> bool:
    cjk = sum(1 for c in canon if ord(c) < 0x10000 and _cjk_table()[ord(c)])
    letters = sum(1 for c in canon if c != " " and not "0" <= c <= "9")
    return letters > 0 and cjk >= CJK_SHARE * letters


def shingle_strings(text: str, char_ngram: int, word_ngram: int) -> list[str]:
    """The shingles of `text` as strings, in order (with repeats): the reference implementation.

    Character shingles join nothing ("你好世界"), word shingles join words by one space.
    """
    canon = canonical_text(text)
    if word_ngram == 0 or _is_cjk_counts(canon):
        chars = canon.replace(" ", "")
        if len(chars) <= char_ngram:
            return [chars]
        return [chars[i : i + char_ngram] for i in range(len(chars) - char_ngram + 1)]
    words = canon.split(" ") if canon else []
    if len(words) <= word_ngram:
        return [" ".join(words)]
    return [" ".join(words[i : i + word_ngram]) for i in range(len(words) - word_ngram + 1)]


class _Powers:
    """P**i and P**-i (mod 2**64) for i < n, grown on demand and shared by all batches."""

    def __init__(self) -> None:
        self.pw = np.ones(1, dtype=np.uint64)
        self.inv = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > len(self.pw):
            size = max(n, 2 * len(self.pw), 1 << 16)
            pw = np.full(size, _P, dtype=np.uint64)
            pw[0] = 1
            inv = np.full(size, _P_INV, dtype=np.uint64)
            inv[0] = 1
            # cumprod wraps modulo 2**64, which is the arithmetic the hash is defined in
            self.pw, self.inv = np.cumprod(pw), np.cumprod(inv)
        return self.pw[:n], self.inv[:n]


_POWERS = _Powers()


def span_hashes(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mixed hash of every span values[starts[i]:ends[i]] (uint64), without a Python loop.

    prefix[i] = sum(values[j] * P**j, j < i), so a span's polynomial is the prefix difference
    scaled back by P**-start; the length is folded in so that spans of zeros still differ.
    """
    pw, inv = _POWERS.get(len(values) + 1)
    prefix = np.empty(len(values) + 1, dtype=np.uint64)
    prefix[0] = 0
    np.cumsum(values.astype(np.uint64, copy=False) * pw[: len(values)], out=prefix[1:])
    poly = (prefix[ends] - prefix[starts]) * inv[starts]
    poly += (ends - starts).astype(np.uint64) * _LEN_SALT
    return mix64(poly)


@dataclass(frozen=True)
class ShingleBatch:
    """Shingle hashes of a batch: those of text i are hashes[offsets[i]:offsets[i + 1]].

    Repeats within a text are kept (a min-hash does not mind them); every text has at least one.
    """

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len(texts) + 1
    cjk: np.ndarray  # bool per text: shingled by characters


def _code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code points of the case-folded batch, the separator mask and the content mask.

    Content (letters, digits, marks) comes from a table lookup per code point rather than a regex
    substitution, which was the slowest step; anything else only separates words.
    """
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1:  # a text carries the separator itself: clean it
        joined = _SEP.join(t.replace(_SEP, " ") for t in texts)
    # surrogatepass: a lone surrogate (left by a broken decode) is then just a separator
    folded = joined.casefold().encode("utf-32-le", errors="surrogatepass")
    cp = np.frombuffer(folded, dtype=np.uint32)
    content = _keep_table()[np.minimum(cp, 0xFFFF)]
    astral = cp > 0xFFFF  # rare outside emoji: decide those per distinct code point
    if astral.any():
        where = np.flatnonzero(astral)
        kinds, inverse = np.unique(cp[where], return_inverse=True)
        content[where] = np.array([_keeps(chr(c)) for c in kinds], dtype=bool)[inverse]
    return cp, cp == 0, content


def _per_text(counts_prefix: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    # counts of a mask inside each text, from its cumulative sum sampled at the text bounds
    return counts_prefix[bounds[1:]] - counts_prefix[bounds[:-1]]


def hash_shingles(texts: Sequence[str], char_ngram: int, word_ngram: int) -> ShingleBatch:
    """Hash the shingles of all `texts` at once (same shingles as `shingle_strings`)."""
    n = len(texts)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return ShingleBatch(empty, np.zeros(1, dtype=np.int64), np.zeros(0, dtype=bool))
    cp, sep, content = _code_points(texts)
    # bounds[i]..bounds[i+1] covers text i (its closing separator included: it is no content)
    bounds = np.concatenate(([0], np.flatnonzero(sep) + 1, [len(cp)]))
    text_of = np.cumsum(sep)  # text index of every position

    cjk_mask = _cjk_table()[np.minimum(cp, 0xFFFF)]
    digit = (cp >= 48) & (cp <= 57)
    cjk_prefix = np.concatenate(([0], np.cumsum(cjk_mask)))
    letter_prefix = np.concatenate(([0], np.cumsum(content & ~digit)))
    letters = _per_text(letter_prefix, bounds)
    cjk_text = (letters > 0) & (_per_text(cjk_prefix, bounds) >= CJK_SHARE * letters)
    if word_ngram == 0:
        cjk_text[:] = True  # character shingles for every text

    # Units: code points for character-shingled texts, word hashes (kept at the position where
    # the word starts) for the others; shingles are n-grams of units within one text.
    prev_content = np.concatenate(([False], content[:-1]))
    next_content = np.concatenate((content[1:], [False]))
    word_start = np.flatnonzero(content & ~prev_content)
    word_end = np.flatnonzero(content & ~next_content) + 1
    keep_words = ~cjk_text[text_of[word_start]]
    word_start, word_end = word_start[keep_words], word_end[keep_words]
    unit_value = cp.astype(np.uint64)
    unit_value[word_start] = span_hashes(cp, word_start, word_end)
    is_unit = content & cjk_text[text_of]
    is_unit[word_start] = True
    unit_pos = np.flatnonzero(is_unit)
    units = unit_value[unit_pos]

    unit_count = np.bincount(text_of[unit_pos], minlength=n)
    unit_off = np.concatenate(([0], np.cumsum(unit_count)))
    ngram = np.where(cjk_text, char_ngram, word_ngram)
    shingle_count = np.maximum(unit_count - ngram + 1, 1)
    offsets = np.concatenate(([0], np.cumsum(shingle_count)))
    total = int(offsets[-1])
    within = np.arange(total) - np.repeat(offsets[:-1], shingle_count)
    starts = np.repeat(unit_off[:-1], shingle_count) + within
    ends = np.minimum(
        starts + np.repeat(ngram, shingle_count), np.repeat(unit_off[1:], shingle_count)
    )
    return ShingleBatch(span_hashes(units, starts, ends), offsets, cjk_text)
