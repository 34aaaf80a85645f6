"""English person names from word lists and title cues, tuned for precision over recall.

A span is reported when
  * a title (Mr, Mrs, Dr, Prof, Sir, ...) is followed by capitalised name words: "Dr. Alice
    Wong" -> "Alice Wong". The title itself is never part of the span, so masking leaves
    "Dr. [NAME]" readable;
  * a known first name is followed by a surname: "John Smith", "John F. Kennedy",
    "Vincent van Gogh". First names that are also everyday words, places or brands ("Will",
    "Jordan", "Paris") need a surname from the built-in surname list;
  * an unambiguous first name stands alone: "call Sarah tomorrow" -> "Sarah".
Nothing is reported after "the"/"a"/"an" ("the John Lewis store") or when the next word makes
the name a place or organisation ("Washington Street", "Grace Hospital"). Possessive 's is left
out of the span. All-caps and lower-case names are not found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmforge.data.names.en_lexicon import (
    AMBIGUOUS_GIVEN,
    GIVEN_NAMES,
    ORG_SUFFIXES,
    PARTICLES,
    STOP_WORDS,
    SURNAMES,
    TITLES,
    WEAK_TITLES,
)
from lmforge.data.names.spans import merge_spans

_TOKEN = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*(?:-[A-Za-z]+(?:['’][A-Za-z]+)*)*")
_CAPITALISED = re.compile(r"[A-Z][a-z]*(?:['’]?[A-Z][a-z]+)*(?:-[A-Z][a-z]+(?:['’]?[A-Z][a-z]+)*)*")
_SPACE = re.compile(r"[ \t]+")  # name parts sit on one line
_DOT_SPACE = re.compile(r"\.[ \t]*")
_TITLE_GAP = re.compile(r"\.?[ \t]+")
_DETERMINERS = frozenset({"the", "a", "an", "The", "A", "An"})
_MAX_PARTS = 4  # given + middle + particle + surname


@dataclass(frozen=True)
class _Tok:
    start: int
    end: int
    word: str
    gap: str  # text between this token and the next one ("" for the last)


def _tokens(text: str) -> list[_Tok]:
    found = []
    for m in _TOKEN.finditer(text):
        start, end = m.span()
        if text[end - 2 : end].lower() in ("'s", "’s") and end - start > 2:
            end -= 2  # possessive: "Sarah's" -> "Sarah"
        found.append((start, end))
    toks = []
    for i, (start, end) in enumerate(found):
        nxt = found[i + 1][0] if i + 1 < len(found) else end
        toks.append(_Tok(start, end, text[start:end], text[end:nxt]))
    return toks


def _is_cap(word: str) -> bool:
    return len(word) > 1 and _CAPITALISED.fullmatch(word) is not None


def _is_initial(tok: _Tok) -> bool:
    return len(tok.word) == 1 and tok.word.isupper() and _DOT_SPACE.fullmatch(tok.gap) is not None


def _joined(tok: _Tok) -> bool:
    """True when the next token continues the same name: separated by spaces only."""
    return _SPACE.fullmatch(tok.gap) is not None


def _surname_like(word: str, strict: bool) -> bool:
    if word in SURNAMES:
        # After an ambiguous first name, "Park" or "Lane" more likely names a place.
        return not (strict and word in ORG_SUFFIXES)
    if strict or not _is_cap(word):
        return False
    return word.lower() not in STOP_WORDS and word not in ORG_SUFFIXES and word not in TITLES


def _name_tail(toks: list[_Tok], i: int, strict: bool) -> int:
    """Index of the last token of the name continuing after token i (i itself when none).
    Accepts a middle name or initial, lower-case particles and up to two surname words."""
    last = i
    j = i
    surnames = 0
    middle_used = False
    while j + 1 < len(toks) and j + 1 - i < _MAX_PARTS:
        cur, nxt = toks[j], toks[j + 1]
        if not (_joined(cur) or _is_initial(cur)):
            break
        word = nxt.word
        if _is_initial(nxt) and not middle_used and surnames == 0:
            middle_used = True
            j += 1
            continue
        if word in PARTICLES and j + 2 < len(toks) and _joined(nxt):
            if _is_cap(toks[j + 2].word):
                j += 1
                continue
            break
        if word in GIVEN_NAMES and not middle_used and surnames == 0 and word not in SURNAMES:
            # "Mary Jane Watson": a second first name, kept only if a surname follows.
            middle_used = True
            j += 1
            continue
        if _surname_like(word, strict) and surnames < 2:
            surnames += 1
            j += 1
            last = j
            if word not in SURNAMES:
                break  # a second unknown capitalised word is more likely a product name
            continue
        break
    return last


def _ends_in_org(toks: list[_Tok], last: int) -> bool:
    if last + 1 >= len(toks) or not _joined(toks[last]):
        return False
    return toks[last + 1].word in ORG_SUFFIXES


def _after_determiner(toks: list[_Tok], i: int) -> bool:
    return i > 0 and toks[i - 1].word in _DETERMINERS and _joined(toks[i - 1])


def _title_name(toks: list[_Tok], i: int) -> tuple[int, int] | None:
    tok = toks[i]
    if tok.word not in TITLES or i + 1 >= len(toks):
        return None
    if _TITLE_GAP.fullmatch(tok.gap) is None:
        return None
    nxt = toks[i + 1].word
    known = nxt in GIVEN_NAMES or nxt in SURNAMES
    if tok.word in WEAK_TITLES and not (tok.gap.startswith(".") or known):
        return None  # "General Motors", "Father Christmas"
    first = i + 1
    if _is_initial(toks[first]):
        last = _name_tail(toks, first, strict=False)
        if last == first:
            return None
    elif known or _surname_like(nxt, strict=False):
        last = _name_tail(toks, first, strict=False)
    else:
        return None
    if _ends_in_org(toks, last):
        return None
    return toks[first].start, toks[last].end


def _given_name(toks: list[_Tok], i: int) -> tuple[int, int] | None:
    word = toks[i].word
    if word not in GIVEN_NAMES or _after_determiner(toks, i):
        return None
    ambiguous = word in AMBIGUOUS_GIVEN
    last = _name_tail(toks, i, strict=ambiguous)
    if last == i and ambiguous:
        return None
    if _ends_in_org(toks, last):
        return None
    return toks[i].start, toks[last].end


def find_english_names(text: str) -> list[tuple[int, int]]:
    """[start, end) character offsets of English person names in `text`."""
    if not any("A" <= c <= "Z" for c in text):
        return []
    toks = _tokens(text)
    spans = []
    for i in range(len(toks)):
        span = _title_name(toks, i) or _given_name(toks, i)
        if span is not None:
            spans.append(span)
    return merge_spans(spans)


__all__ = ["find_english_names"]
