"""Repair of mojibake: UTF-8 bytes that were decoded with the wrong codec.

Two shapes are handled, both by re-encoding a suspicious run of characters back to the
bytes it came from and decoding those as UTF-8:

- cp1252 / latin-1 ("ç”µæ± " for "电池", "donâ€™t" for "don't"): one character per byte, so
  the run maps back byte for byte. Bytes cp1252 leaves undefined may have become U+FFFD or
  C1 control characters; U+FFFD stands for one of those five bytes.
- GBK ("鐢垫睜" for "电池"): two bytes per character; a byte the GBK decoder rejected became
  U+FFFD and stands for any one byte.

A byte that U+FFFD hid is guessed: the candidate giving the most frequent character
(frequent CJK punctuation, then a character frequency ranking) wins; when no candidate is
ranked and several are equally plausible, the character stays U+FFFD. A run is only
replaced when it decodes to proper multibyte characters, so ordinary accented Latin text
("café", "Ærø") and ordinary Chinese text are left alone.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

from lmforge.data.charclass import (
    COMMON_HAN,
    COMMON_SIMPLIFIED,
    HAN_RANK,
    common_han_share,
    han_chars,
)

REPLACEMENT = "\ufffd"
_CP1252_UNDEFINED = (0x81, 0x8D, 0x8F, 0x90, 0x9D)
_ANY_CONTINUATION = tuple(range(0x80, 0xC0))
_COMMON_PUNCT = "，。！？、：；“”（）…—《》‘’【】～·「」"
_UNRANKED = 1_000_000
_UNLIKELY = 2_000_000


def _sloppy_cp1252() -> dict[str, int]:
    """Character -> byte for cp1252, with latin-1 (C1 controls) where cp1252 has no char."""
    table: dict[str, int] = {}
    for b in range(0x80, 0x100):
        with contextlib.suppress(UnicodeDecodeError):
            table[bytes([b]).decode("cp1252")] = b
        table.setdefault(chr(b), b)  # latin-1 reading; also covers cp1252's undefined bytes
    return table


_CP1252 = _sloppy_cp1252()
_LEADS = "".join(c for c, b in _CP1252.items() if 0xC2 <= b <= 0xF4)
_CONTS = "".join(c for c, b in _CP1252.items() if 0x80 <= b <= 0xBF) + REPLACEMENT
_CP1252_RUN = re.compile(f"[{re.escape(''.join(_CP1252))}{REPLACEMENT}]{{2,}}")
_CP1252_HINT = re.compile(f"[{re.escape(_LEADS)}][{re.escape(_CONTS)}]")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
# Three common characters in a row: genuine text (GBK mojibake is ~90% rare characters).
_LEGIT_CHARS = COMMON_SIMPLIFIED | frozenset(_COMMON_PUNCT)
_LEGIT_STRETCH = re.compile("[" + re.escape("".join(sorted(_LEGIT_CHARS))) + "]{3,}")


def _seq_len(lead: int) -> int:
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _likelihood(ch: str) -> int:
    """Lower is likelier: frequent punctuation, then frequent Han by rank, then common Han."""
    if ch in _COMMON_PUNCT:
        return _COMMON_PUNCT.index(ch)
    if ch in HAN_RANK:
        return len(_COMMON_PUNCT) + HAN_RANK[ch]
    if ch in COMMON_SIMPLIFIED:
        return _UNRANKED
    return _UNLIKELY


def _decode_seq(seq: list[int | None], candidates: tuple[int, ...]) -> str | None:
    """Decode one UTF-8 sequence; a None byte is unknown and tried from `candidates`."""
    unknown = [i for i, b in enumerate(seq) if b is None]
    if not unknown:
        try:
            ch = bytes(seq).decode("utf-8")  # type: ignore[arg-type]
        except UnicodeDecodeError:
            return None
        return ch if ch.isprintable() else None
    if len(unknown) > 1 or unknown[0] == 0:
        return REPLACEMENT
    scored = []
    for b in candidates:
        trial = list(seq)
        trial[unknown[0]] = b
        try:
            ch = bytes(trial).decode("utf-8")  # type: ignore[arg-type]
        except UnicodeDecodeError:
            continue
        scored.append((_likelihood(ch), ch))
    scored.sort()
    if not scored or scored[0][0] >= _UNLIKELY:
        return REPLACEMENT
    # Among unranked common characters there is no evidence to prefer one.
    if scored[0][0] == _UNRANKED and len(scored) > 1 and scored[1][0] == _UNRANKED:
        return REPLACEMENT
    return scored[0][1]


def _redecode(
    data: list[int | None], fallback: Callable[[int], str], candidates: tuple[int, ...]
) -> tuple[str, int, int]:
    """Greedy UTF-8 decoding of `data`; returns (text, multibyte chars, undecodable bytes).

    An undecodable byte at position i becomes `fallback(i)`.
    """
    out: list[str] = []
    decoded = lost = 0
    i = 0
    while i < len(data):
        b = data[i]
        n = _seq_len(b) if b is not None else 0
        if n and i + n <= len(data):
            seq = data[i : i + n]
            if all(x is None or 0x80 <= x <= 0xBF for x in seq[1:]):
                ch = _decode_seq(seq, candidates)
                if ch is not None:
                    out.append(ch)
                    decoded += 1
                    i += n
                    continue
        if b is not None and b < 0x80:
            out.append(chr(b))
        else:
            out.append(fallback(i))
            lost += 1
        i += 1
    return "".join(out), decoded, lost


def _fix_cp1252_run(match: re.Match[str]) -> str:
    run = match.group()
    data = [None if c == REPLACEMENT else _CP1252[c] for c in run]
    text, decoded, _ = _redecode(data, lambda i: run[i], _CP1252_UNDEFINED)
    return text if decoded else run


def _gbk_bytes(run: str) -> list[int | None] | None:
    data: list[int | None] = []
    for ch in run:
        if ch == REPLACEMENT:
            data.append(None)
            continue
        try:
            data.extend(ch.encode("gbk"))
        except UnicodeEncodeError:
            return None
    return data


def _fix_gbk_run(match: re.Match[str]) -> str:
    """Repair the stretches between runs of common characters: a garbled span can sit
    inside genuine Chinese text, and genuine characters do not survive the re-decoding."""
    run = match.group()
    out = []
    pos = 0
    for legit in _LEGIT_STRETCH.finditer(run):
        out.append(_fix_gbk_piece(run[pos : legit.start()]))
        out.append(legit.group())
        pos = legit.end()
    out.append(_fix_gbk_piece(run[pos:]))
    return "".join(out)


def _plausible_share(text: str) -> float:
    """Share of non-ASCII characters that real text is made of (Han, CJK and general
    punctuation, fullwidth forms, Latin letters); a wrong re-decoding yields other scripts."""
    chars = [c for c in text if not c.isascii() and c != REPLACEMENT]
    if not chars:
        return 1.0
    ok = sum(
        1
        for c in chars
        if "\u3400" <= c <= "\u9fff"
        or "\u00a0" <= c <= "\u024f"
        or "\u2000" <= c <= "\u206f"
        or "\u3000" <= c <= "\u303f"
        or "\uff00" <= c <= "\uffef"
    )
    return ok / len(chars)


def _redecode_gbk(core: str) -> tuple[str, int] | None:
    """(repaired text, bytes lost) if `core` reads as GBK-decoded UTF-8, else None."""
    data = _gbk_bytes(core)
    if data is None:
        return None
    text, decoded, lost = _redecode(data, lambda i: "", _ANY_CONTINUATION)
    # Real GBK mojibake decodes almost completely; genuine text re-encoded this way fails
    # on most bytes or turns into characters of unrelated scripts.
    if decoded == 0 or lost > max(1, len(data) // 10) or _plausible_share(text) < 0.9:
        return None
    before = common_han_share(han_chars(core), COMMON_SIMPLIFIED)
    if common_han_share(han_chars(text), COMMON_SIMPLIFIED) <= before:
        return None
    return text, lost


def _fix_gbk_piece(piece: str) -> str:
    """The best repair of `piece`, also trying to leave up to two common characters at
    either edge outside the garbled span (they may belong to the surrounding text)."""
    if len(piece) < 2:
        return piece
    best: tuple[tuple[int, int], str] | None = None
    for lead in range(3):
        for trail in range(3):
            if lead + trail > len(piece) - 2:
                continue
            head, core, tail = (
                piece[:lead],
                piece[lead : len(piece) - trail],
                piece[len(piece) - trail :],
            )
            if not all(c in _LEGIT_CHARS for c in head + tail):
                continue
            fixed = _redecode_gbk(core)
            if fixed is None:
                continue
            text, lost = fixed
            key = (lost, lead + trail)
            if best is None or key < best[0]:
                best = (key, head + text + tail)
    return piece if best is None else best[1]


def repair_mojibake(text: str) -> str:
    """Text with mis-decoded UTF-8 runs restored; unchanged when nothing looks garbled."""
    if _CP1252_HINT.search(text):
        text = _CP1252_RUN.sub(_fix_cp1252_run, text)
    # GBK mojibake is made of rarely used characters; genuine Chinese text is ~99% common
    # simplified characters (traditional text is tried too, and left alone by the repair).
    han = han_chars(text)
    if len(han) >= 2 and common_han_share(han, COMMON_SIMPLIFIED) < 0.9:
        text = _NON_ASCII_RUN.sub(_fix_gbk_run, text)
    return text


def mojibake_score(text: str) -> float:
    """Share of characters that still look like mis-decoded UTF-8 (0 for clean text)."""
    if not text:
        return 0.0
    garbled = sum(len(m.group()) for m in _CP1252_HINT.finditer(text))
    garbled += text.count(REPLACEMENT)
    han = han_chars(text)
    if len(han) >= 4 and common_han_share(han) < 0.6:
        garbled += sum(1 for c in han if c not in COMMON_HAN)
    return garbled / len(text)
