"""Main-text extraction from HTML: drop page chrome, keep the content blocks.

Page chrome is dropped three ways: by element (nav, header, footer, aside, script, ...), by
class/id/role hints (cookie banners, share bars, related links), and by link density (a
block that is mostly link text is a menu). When the page marks its content, only the most
specific marked content is kept: <article> (or an itemprop "...Body") over <main>, <main>
over the rest of <body>; <main> also holds titles, bylines and voting widgets.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass, field


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SKIP_TAGS = _words(
    "head script style noscript template svg iframe object canvas nav header footer aside "
    "form button select option textarea dialog menu"
)
_BLOCK_TAGS = _words(
    "address article blockquote body br dd div dl dt figcaption figure h1 h2 h3 h4 h5 h6 hr "
    "li main ol p pre section table tbody td tfoot th thead tr ul"
)
_VOID_TAGS = _words("area base br col embed hr img input link meta source track wbr")
_CHROME_HINT = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|menu|breadcrumbs?|cookies?|consent|gdpr|banner|"
    r"share|sharing|social|related|recommend(?:ed|ations?)?|sidebar|footer|header|masthead|"
    r"ads?|advert\w*|sponsor\w*|promo\w*|newsletter|subscribe|signup|login|popup|modal)"
    r"(?:$|[\s_-])",
    re.IGNORECASE,
)
_CHROME_ROLES = _words("navigation banner contentinfo complementary search dialog alertdialog menu")
_ASCII_SPACE = re.compile(r"[ \t\r\n\f]+")  # NBSP is kept: it can be part of mojibake
_MAX_LINK_DENSITY = 0.5
_TAG = re.compile(
    r"<!--.*?(?:-->|$)|<![^>]*>|<\?[^>]*>"
    r"|<(/?)([A-Za-z][A-Za-z0-9:-]*)([^>\"']*(?:(?:\"[^\"]*\"|'[^']*')[^>\"']*)*)>",
    re.DOTALL,
)
_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?""")
_RAW_TEXT = frozenset({"script", "style", "title", "textarea"})


@functools.cache
def _closing_tag(tag: str) -> re.Pattern[str]:
    return re.compile(rf"</{tag}\s*>", re.IGNORECASE)


def _unescape(text: str) -> str:
    return html.unescape(text) if "&" in text else text


# Tag names that mark a string as markup (used to decide whether to run the extractor on
# text from a non-HTML source without mangling a stray "<" in prose).
HTML_TAG_RE = re.compile(
    r"</?(?:a|abbr|article|aside|b|blockquote|body|br|button|div|em|footer|form|h[1-6]|head|"
    r"header|hr|html|i|iframe|img|input|li|link|main|meta|nav|noscript|ol|p|script|section|"
    r"select|small|span|strong|style|table|td|th|tr|u|ul)(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)


@dataclass
class HtmlContent:
    text: str
    meta: dict[str, str] = field(default_factory=dict)  # <meta name=... content=...>
    title: str = ""


@dataclass
class _Block:
    parts: list[str] = field(default_factory=list)
    link_chars: int = 0
    level: int = 0  # content level of the innermost marked container it lies in


class _Extractor:
    """A small tag scanner (regexes, not html.parser: 5-10x faster on whole pages) that
    feeds start tags, end tags and text to the block builder below."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, bool, int]] = []  # (tag, skipping, level) per open element
        self.blocks: list[_Block] = [_Block()]
        self.meta: dict[str, str] = {}
        self.title_parts: list[str] = []
        self.link_depth = 0
        self.in_title = False
        self.top_level = 0  # most specific content container the page marks

    def feed(self, markup: str) -> None:
        pos = 0
        while True:
            m = _TAG.search(markup, pos)
            if m is None:
                break
            if m.start() > pos:
                self.handle_data(_unescape(markup[pos : m.start()]))
            pos = m.end()
            name = m.group(2)
            if name is None:  # comment, doctype, processing instruction
                continue
            tag = name.lower()
            if m.group(1):
                self.handle_endtag(tag)
                continue
            raw_attrs = m.group(3)
            attrs = (
                [
                    (a.group(1).lower(), _unescape(a.group(2) or a.group(3) or a.group(4) or ""))
                    for a in _ATTR.finditer(raw_attrs)
                ]
                if raw_attrs.strip()
                else []
            )
            self.handle_starttag(tag, attrs)
            if tag in _RAW_TEXT:  # contents are text up to the closing tag, never markup
                close = _closing_tag(tag).search(markup, pos)
                end = close.start() if close else len(markup)
                self.handle_data(_unescape(markup[pos:end]))
                pos = close.end() if close else end
                self.handle_endtag(tag)
            elif raw_attrs.rstrip().endswith("/") and tag not in _VOID_TAGS:
                self.handle_endtag(tag)
        if pos < len(markup):
            self.handle_data(_unescape(markup[pos:]))

    @property
    def skipping(self) -> bool:
        return bool(self.stack) and self.stack[-1][1]

    @property
    def level(self) -> int:
        return self.stack[-1][2] if self.stack else 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str]]) -> None:
        values = dict(attrs)
        if tag == "meta":
            name = values.get("name") or values.get("property")
            if name:
                self.meta[name.lower()] = values.get("content", "")
            return
        if tag == "title":
            self.in_title = True
        if tag in _BLOCK_TAGS:
            self._new_block()
        if tag in _VOID_TAGS:
            return
        hint = f"{values.get('class', '')} {values.get('id', '')}"
        skip = (
            self.skipping
            or tag in _SKIP_TAGS
            or values.get("role", "").lower() in _CHROME_ROLES
            or values.get("aria-hidden") == "true"
            or bool(_CHROME_HINT.search(hint))
        )
        own = 0
        if tag == "article" or values.get("itemprop", "").endswith("Body"):
            own = 2
        elif tag == "main" or values.get("role") == "main":
            own = 1
        level = max(self.level, own)
        if not skip:
            self.top_level = max(self.top_level, level)
        self.stack.append((tag, skip, level))
        if tag == "a":
            self.link_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        # Close up to the matching open element; an unmatched end tag is ignored, so a stray
        # </div> cannot end a skipped region early or late.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for closed, _, _ in self.stack[i:]:
                    if closed == "a":
                        self.link_depth = max(0, self.link_depth - 1)
                del self.stack[i:]
                break
        if tag in _BLOCK_TAGS:
            self._new_block()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
            return
        if self.skipping:
            return
        block = self.blocks[-1]
        block.parts.append(data)
        block.level = max(block.level, self.level)
        if self.link_depth:
            block.link_chars += len(data.strip())

    def _new_block(self) -> None:
        if self.blocks[-1].parts:
            self.blocks.append(_Block())


def extract_html(markup: str) -> HtmlContent:
    """The main text of a page (one line per block), its <meta> values and its title."""
    parser = _Extractor()
    parser.feed(markup)
    # An empty <article> means the page has no content, not that the title and byline are.
    top = parser.top_level
    lines = []
    for block in parser.blocks:
        if block.level < top:
            continue
        line = _ASCII_SPACE.sub(" ", "".join(block.parts)).strip()
        if not line:
            continue
        if block.link_chars > _MAX_LINK_DENSITY * len(line.replace(" ", "")):
            continue
        lines.append(line)
    title = _ASCII_SPACE.sub(" ", "".join(parser.title_parts)).strip()
    return HtmlContent(text="\n".join(lines), meta=parser.meta, title=title)


def looks_like_html(text: str) -> bool:
    return HTML_TAG_RE.search(text) is not None
