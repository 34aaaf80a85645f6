"""Detectors of structured identifiers; each returns (start, end) spans of one type.

A regex only proposes a candidate; it counts once something confirms it: check digits
(resident IDs, cards), an issuer prefix of the right length (cards), `ipaddress` (IPs), a
cue word (passports of other countries). Unconfirmed candidates stay text, so prices, dates,
order, tracking and model numbers are left alone.

Boundaries look at ASCII letters and digits only: an identifier glued to Chinese text
("电话13812345678联系") must still match, and Python's \\b treats CJK characters as word
characters. Digits are ASCII [0-9]: the cleaning line applies NFKC before this step.
"""

from __future__ import annotations

import ipaddress
import re

from lmforge.text.identifiers import (
    card_prefix_valid,
    cn_id_birth_date,
    cn_id_valid,
    luhn_valid,
)

Span = tuple[int, int]

_B = r"(?<![0-9A-Za-z])"
_E = r"(?![0-9A-Za-z])"

# --- e-mail ---------------------------------------------------------------------------
# Matched outward from each '@': a regex that starts with the local part would rescan
# every long run of letters and digits (a base64 blob) to the end, once per position.
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_MAX_LOCAL = 64
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(_LABEL + r"(?:\." + _LABEL + r")*\.([A-Za-z]{2,24})(?![A-Za-z0-9-])")
# "icon@2x.png" is a file name, not an address.
_FILE_SUFFIXES = frozenset(["png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "js", "css"])


def find_emails(text: str) -> list[Span]:
    spans = []
    at = text.find("@")
    while at >= 0:
        start = at
        while start > 0 and text[start - 1] in _LOCAL_CHARS and at - start <= _MAX_LOCAL:
            start -= 1
        while start < at and text[start] == ".":  # "see.a@b.com": no leading dots
            start += 1
        domain = _DOMAIN.match(text, at + 1)
        if (
            domain is not None
            and 0 < at - start <= _MAX_LOCAL
            and domain.group(1).lower() not in _FILE_SUFFIXES
            and not text.endswith("://", 0, start)  # "ssh://git@host" is a user at a host
        ):
            spans.append((start, domain.end()))
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)
    return spans


# --- Chinese resident ID ----------------------------------------------------------------
# 6-8-4, optionally grouped with one kind of separator ("110101 19900307 123X").
_CN_ID = re.compile(_B + r"[0-9]{6}([ -]?)[0-9]{8}\1[0-9]{3}[0-9Xx]" + _E)


def find_cn_ids(text: str) -> list[Span]:
    return [m.span() for m in _CN_ID.finditer(text) if cn_id_valid(re.sub(r"[ -]", "", m.group()))]


# --- bank cards -------------------------------------------------------------------------
# Right before a number, these name it as something other than a card or passport.
_CODE_CUE = re.compile(
    r"(?<![A-Za-z])(?i:order|sku|model|item|invoice|ref|tracking|serial|part|product)|"
    r"订单|单号|编号|型号|货号|批号|序列号|流水号"
)
_CARD_CUE = re.compile(r"(?i:card|visa|master|amex|unionpay)|卡|银联")
# A run of digits in groups; which whole groups form the card is decided below.
_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z+.\-])[0-9](?:[ -]?[0-9]){11,}" + _E)
_GROUP = re.compile(r"[0-9]+")


def _is_card(number: str) -> bool:
    # An 18-digit number with a birth date at the ID position is a (mistyped) resident ID,
    # not a card: such runs must stay unmasked rather than pass Luhn by chance.
    if len(number) == 18 and cn_id_birth_date(number) is not None:
        return False
    return card_prefix_valid(number) and luhn_valid(number)


def _card_grouping(sizes: list[int]) -> bool:
    """Cards are written whole or in groups of 4-6 digits (4-4-4-4-3, 4-6-5, 6-13); an
    order number like 112-1234567-1234567 is not."""
    return len(sizes) == 1 or all(4 <= n <= 6 for n in sizes[:-1])


