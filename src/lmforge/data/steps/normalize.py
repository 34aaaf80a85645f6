"""Normalization: mojibake repair, leftover markup, NFKC, control characters, whitespace."""

from __future__ import annotations

import html
import re
import unicodedata

from lmforge.data.document import Document
from lmforge.data.htmltext import extract_html, looks_like_html
from lmforge.data.mojibake import repair_mojibake
from lmforge.data.steps.base import Transform

_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# C0/C1 controls except tab and newline, plus invisible format characters (zero-width
# spaces, word joiner, BOM, soft hyphen) that split words without showing.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2060\ufeff]")


def collapse_whitespace(text: str) -> str:
    """One space between words, one newline between non-empty lines, no blank lines."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


# Passes that can uncover more to fix: a control character removed from between garbled
# bytes, or a second level of escaped entities.
_REPEATING_FIXES = frozenset({"control_chars_removed", "entities_decoded"})
_MAX_PASSES = 3


def normalize_text(text: str, strip_markup: bool = True) -> tuple[str, list[str]]:
    """The normalized text and the fixes applied (for the step's event counts).

    One pass rarely leaves work behind, but it can: a control character between garbled
    bytes hides mojibake until it is gone, and "&amp;amp;" decodes one level at a time. So a
    pass that made such a fix is followed by another, and normalising is idempotent.
    """
    fixes: list[str] = []
    for _ in range(_MAX_PASSES):
        text, done = _normalize_once(text, strip_markup)
        fixes.extend(f for f in done if f not in fixes)
        if not _REPEATING_FIXES.intersection(done):
            break
    return text, fixes


def _normalize_once(text: str, strip_markup: bool) -> tuple[str, list[str]]:
    """Mojibake is repaired first: NFKC would rewrite some of the garbled characters
    ("¼" -> "1⁄4") and make the original bytes unrecoverable."""
    fixes = []
    # Composed first: "e" + U+0301 is the cp1252 byte "é" only once composed, so mojibake
    # spelled with combining marks would otherwise surface (and be repaired) a pass later.
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        fixes.append("nfkc")
    repaired = repair_mojibake(text)
    if repaired != text:
        fixes.append("mojibake_repaired")
        text = repaired
    if strip_markup and "&" in text and _ENTITY.search(text):
        text = html.unescape(text)  # first, so escaped tags are seen as tags below
        fixes.append("entities_decoded")
    if strip_markup and "<" in text and looks_like_html(text):
        text = extract_html(text).text
        fixes.append("markup_stripped")
    nfkc = unicodedata.normalize("NFKC", text)
    if nfkc != text:
        fixes.append("nfkc")
        text = nfkc
    cleaned = _INVISIBLE.sub("", text)
    if cleaned != text:
        fixes.append("control_chars_removed")
    # Again: dropping U+200B from "e\u200b\u0301" leaves a decomposed "é".
    return collapse_whitespace(unicodedata.normalize("NFKC", cleaned)), fixes


class Normalizer(Transform):
    """Markup is stripped from every source: a page that shows escaped markup as text
    ("&lt;br/&gt;") carries tag residue that no training text wants."""

    name = "normalize"

    def transform(self, doc: Document) -> None:
        text, fixes = normalize_text(doc.text)
        doc.set_text(text)
        self.stats.events.update(fixes)
        if doc.content is not None:
            doc.content = normalize_text(doc.content)[0]
