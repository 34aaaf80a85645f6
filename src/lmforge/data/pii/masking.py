"""Rewriting detected spans, in one pass over the original text, in one of three modes.

- placeholder: the type in brackets, `[PHONE]`.
- pseudonym: the type and a keyed digest of the canonical value, `[PHONE_3fa9c2d1]`: one
  phone number, however it is written, gets one token in every document, and different
  values get different tokens. The digest is HMAC-SHA256 under the caller's key, cut to 8
  hex digits (a collision merges two values; among 100,000 distinct values of one type
  some pair collides with a probability of about 70%, any given value almost never).
  Phones, IDs and cards have so few possible values that whoever holds the key can recover
  them by trying every number, so the key is required and must be kept secret.
- redact: the value is removed and leaves no hint of its type; no doubled space and no
  space at a line's start or end is left ("call 138... now" -> "call now"). Removal rather
  than a same-length mask: the length would still tell the kind and how it was written.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections import Counter
from collections.abc import Collection

from lmforge.data.pii.detect import NameFinder, PiiDetector
from lmforge.data.pii.spans import PiiSpan
from lmforge.errors import ConfigError

MODES = ("placeholder", "pseudonym", "redact")
_NON_DIGIT = re.compile(r"[^0-9]")
_CN_PREFIX = re.compile(r"^[(（]?(?:\+86|0086)")
_CN_MOBILE = re.compile(r"1[3-9][0-9]{9}")


def canonical_value(kind: str, value: str) -> str:
    """The form two spellings of one identifier share (what a pseudonym is keyed on)."""
    if kind == "PHONE":
        digits = _NON_DIGIT.sub("", value)
        if _CN_PREFIX.match(value):  # +86 10 1234 5678 is 010-1234 5678 written abroad
            national = digits[4:] if value.lstrip("(（").startswith("0086") else digits[2:]
            return national if _CN_MOBILE.fullmatch(national) else "0" + national
        return "+" + digits if "+" in value else digits
    if kind == "BANK_CARD":
        return _NON_DIGIT.sub("", value)
    if kind in ("ID_CN", "PASSPORT"):
        return re.sub(r"[ -]", "", value).upper()
    if kind == "EMAIL":
        return value.lower()
    if kind == "IP":
        try:
            return ipaddress.ip_address(value).compressed
        except ValueError:
            return value.lower()
    return value.strip()


def _key_bytes(key: bytes | str | None) -> bytes:
    if key is not None and not isinstance(key, (bytes, str)):
        raise ConfigError(f"PII key must be bytes or str, got {type(key).__name__}")
    if not key:
        raise ConfigError(
            "PII mode 'pseudonym' needs a secret key: pass key=... (bytes or str, kept out of "
            "the data); without one, pseudonyms of phone numbers can be reversed by trial"
        )
    return key.encode("utf-8") if isinstance(key, str) else key


class PiiRewriter:
    """Detects and rewrites PII in one mode; build once, call `mask` per text. The key is
    used by pseudonym mode only; the other modes ignore it."""

    def __init__(
        self,
        mode: str = "placeholder",
        key: bytes | str | None = None,
        types: Collection[str] | None = None,
        name_finder: NameFinder | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown PII mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        # The key matters only for pseudonyms; other modes ignore it.
        self._key = _key_bytes(key) if mode == "pseudonym" else b""
        self.detect = PiiDetector(types, name_finder)

    def token(self, kind: str, value: str) -> str:
        """What replaces `value` of type `kind`."""
        if self.mode == "placeholder":
            return f"[{kind}]"
        if self.mode == "redact":
            return ""
        message = f"{kind}\x00{canonical_value(kind, value)}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()
        return f"[{kind}_{digest[:8]}]"

    def mask(self, text: str) -> tuple[str, Counter[str]]:
        """The rewritten text and the number of spans per type."""
        counts: Counter[str] = Counter()
        spans = self.detect(text)
        if not spans:
            return text, counts
        counts.update(s.type for s in spans)
        if self.mode == "redact":
            return _redact(text, spans), counts
        parts = []
        pos = 0
        for s in spans:
            parts += (text[pos : s.start], self.token(s.type, text[s.start : s.end]))
            pos = s.end
        parts.append(text[pos:])
        return "".join(parts), counts


def _redact(text: str, spans: list[PiiSpan]) -> str:
    out: list[str] = []  # non-empty pieces only, so out[-1][-1] is the last character
    pos = 0
    for s in spans:
        if s.start > pos:
            out.append(text[pos : s.start])
        end = s.end
        # "https://user:pw@host" -> "https://host", not "https://@host"
        after_scheme = text.endswith("://", 0, s.start)
        if s.type == "URL_SECRET" and after_scheme and text.startswith("@", end):
            end += 1
        # No doubled space, and none left at the start or end of a line.
        line_start = not out or out[-1].endswith("\n")
        if text.startswith(" ", end) and (line_start or out[-1].endswith(" ")):
            end += 1
        elif (end == len(text) or text[end] in "\r\n") and out and out[-1].endswith(" "):
            out[-1] = out[-1][:-1]
            if not out[-1]:
                out.pop()
        pos = end
    out.append(text[pos:])
    return "".join(out)


def mask_pii(
    text: str,
    mode: str = "placeholder",
    key: bytes | str | None = None,
    types: Collection[str] | None = None,
    name_finder: NameFinder | None = None,
) -> tuple[str, Counter[str]]:
    """`text` with PII rewritten in `mode`, and the counts by type (see the module notes)."""
    return PiiRewriter(mode, key, types, name_finder).mask(text)