def find_bank_cards(text: str) -> list[Span]:
    """Left to right, the longest run of whole groups that is a card; the rest stays text
    ("card 6222 0212 3456 7890 2026": the year is not part of it). A card begins a run, or
    follows a group that is a number of its own (over 6 digits) or another card: four
    groups in the middle of a 22-digit tracking number are not a card."""
    spans: list[Span] = []
    for run in _DIGIT_RUN.finditer(text):
        before = text[max(0, run.start() - 16) : run.start()]
        if _CODE_CUE.search(before) and not _CARD_CUE.search(before):
            continue  # "订单号 6222..." is an order number that happens to pass Luhn
        groups = [(g.start() + run.start(), g.end() + run.start()) for g in _GROUP.finditer(run[0])]
        sizes = [e - s for s, e in groups]
        i = 0
        while i < len(groups):
            best = None
            digits = ""
            for j in range(i, len(groups)):
                digits += text[groups[j][0] : groups[j][1]]
                if len(digits) > 19:
                    break
                if _card_grouping(sizes[i : j + 1]) and _is_card(digits):
                    best = j
            if best is not None:
                spans.append((groups[i][0], groups[best][1]))
                i = best + 1
                continue
            i += 1
            while i < len(groups) and sizes[i - 1] <= 6:
                i += 1  # inside a longer grouped number: no card starts here
    return spans


_LONG_TAIL = re.compile(r"-[0-9]{6}")


def continues_digit_groups(text: str, start: int, end: int) -> bool:
    """Whether a grouped number is part of a longer one: a group is glued on before it with
    a separator it uses inside ("9400 5528 0608 7101 1420"), or a long group after it with
    a dash it uses inside ("022-8196186-3775262"; a short one may be an extension)."""
    inside = text[start:end]
    sep = text[start - 1] if start >= 2 else ""
    if sep and sep in " -" and text[start - 2].isdigit() and sep in inside:
        return True
    tail = _LONG_TAIL.match(text, end)
    return tail is not None and tail[0][0] in inside


# --- passports ----------------------------------------------------------------------------
# Chinese passports: E + 8 digits, E + letter (not I or O) + 7 digits, G/D/S/P + 8 digits.
_CN_PASSPORT = re.compile(_B + r"(?:E[0-9]{8}|E[A-HJ-NP-Z][0-9]{7}|[GDSP][0-9]{8})" + _E)
# Other countries' numbers look like any product code, so they need a cue just before.
_PASSPORT_CUE = re.compile(r"(?i:passport)|护照")
_PASSPORT_SHAPE = re.compile(_B + r"[A-Z0-9]{6,9}" + _E)
_CUE_WINDOW = 30


def _passport_shaped(value: str) -> bool:
    # Some countries mix letters in ("C01X00T47", "CLCZV4CCJ"); a digit keeps out words.
    if not any(c.isdigit() for c in value):
        return False
    # "passport issued 20190304": a date, not the number
    return not (len(value) == 8 and value.isdigit() and re.fullmatch(r"(19|20)\d{6}", value))


def _last_end(pattern: re.Pattern[str], text: str, start: int, end: int) -> int:
    return max((m.end() for m in pattern.finditer(text, start, end)), default=-1)


def _code_cue_nearer(text: str, start: int) -> bool:
    """Whether a code cue ("订单号") follows the last passport cue in the 16 characters
    before `start`: "Order #P47295167", "型号S12345678" have the Chinese passport shape."""
    window = max(0, start - 16)
    code = _last_end(_CODE_CUE, text, window, start)
    return code >= 0 and code > _last_end(_PASSPORT_CUE, text, max(0, start - _CUE_WINDOW), start)


def find_passports(text: str) -> list[Span]:
    spans = []
    for m in _CN_PASSPORT.finditer(text):
        if not _code_cue_nearer(text, m.start()):
            spans.append(m.span())
    for cue in _PASSPORT_CUE.finditer(text):
        window_end = min(len(text), cue.end() + _CUE_WINDOW)
        for m in _PASSPORT_SHAPE.finditer(text, cue.end(), window_end):
            if m.end() <= window_end and _passport_shaped(m.group()):
                spans.append(m.span())
                break
    return spans


