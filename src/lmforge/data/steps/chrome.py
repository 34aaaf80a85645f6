"""Cuts site chrome glued to the end of a line of real text.

Scraped reviews often carry the page footer in the same line ("...退房时速度有点慢！免费注册
网站导航 关于携程 联系我们 Copyright 1999-2008 ctrip.com all rights reserved"). Judged as a
whole, such a line is chrome and the boilerplate filter would drop the review with it; cut,
the review stays and the footer goes.

A tail is cut only when it is clearly chrome: it starts with a run of menu items (short
items with no sentence punctuation; in Latin script, capitalised) or with a chrome phrase,
it holds at least two chrome phrases (or one copyright notice), most of it is chrome phrases
or menu items, and some text stays before it. A single "contact us" inside a sentence is left alone.
"""

from __future__ import annotations

import re

from lmforge.data.charclass import weighted_length
from lmforge.data.document import Document
from lmforge.data.steps.base import Transform
from lmforge.data.steps.wordlists import BOILERPLATE_PHRASES

_COPYRIGHT = re.compile(r"copyright|©|all rights reserved|版权所有|ICP备", re.IGNORECASE)
# Item boundaries: spaces, menu separators, or the end of a sentence (kept with its sentence).
_BOUNDARY = re.compile(r"\s+|\s*[|·•»›]\s*|(?<=[。！？!?；;…])")
_SENTENCE_MARK = re.compile(r"[。！？!?；;…，,:：.]")
_CJK = re.compile(r"[\u3400-\u9fff]")
MAX_ITEM = 12  # weighted length of a menu item ("网站导航" is 8 with CJK counted twice)
MAX_ITEMS = 16
MIN_HEAD = 10  # weighted length the text before the chrome must keep
MIN_CHROME_SHARE = 0.6


def _menu_item(item: str) -> bool:
    if not item or weighted_length(item) > MAX_ITEM or _SENTENCE_MARK.search(item):
        return False
    return bool(_CJK.search(item)) or item[0].isupper() or item[0].isdigit()


def _items_before(head: str) -> list[int]:
    """Start offsets of the menu items that end `head`, nearest first."""
    starts: list[int] = []
    end = len(head.rstrip())
    pieces = [m.end() for m in _BOUNDARY.finditer(head, 0, end)]
    for start in reversed([0, *pieces]):
        if start >= end:
            continue
        item = head[start:end].strip(" |·•»›")
        if not _menu_item(item):
            break
        starts.append(start)
        if len(starts) == MAX_ITEMS:
            break
        end = len(head[:start].rstrip())
    return starts


def trim_trailing_chrome(line: str) -> str:
    """`line` without a footer glued to its end; unchanged if there is none."""
    first = BOILERPLATE_PHRASES.search(line)
    if first is None:
        return line
    starts = _items_before(line[: first.start()])
    cut = starts[-1] if starts else first.start()
    tail, head = line[cut:], line[:cut].rstrip()
    phrases = len(BOILERPLATE_PHRASES.findall(tail))
    if phrases < 2 and not _COPYRIGHT.search(tail):
        return line
    if weighted_length(head) < MIN_HEAD or _chrome_share(tail) < MIN_CHROME_SHARE:
        return line
    return head


def _chrome_share(tail: str) -> float:
    """Share of the tail (weighted, spaces aside) in chrome phrases or menu items: a sentence
    that happens to hold a phrase ("联系我们就行，结果房间很脏") stays below the bar."""
    total = weighted_length("".join(tail.split()))
    rest = BOILERPLATE_PHRASES.sub(" ", tail)
    prose = sum(
        weighted_length(item)
        for item in _BOUNDARY.split(rest)
        if item.strip() and not _menu_item(item.strip(" |·•»›"))
    )
    return 1.0 - prose / total if total else 0.0


def trim_chrome(text: str) -> str:
    return "\n".join(trim_trailing_chrome(line) for line in text.split("\n"))


class ChromeTrimmer(Transform):
    """Cuts footers glued to a line of text; counts the documents it changed."""

    name = "trim_chrome"

    def transform(self, doc: Document) -> None:
        text = trim_chrome(doc.text)
        if doc.content is not None:
            content = trim_chrome(doc.content)
            if content != doc.content:
                text = text.replace(doc.content, content, 1)
                doc.content = content
        if text != doc.text:
            doc.set_text(text)
            self.stats.events["trimmed"] += 1


__all__ = ["ChromeTrimmer", "trim_chrome", "trim_trailing_chrome"]
