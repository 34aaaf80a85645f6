"""Keeps the generated originals apart: no two of them are near-duplicates of each other.

The ground truth calls every original clean and distinct, so two originals composed of
almost the same clauses would be a near-duplicate pair it does not know of, and a cleaning
line that removes one of them would be charged with losing a clean document. The phrase
banks are finite, so such twins grow with the corpus (a few percent of 100k reviews).
"""

from __future__ import annotations

import zlib
from array import array

import numpy as np

from lmforge.data.shingles import mix64, shingle_strings

LIMIT = 0.6  # refused: character 3-gram Jaccard >= this with an admitted text
BANDS, ROWS = 40, 5  # a pair at Jaccard J shares a band with probability 1 - (1 - J**5)**40
CHAR_NGRAM = 3  # the cleaning line's default shingles
_GOLDEN = 0x9E3779B97F4A7C15
_KEY_MASK = 0xFFFFFFFF  # a band hash cut to 32 bits: a rare false match costs one exact check


class LatestByKey:
    """A map from 32-bit keys (longer ones are cut to their low 32 bits) to the last int32
    value stored under them, in flat arrays (open addressing, linear probing, at most half
    full): 16-32 bytes per key."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._keys = array("I", bytes(4 * capacity))
        self._values = array("i", bytes(4 * capacity))
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _slot(self, key: int) -> int:
        keys, mask = self._keys, len(self._keys) - 1
        i = key & mask
        while keys[i] not in (key, 0):
            i = (i + 1) & mask
        return i

    def get(self, key: int) -> int | None:
        key = (key & _KEY_MASK) or 1  # 0 marks an empty slot
        i = self._slot(key)
        return self._values[i] if self._keys[i] else None

    def put(self, key: int, value: int) -> None:
        key = (key & _KEY_MASK) or 1
        i = self._slot(key)
        if not self._keys[i]:
            self._keys[i] = key
            self._size += 1
        self._values[i] = value
        if 2 * self._size > len(self._keys):
            self._grow()

    def _grow(self) -> None:
        keys, values = self._keys, self._values
        self._keys = array("I", bytes(8 * len(keys)))
        self._values = array("i", bytes(8 * len(values)))
        self._size = 0
        for key, value in zip(keys, values, strict=True):
            if key:
                self.put(key, value)


class NearTwinGuard:
    """Admits a text unless an admitted text is at character 3-gram Jaccard >= LIMIT to it.

    Candidates come from MinHash bands (the last admitted text per band hash); each is checked
    on exact shingle sets, so only true twins are refused and the generator draws again. A
    twin at Jaccard 0.65 shares a band with probability 0.993 (0.96 at 0.6, 0.9994 at 0.7).
    A band whose last text is not the twin hides it, so this is a strong filter, not a proof:
    bands of five rows are specific enough that few unrelated texts overwrite a twin's (300k
    originals: about 950 twins at Jaccard >= 0.65 left, against 10,700 with 16 bands of
    three rows). Memory per admitted text: its 32-bit shingle fingerprints and 40 band
    entries (about 1 KB).

    One text at a time, so shingles are hashed in Python (CRC-32, stable across processes)
    rather than by the cleaning line's batch hasher, whose fixed cost per call is ~10x more.
    """

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self._mul = rng.integers(1, 1 << 63, size=BANDS * ROWS, dtype=np.uint64) | np.uint64(1)
        self._add = rng.integers(0, 1 << 63, size=BANDS * ROWS, dtype=np.uint64)
        # A band's hash is salted with its index: equal rows in different bands do not meet.
        self._salt = mix64(np.arange(1, BANDS + 1, dtype=np.uint64))
        self._latest = LatestByKey()
        self._sets: list[np.ndarray] = []  # sorted distinct uint32 fingerprints per admitted text

    @property
    def admitted(self) -> int:
        return len(self._sets)

    def _sketch(self, text: str) -> tuple[np.ndarray, list[int]]:
        shingles = set(shingle_strings(text, CHAR_NGRAM, 0))
        mine = np.unique(np.fromiter((zlib.crc32(s.encode()) for s in shingles), np.uint32))
        mins = (mine.astype(np.uint64)[:, None] * self._mul + self._add).min(axis=0)
        rows = (mins >> np.uint64(32)).reshape(BANDS, ROWS)
        key = self._salt.copy()
        for r in range(ROWS):
            key = mix64(key * np.uint64(_GOLDEN) + rows[:, r])
        return mine, key.tolist()

    def admit(self, text: str) -> bool:
        """Remember `text` and return True, or return False if it is near an admitted text."""
        mine, keys = self._sketch(text)
        checked: set[int] = set()
        for key in keys:
            other = self._latest.get(key)
            if other is None or other in checked:
                continue
            checked.add(other)
            theirs = self._sets[other]
            shared = len(np.intersect1d(mine, theirs, assume_unique=True))
            if shared >= LIMIT * (len(mine) + len(theirs) - shared):
                return False
        number = len(self._sets)
        self._sets.append(mine)
        for key in keys:
            self._latest.put(key, number)
        return True


__all__ = ["LIMIT", "LatestByKey", "NearTwinGuard"]