# --- IP addresses ---------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![0-9A-Za-z.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9A-Za-z]|\.[0-9])")
# "version 1.2.3.4", "固件 2.1.0.3", "第1.2.3.4节" are dotted numbers, not addresses. The cue
# words are bounded by ASCII letters only: "升级到version 1.2.3.4" is glued to Chinese.
_VERSION_CUE = re.compile(
    r"(?<![A-Za-z])(?i:v(?:er(?:sion)?)?\.?|build|release|firmware|section|chapter)"
    r"\s*[:：#]?\s*$|(?:版本号?|固件|第|§)\s*[:：]?\s*$"
)
_IPV6 = re.compile(r"(?<![0-9A-Za-z.:])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


def _ipv6_core(text: str, start: int, end: int) -> Span | None:
    """Candidates are greedy over hex, ':' and '.', so trim the punctuation around them
    ("地址:2001:db8::1。") before validating."""
    cand = text[start:end]
    core = cand.rstrip(".") if cand.endswith("::") else cand.rstrip(":.")
    if core.startswith(":") and not core.startswith("::"):
        start, core = start + 1, core[1:]
    if core.count(":") < 2:
        return None
    try:
        ipaddress.IPv6Address(core)
    except ValueError:
        return None
    # "A::B" or "::1" in code or prose: too little to be someone's address.
    groups = [g for g in re.split(r"[:.]", core) if g]
    if len(groups) < 2 or sum(map(len, groups)) < 4:
        return None
    return start, start + len(core)


def find_ips(text: str) -> list[Span]:
    spans = []
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if not _VERSION_CUE.search(text, max(0, m.start() - 16), m.start()):
            spans.append(m.span())
    if ":" in text:
        for m in _IPV6.finditer(text):
            span = _ipv6_core(text, m.start(), m.end())
            if span is not None:
                spans.append(span)
    return spans


# --- phones -------------------------------------------------------------------------------
# Chinese mobile: 1[3-9]x xxxx xxxx, separators optional, +86 / 0086 / (+86) optional.
_CN_MOBILE = re.compile(
    _B + r"(?:(?:\+86|0086)[ -]?|[(（]\+?86[)）] ?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"
)
# Landline: area code 010, 02x or 0xxx, then 7-8 digits (a 3+4 or 4+4 split allowed).
# Local numbers never begin with 0 or 1 ("025-0654959-2453635" is an order number).
_AREA = r"0(?:10|2[0-9]|[3-9][0-9]{2})"
_LOCAL = r"[2-9](?:[0-9]{3}[ -]?[0-9]{4}|[0-9]{2}[ -]?[0-9]{4})"
_CN_LANDLINE = re.compile(
    _B + r"(?:[(（]" + _AREA + r"[)）] ?|" + _AREA + r"[ -])" + _LOCAL + r"(?![0-9])"
)
# Written without a separator only where the digits cannot be much else: 010/02x take
# 8 local digits, the other area codes 7 or 8.
_CN_LANDLINE_COMPACT = re.compile(
    _B + r"(?:0(?:10|2[0-9])[2-9][0-9]{7}|0[3-9][0-9]{2}[2-9][0-9]{6,7})(?![0-9])"
)
# International (E.164): +CC then groups, 7-15 digits in all. Every group after the first
# begins with a separator or a parenthesis, so a long digit run has one parse only (with
# free splits it would be tried in every grouping).
_INTL_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])\+[1-9][0-9]*(?:(?:[ -]?\([0-9]{1,4}\)[ -]?|[ -])[0-9]+){0,7}(?![0-9])"
)
_INTL_SEPARATOR = re.compile(r"[ -](?=[0-9(])")


def _intl_span(text: str, start: int, end: int) -> Span | None:
    """Drop trailing groups while there are more than 15 digits ("+44 20 7946 0958 2026")."""
    while True:
        digits = sum(c.isdigit() for c in text[start:end])
        if digits <= 15:
            return (start, end) if digits >= 7 else None
        cuts = [m.start() for m in _INTL_SEPARATOR.finditer(text, start, end)]
        if not cuts:
            return None
        end = cuts[-1]


def find_phones(text: str) -> list[Span]:
    spans = [m.span() for m in _CN_MOBILE.finditer(text)]
    spans += [m.span() for m in _CN_LANDLINE.finditer(text)]
    spans = [s for s in spans if not continues_digit_groups(text, *s)]
    spans += [m.span() for m in _CN_LANDLINE_COMPACT.finditer(text)]
    if "+" in text:
        for m in _INTL_PHONE.finditer(text):
            span = _intl_span(text, m.start(), m.end())
            if span is not None:
                spans.append(span)
    return spans
