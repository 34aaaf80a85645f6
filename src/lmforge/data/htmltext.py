"""Main-text extraction from HTML: drop page chrome, keep the content blocks.

Page chrome is dropped three ways: by element (nav, header, footer, aside, script, ...), by
class/id/role hints (cookie banners, share bars, related links), and by link density (a
block that is mostly link text is a menu). When the page marks its content with <main> or
<article>, only blocks inside it are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser


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
    in_main: bool = False


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, skipping, main) per open element
        self.blocks: list[_Block] = [_Block()]
        self.meta: dict[str, str] = {}
        self.title_parts: list[str] = []
        self.link_depth = 0
        self.in_title = False

    @property
    def skipping(self) -> bool:
        return bool(self.stack) and self.stack[-1][1]

    @property
    def in_main(self) -> bool:
        return bool(self.stack) and self.stack[-1][2]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
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
        main = self.in_main or tag in ("main", "article") or values.get("role") == "main"
        self.stack.append((tag, skip, main))
        if tag == "a":
            self.link_depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS and self.stack and self.stack[-1][0] == tag:
            self.handle_endtag(tag)

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
        block.in_main |= self.in_main
        if self.link_depth:
            block.link_chars += len(data.strip())

    def _new_block(self) -> None:
        if self.blocks[-1].parts:
            self.blocks.append(_Block())


def extract_html(markup: str) -> HtmlContent:
    """The main text of a page (one line per block), its <meta> values and its title."""
    parser = _Extractor()
    parser.feed(markup)
    parser.close()
    has_main = any(b.in_main and "".join(b.parts).strip() for b in parser.blocks)
    lines = []
    for block in parser.blocks:
        if has_main and not block.in_main:
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
