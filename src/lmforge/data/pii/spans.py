"""The PII vocabulary: types, the span a detector reports, and overlap resolution.

Detectors report spans on the original text; the masker rewrites it once. When spans of
different detectors overlap, the type earlier in `PRIORITY` wins, then the longer span:
a resident ID or card number contains digit runs a phone pattern would also claim, and an
e-mail pattern would claim "password@host" inside a URL with credentials.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from lmforge.config import PII_TYPE_NAMES
from lmforge.errors import ConfigError

PII_TYPES: tuple[str, ...] = PII_TYPE_NAMES  # defined with the config that selects among them
# Overlap resolution: the earlier type wins.
PRIORITY: tuple[str, ...] = (
    "URL_SECRET",
    "EMAIL",
    "ID_CN",
    "BANK_CARD",
    "PASSPORT",
    "IP",
    "PHONE",
    "NAME",
)
_RANK = {t: i for i, t in enumerate(PRIORITY)}

# What a masker writes: "[PHONE]" or "[PHONE_3fa9c2d1]". Spans overlapping one are dropped,
# so masking already masked text changes nothing (the hex part could look like digits).
PLACEHOLDER_TOKEN = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")(?:_[0-9a-f]{8})?\]")


@dataclass(frozen=True)
class PiiSpan:
    """`text[start:end]` is an identifier of `type` (one of `PII_TYPES`)."""

    start: int
    end: int
    type: str


def check_types(types: Collection[str] | None) -> frozenset[str]:
    """The requested types as a set (all of them for None); unknown names are a ConfigError."""
    if types is None:
        return frozenset(PII_TYPES)
    if isinstance(types, str):
        raise ConfigError(
            f"PII types must be a list of type names, got the string {types!r}; "
            f"write [{types!r}] (valid: {', '.join(PII_TYPES)})"
        )
    unknown = sorted(str(t) for t in types if t not in _RANK)
    if unknown:
        raise ConfigError(
            f"unknown PII type(s) {', '.join(map(repr, unknown))}; "
            f"use any of {', '.join(PII_TYPES)}"
        )
    return frozenset(types)


def resolve_overlaps(spans: Iterable[PiiSpan]) -> list[PiiSpan]:
    """Non-overlapping spans in text order: priority first, then the longer, then the earlier."""
    ordered = sorted(spans, key=lambda s: (_RANK[s.type], s.start - s.end, s.start))
    starts: list[int] = []  # the taken spans, kept sorted by start; they never overlap
    taken: list[PiiSpan] = []
    for span in ordered:
        i = bisect.bisect_left(starts, span.start)
        if i < len(taken) and taken[i].start < span.end:
            continue  # the next taken span begins inside this one
        if i > 0 and taken[i - 1].end > span.start:
            continue  # the previous taken span reaches into this one
        starts.insert(i, span.start)
        taken.insert(i, span)
    return taken
