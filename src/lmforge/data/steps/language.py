"""Language identification by script and function words: zh, en, or other.

Han-dominant text is Chinese unless it carries kana (Japanese); Latin text is English when
English function words outnumber those of other European languages. Everything else
(Cyrillic, Hangul, kana, German, French, Spanish, ...) is "other".
"""

from __future__ import annotations

from lmforge.data.charclass import LATIN_WORD_RE, script_counts
from lmforge.data.document import Document
from lmforge.data.steps.base import BaseFilter
from lmforge.data.steps.wordlists import ENGLISH_COMMON, FOREIGN_COMMON
from lmforge.errors import ConfigError

LANGUAGES = ("zh", "en", "other")
# A CJK character carries about as much as a word; a word has about four letters.
_LETTERS_PER_WORD = 4
_SHORT_WORDS = 8


def detect_language(text: str) -> str:
    c = script_counts(text)
    latin_words = c.latin / _LETTERS_PER_WORD
    cjk = c.han + c.kana + c.hangul
    if cjk >= latin_words and cjk > 0:
        if c.kana >= 2 and c.kana >= 0.1 * (c.han + c.kana):
            return "other"  # Japanese mixes kana into its Han text; Chinese never does
        return "zh" if c.han >= c.hangul else "other"
    if c.cyrillic / _LETTERS_PER_WORD >= latin_words or c.latin == 0:
        return "other"
    words = [w.lower().replace("’", "'") for w in LATIN_WORD_RE.findall(text)]
    english = sum(1 for w in words if w in ENGLISH_COMMON)
    foreign = sum(1 for w in words if w in FOREIGN_COMMON)
    # Accented letters are rare in English words and common in most other Latin scripts; in
    # a short English phrase they are loanwords ("cliché", "café"), so they count from a
    # sentence's length on.
    if len(words) >= _SHORT_WORDS:
        foreign += sum(0.5 for w in words if not w.isascii())
    if english < foreign or (foreign and english == foreign):
        return "other"
    # A short phrase ("cold movie") may have no function word at all; a longer text in
    # English always has some.
    if len(words) >= _SHORT_WORDS and english < 0.1 * len(words):
        return "other"
    return "en" if english > foreign or len(words) < _SHORT_WORDS else "other"


class LanguageFilter(BaseFilter):
    """Sets `doc.lang` and keeps the languages asked for."""

    name = "language"

    def __init__(self, languages: list[str]) -> None:
        super().__init__()
        unknown = sorted(set(languages) - set(LANGUAGES))
        if unknown:
            raise ConfigError(
                f"data.languages: {', '.join(map(repr, unknown))} cannot be detected; use "
                f"{', '.join(LANGUAGES)} ('other' keeps every language besides zh and en)"
            )
        self.languages = set(languages)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        doc.lang = detect_language(doc.judged_text)
        self.stats.events[doc.lang] += 1
        if doc.lang not in self.languages:
            return False, f"lang_{doc.lang}"
        return True
