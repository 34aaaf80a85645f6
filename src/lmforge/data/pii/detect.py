"""Span detection: every requested detector on the original text, then overlap resolution.

Other span sources plug in as callables; a person-name finder `text -> [(start, end)]`
contributes spans of type NAME.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection

from lmforge.data.pii.detectors import (
    find_bank_cards,
    find_cn_ids,
    find_emails,
    find_ips,
    find_passports,
    find_phones,
)
from lmforge.data.pii.spans import PLACEHOLDER_TOKEN, PiiSpan, check_types, resolve_overlaps
from lmforge.data.pii.urls import find_url_secrets
from lmforge.errors import ConfigError

NameFinder = Callable[[str], list[tuple[int, int]]]

_DETECTORS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "URL_SECRET": find_url_secrets,
    "EMAIL": find_emails,
    "ID_CN": find_cn_ids,
    "BANK_CARD": find_bank_cards,
    "PASSPORT": find_passports,
    "IP": find_ips,
    "PHONE": find_phones,
}
# Every structured identifier has a digit, an '@' or a '://' (IPv6 written only with the
# letters a-f is the one exception given up for this fast path).
_TRIGGER = re.compile(r"[0-9@]|://")


class PiiDetector:
    """Detects the requested types (all built-in ones for None) and, with a `name_finder`,
    NAME spans; build once, call per text."""

    def __init__(
        self, types: Collection[str] | None = None, name_finder: NameFinder | None = None
    ) -> None:
        wanted = check_types(types)
        if types is not None and "NAME" in wanted and name_finder is None:
            raise ConfigError(
                "PII type 'NAME' needs a name finder; pass name_finder=... or drop 'NAME' "
                "from types"
            )
        if name_finder is not None and not callable(name_finder):
            raise ConfigError(
                f"name_finder must be a function text -> [(start, end)], got {name_finder!r}"
            )
        self.types = wanted
        # A finder given is a request for names: `types` restricts the built-in detectors.
        self.name_finder = name_finder
        self._detectors = [(t, f) for t, f in _DETECTORS.items() if t in wanted]

    def __call__(self, text: str) -> list[PiiSpan]:
        spans: list[PiiSpan] = []
        if _TRIGGER.search(text):
            for kind, find in self._detectors:
                spans += (PiiSpan(s, e, kind) for s, e in find(text))
        if self.name_finder is not None:
            spans += (PiiSpan(s, e, "NAME") for s, e in self._names(text))
        if not spans:
            return spans
        if "[" in text:
            # An earlier masking pass left these; their hex part must not be found again.
            masked = [m.span() for m in PLACEHOLDER_TOKEN.finditer(text)]
            spans = [s for s in spans if all(s.end <= a or s.start >= b for a, b in masked)]
        return resolve_overlaps(spans)

    def _names(self, text: str) -> list[tuple[int, int]]:
        found = []
        for item in self.name_finder(text):  # type: ignore[misc]
            try:
                start, end = (operator.index(x) for x in item)
            except (TypeError, ValueError):
                start, end = -1, -1
            if not 0 <= start < end <= len(text):
                raise ConfigError(
                    f"name_finder returned {item!r} for a text of {len(text)} characters; "
                    "it must return (start, end) pairs with 0 <= start < end <= len(text)"
                )
            found.append((start, end))
        return found


def detect_pii(
    text: str, types: Collection[str] | None = None, name_finder: NameFinder | None = None
) -> list[PiiSpan]:
    """Non-overlapping PII spans of `text` in text order: the built-in types in `types` (all
    for None), and NAME whenever a `name_finder` is given."""
    return PiiDetector(types, name_finder)(text)
