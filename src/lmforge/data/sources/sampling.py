"""Deterministic per-record sampling for a source's `weight`.

A record is kept when a hash of where it sits (source, file, table, row or offset) falls
under the weight. blake2b, unlike Python's `hash()`, gives the same answer in every run and
every process, so a sampled mix can be rebuilt exactly and split across workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

_SCALE = float(2**64)


def position_key(source: str, rel_path: str, meta: Mapping[str, Any]) -> str:
    position = meta.get("row", meta.get("offset"))
    return f"{source}\x00{rel_path}\x00{meta.get('table', '')}\x00{position}"


def keeps(key: str, weight: float) -> bool:
    """True for about `weight` of all keys, always the same ones."""
    if weight >= 1.0:
        return True
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE < weight
