"""PII masking: regex candidates, confirmed by validators, replaced by typed placeholders.

Identifiers with check digits are masked only when the check passes (Chinese resident ID,
bank cards by Luhn), IP addresses only when `ipaddress` accepts them, so prices, dates and
order numbers stay. Order matters: IDs and cards are masked before phone numbers, whose
patterns would otherwise claim a prefix of them.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from lmforge.data.document import Document
from lmforge.data.steps.base import Transform
from lmforge.text.identifiers import cn_id_valid, luhn_valid

# Boundaries look at ASCII letters and digits only: PII glued to Chinese text ("电话138...")
# must still match, and Python's \b treats CJK characters as word characters.
_B = r"(?<![0-9A-Za-z])"
_E = r"(?![0-9A-Za-z])"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IPV6 = re.compile(r"(?<![0-9A-Za-z.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_CN_ID = re.compile(_B + r"\d{17}[\dXx]" + _E)
_DIGIT_RUN = re.compile(r"(?<![\d+\-])\d(?:[ -]?\d){11,22}(?!\d)")
_INTL_PHONE = re.compile(r"(?<![0-9A-Za-z+])\+\d{1,3}(?:[ -]?(?:\(\d{1,4}\)|\d{1,5})){1,7}(?!\d)")
_CN_MOBILE = re.compile(_B + r"1[3-9]\d(?:[ -]?\d{4}){2}" + r"(?!\d)")
_CN_LANDLINE = re.compile(_B + r"(?:\(0\d{2,3}\)\s?|0\d{2,3}[- ])\d{7,8}(?!\d)")
_IPV4 = re.compile(r"(?<![0-9A-Za-z.])(?:\d{1,3}\.){3}\d{1,3}(?![0-9A-Za-z]|\.\d)")

_DIGIT = re.compile(r"\d")
PLACEHOLDERS = ("EMAIL", "PHONE", "ID_CN", "BANK_CARD", "IP")


def _ipv6(m: re.Match[str]) -> str | None:
    """Candidates are greedy over hex, ':' and '.', so trim the punctuation around them
    ("地址:2001:db8::1。") before validating."""
    cand = m.group()
    core = cand.rstrip(".") if cand.endswith("::") else cand.rstrip(":.")
    head = ":" if core.startswith(":") and not core.startswith("::") else ""
    core = core[len(head) :]
    if core.count(":") < 2:
        return None
    try:
        ipaddress.IPv6Address(core)
    except ValueError:
        return None
    return head + "[IP]" + cand[len(head) + len(core) :]


def _ipv4(m: re.Match[str]) -> tuple[str, str] | None:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    return "IP", ""


def _cn_id(m: re.Match[str]) -> tuple[str, str] | None:
    return ("ID_CN", "") if cn_id_valid(m.group()) else None


def _bank_card(m: re.Match[str]) -> str | None:
    """The whole run, or its longest run of whole digit groups, that is 13-19 digits and
    passes Luhn; the rest of the run is kept as it was."""
    run = m.group()
    groups = re.split(r"([ -])", run)  # digits, sep, digits, sep, ...
    digits = groups[0::2]
    best: tuple[int, int, int] | None = None
    for i in range(len(digits)):
        for j in range(len(digits), i, -1):
            number = "".join(digits[i:j])
            if 13 <= len(number) <= 19 and luhn_valid(number):
                if best is None or len(number) > best[0]:
                    best = (len(number), i, j)
                break
    if best is None:
        return None
    _, i, j = best
    before = "".join(groups[: 2 * i])
    after = "".join(groups[2 * j - 1 :]) if j < len(digits) else ""
    return before + "[BANK_CARD]" + after


def _intl_phone(m: re.Match[str]) -> tuple[str, str] | None:
    digits = sum(c.isdigit() for c in m.group())
    return ("PHONE", "") if 7 <= digits <= 15 else None


def _always(label: str) -> Callable[[re.Match[str]], tuple[str, str]]:
    return lambda m: (label, "")


_RULES: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], object]], ...] = (
    ("EMAIL", _EMAIL, _always("EMAIL")),
    ("IP", _IPV6, _ipv6),
    ("ID_CN", _CN_ID, _cn_id),
    ("BANK_CARD", _DIGIT_RUN, _bank_card),
    ("IP", _IPV4, _ipv4),
    ("PHONE", _INTL_PHONE, _intl_phone),
    ("PHONE", _CN_MOBILE, _always("PHONE")),
    ("PHONE", _CN_LANDLINE, _always("PHONE")),
)


def mask_pii(text: str) -> tuple[str, Counter[str]]:
    """Text with PII replaced by [EMAIL], [PHONE], [ID_CN], [BANK_CARD], [IP]; counts by type."""
    counts: Counter[str] = Counter()
    if "@" not in text and not _DIGIT.search(text):
        return text, counts
    for label, pattern, check in _RULES:

        def replace(m: re.Match[str], label: str = label, check=check) -> str:
            result = check(m)
            if result is None:
                return m.group()
            counts[label] += 1
            if isinstance(result, str):
                return result
            kind, tail = result
            return f"[{kind}]{tail}"

        text = pattern.sub(replace, text)
    return text, counts


class PiiMasker(Transform):
    name = "pii"

    def transform(self, doc: Document) -> None:
        masked, counts = mask_pii(doc.text)
        if counts:
            doc.set_text(masked)
            self.stats.events.update(counts)
            self.stats.events["docs_masked"] += 1
