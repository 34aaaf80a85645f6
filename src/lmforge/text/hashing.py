"""Normalised-text hashes and a compact set of them, for exact deduplication.

Shared by the data stage (drop exact duplicates) and the demo generator (never plant an
accidental duplicate that the ground truth would call clean).
"""

from __future__ import annotations

import hashlib
import unicodedata
from array import array


def dedup_key(text: str) -> int:
    """64-bit hash of the text after NFKC, casefolding and whitespace collapse."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return int.from_bytes(hashlib.blake2b(folded.encode(), digest_size=8).digest(), "little")


class HashSet64:
    """A set of 64-bit hashes in one flat array (open addressing, linear probing).

    8 bytes per slot, at most half the slots used: 8-16 bytes per document, against ~70
    for a Python set of ints.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._slots = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _slot(self, key: int) -> int:
        """Where `key` is, or the empty slot where it would go."""
        slots, mask = self._slots, self._mask
        i = key & mask
        while slots[i] not in (key, 0):
            i = (i + 1) & mask
        return i

    def __contains__(self, key: int) -> bool:
        key = key or 1  # 0 marks an empty slot
        return self._slots[self._slot(key)] != 0

    def add(self, key: int) -> bool:
        """Insert `key`; False if it was already there."""
        key = key or 1
        i = self._slot(key)
        if self._slots[i]:
            return False
        self._slots[i] = key
        self._size += 1
        if 2 * self._size > len(self._slots):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._mask = len(self._slots) - 1
        self._size = 0
        for key in old:
            if key:
                self.add(key)
