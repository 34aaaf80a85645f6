"""Quality filters: general rules on length, letters, repetition, boilerplate and gibberish.

Every rule reads the text alone (no knowledge of where a corpus came from). Lengths weigh a
CJK character like three Latin ones (see `charclass.weighted_length`).
"""

from __future__ import annotations

import re
from collections import Counter

from lmforge.data.charclass import (
    CJK_CHAR_WEIGHT,
    LATIN_WORD_RE,
    common_han_share,
    han_chars,
    script_counts,
    tokens,
    weighted_length,
)
from lmforge.data.document import Document
from lmforge.data.mojibake import mojibake_score
from lmforge.data.steps.base import BaseFilter
from lmforge.data.steps.wordlists import (
    BOILERPLATE_PHRASES,
    CONSONANT_RUN_RE,
    KEYBOARD_RUNS,
    MARKUP_RESIDUE,
    NAV_SEPARATORS,
    SAME_CHAR_RUN_RE,
    VOWEL_RE,
)

_REPEATED_SYMBOL = re.compile(r"([^\w\s])\1+")


class LengthFilter(BaseFilter):
    name = "length"

    def __init__(self, min_chars: int, max_chars: int) -> None:
        super().__init__()
        self.min_chars = min_chars
        self.max_chars = max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.judged_text:
            return False, "empty"
        # The whole document is what gets too long; shortness is judged on its content.
        if len(doc.text) > self.max_chars:
            return False, "too_long"
        if weighted_length(doc.judged_text) < self.min_chars:
            return False, "too_short"
        return True


class LetterRatioFilter(BaseFilter):
    """Drops symbol and digit soup: letters (CJK included) over non-space characters."""

    name = "letter_ratio"

    def __init__(self, min_ratio: float) -> None:
        super().__init__()
        self.min_ratio = min_ratio

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        # "!!!!!!" and "......" are emphasis, not symbol soup: a run counts as one character.
        counts = script_counts(_REPEATED_SYMBOL.sub(r"\1", doc.judged_text))
        # Weighted like lengths: one CJK character against three digits or symbols.
        extra = (CJK_CHAR_WEIGHT - 1) * (counts.han + counts.kana + counts.hangul)
        letters, chars = counts.letters + extra, counts.non_space + extra
        if chars and letters / chars < self.min_ratio:
            return False, "low_letter_ratio"
        return True


class MojibakeFilter(BaseFilter):
    """Drops text that is still garbled after the normalizer's repair attempt."""

    name = "mojibake"
    max_score = 0.1

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if mojibake_score(doc.text) > self.max_score:
            return False, "unrepaired_mojibake"
        return True


def top_ngram_coverage(toks: list[str], n: int, min_count: int) -> float:
    """Share of token positions covered by the most frequent n-gram (overlaps counted once),
    if it occurs at least min_count times."""
    if len(toks) < n + min_count - 1:
        return 0.0
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if n > 2:  # one token said over and over ("哈哈哈哈") is left to the bigram check
        grams = [g if len(set(g)) > 1 else () for g in grams]
    counts = Counter(g for g in grams if g)
    if not counts:
        return 0.0
    top, count = counts.most_common(1)[0]
    if count < min_count:
        return 0.0
    covered = set()
    for i, gram in enumerate(grams):
        if gram == top:
            covered.update(range(i, i + n))
    return len(covered) / len(toks)


def duplicate_line_share(lines: list[str]) -> float:
    """Share of characters in lines that repeat an earlier line."""
    seen: set[str] = set()
    dup = total = 0
    for line in lines:
        total += len(line)
        if line in seen:
            dup += len(line)
        seen.add(line)
    return dup / total if total else 0.0


class RepetitionFilter(BaseFilter):
    """Spam: one line, phrase or link repeated many times."""

    name = "repetition"
    min_repeats = 4  # "many times": a phrase said three times can still be prose

    def __init__(self, max_ratio: float) -> None:
        super().__init__()
        self.max_ratio = max_ratio

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lines = doc.judged_text.split("\n")
        if len(lines) >= 3 and duplicate_line_share(lines) > self.max_ratio:
            return False, "duplicate_lines"
        toks = tokens(doc.judged_text)
        # A flood of one word is also a flood of its bigram. A CJK bigram is often a single
        # word, which a short text may well say four times, so bigrams need twice the share.
        # Phrases are 4+ tokens: with CJK characters as tokens, 3 is barely two words.
        for n in (2, 4, 5):
            limit = min(1.0, 2 * self.max_ratio) if n == 2 else self.max_ratio
            if top_ngram_coverage(toks, n, self.min_repeats) > limit:
                return False, "repeated_ngram"
        return True


def _is_nav_line(line: str) -> bool:
    """Three or more short items between separators ("Home | Shop | Cart"); a few long
    items are allowed, where the menu runs into the next piece of chrome."""
    items = [i for i in NAV_SEPARATORS.split(line) if i]
    short = sum(1 for i in items if weighted_length(i) <= 30)
    return short >= 3 and short >= 0.8 * len(items)


def boilerplate_line(line: str) -> bool:
    """Navigation, cookie/legal/share text, or markup residue."""
    if _is_nav_line(line):
        return True
    hits = BOILERPLATE_PHRASES.findall(line)
    if len(hits) >= 2 or (hits and weighted_length(line) <= 40):
        return True
    residue = sum(len(m.group()) for m in MARKUP_RESIDUE.finditer(line))
    return residue >= 0.3 * len(line)


class BoilerplateFilter(BaseFilter):
    """Drops documents that are mostly page chrome or markup."""

    name = "boilerplate"
    max_share = 0.6

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        total = chrome = 0
        for line in doc.judged_text.split("\n"):
            size = weighted_length(line)
            total += size
            if boilerplate_line(line):
                chrome += size
        if total and chrome / total >= self.max_share:
            return False, "boilerplate"
        return True


def _wordlike(word: str) -> bool:
    w = word.lower()
    if len(w) > _LONGEST_WORD:
        return False
    if len(w) == 1:
        return w in "aiou"
    if not VOWEL_RE.search(w) or CONSONANT_RUN_RE.search(w) or SAME_CHAR_RUN_RE.search(w):
        return False
    return not any(w[i : i + 4] in KEYBOARD_RUNS for i in range(len(w) - 3))


_ADDRESS = re.compile(
    r"https?://[!-~]+|www\.[!-~]+|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)
# Symbols that prose hardly uses (sentence punctuation, quotes, brackets, -, / are fine).
_SOUP_SYMBOL = re.compile(r"[#$%&*+=<>@\\^_`|~{}\[\]]")
_LONGEST_WORD = 20  # longer Latin "words" are mash or glued junk, not vocabulary


class GibberishFilter(BaseFilter):
    """Keyboard mash and random characters.

    Latin script: too few vowels overall (English/European prose has ~35-45%, random letters
    ~20%) or too few pronounceable words. Chinese: too few common characters. Any script:
    letters interleaved with many symbols ("m&qw&lbzu87x*!a+tuo").
    """

    name = "gibberish"
    min_vowel_share = 0.25
    min_wordlike_share = 0.5
    min_common_han = 0.5
    max_symbol_share = 0.2

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.judged_text
        han = han_chars(text)
        if len(han) >= 4 and common_han_share(han) < self.min_common_han:
            return False, "rare_characters"
        plain = _ADDRESS.sub(" ", text)
        squeezed = _REPEATED_SYMBOL.sub(r"\1", plain)  # "~~~~" is one flourish
        symbols = len(_SOUP_SYMBOL.findall(squeezed))
        if symbols >= 5 and symbols > self.max_symbol_share * weighted_length(
            "".join(squeezed.split())
        ):
            return False, "symbol_soup"
        words = LATIN_WORD_RE.findall(plain)
        letters = sum(len(w) for w in words)
        # Latin letters inside a Chinese text (brands, models) are not judged as words.
        if letters < 8 or (len(words) < 2 and letters < 12) or letters < CJK_CHAR_WEIGHT * len(han):
            return True
        vowels = sum(len(VOWEL_RE.findall(w)) for w in words)
        # Short English can be vowel-poor ("The stitching felt tight." has 24%).
        if letters >= 30 and vowels / letters < self.min_vowel_share:
            return False, "few_vowels"
        wordlike = sum(len(w) for w in words if _wordlike(w))
        if wordlike / letters < self.min_wordlike_share:
            return False, "unpronounceable"
        return True


# The most frequent English function words and Chinese function characters. Running prose
# of some length always has a few; keyword lists, tag clouds, product catalogue dumps and
# machine-made strings have none. Telegraphic writing (spec lists, "good fun, good action,
# good pace") omits them in short texts, so only long texts are judged.
_EN_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        """the a an and or but of to in on at for with is are was were be been it its this that
        these those i you he she we they my your his her our their not no so as by from have has
        had do does did than then there here who which what when where if can will would could
        should all any some more most very just about into over out up""",
    )
)
_ZH_STOPCHARS = frozenset("的了是在不我有这也就都很和他她们你个一上说要会到着没那吗吧呢")


class StopwordFilter(BaseFilter):
    """Drops longer texts that carry no function word at all (CJK: no function character)."""

    name = "stopwords"
    min_words = 25  # short reviews ("Great phone, fast delivery") may have none
    min_han = 100

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.judged_text
        han = han_chars(text)
        if len(han) >= self.min_han:
            if not any(c in _ZH_STOPCHARS for c in han):
                return False, "no_stopwords"
            return True
        words = [w.lower() for w in LATIN_WORD_RE.findall(text)]
        if len(words) >= self.min_words and not any(w in _EN_STOPWORDS for w in words):
            return False, "no_stopwords"
        return True
