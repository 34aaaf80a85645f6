"""Chinese person names in arbitrary text: chunking, a cheap gate, the tagger, offset mapping.

Text is cut into sentence-sized chunks (the tagger was trained on sentences of up to ~100
characters), chunks without CJK characters or without any common surname character skip the
model, the rest are tagged in one batch and the spans are shifted back to offsets in the input.
"""

from __future__ import annotations

import re
import threading

from lmforge.data.names.zh_tagger import WEIGHTS, ZhPersonTagger, load_tagger

MAX_CHUNK = 150
# A lone character tagged as a name is mostly a surname-like character inside a common word
# in review text ("行李", "生姜"); a full name has at least two characters.
MIN_NAME_CHARS = 2
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SENTENCE_END = re.compile(r"[。！？；!?;\n]+")
_SOFT_BREAK = re.compile(r"[，、,：:\s]")

_tagger: ZhPersonTagger | None = None
_lock = threading.Lock()


def get_tagger() -> ZhPersonTagger:
    """The shipped tagger, loaded once per process on first use."""
    global _tagger
    if _tagger is None:
        with _lock:
            if _tagger is None:
                _tagger = load_tagger(WEIGHTS)
    return _tagger


def _split_long(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Cut [start, end) into pieces of at most MAX_CHUNK characters, preferring to cut after a
    comma or space so that a name is rarely split."""
    pieces = []
    while end - start > MAX_CHUNK:
        cut = start + MAX_CHUNK
        for m in _SOFT_BREAK.finditer(text, start + MAX_CHUNK // 2, start + MAX_CHUNK):
            cut = m.end()
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def chunks(text: str) -> list[tuple[int, int]]:
    """[start, end) pieces of `text` that end at sentence punctuation or are at most
    MAX_CHUNK characters long; together they cover the text."""
    pieces: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        pieces.extend(_split_long(text, start, m.end()))
        start = m.end()
    if start < len(text):
        pieces.extend(_split_long(text, start, len(text)))
    return pieces


def find_chinese_names(text: str) -> list[tuple[int, int]]:
    """[start, end) character offsets of Chinese person names in `text`."""
    if not _CJK.search(text):
        return []
    tagger = get_tagger()
    surnames = tagger.surnames
    todo = []
    for start, end in chunks(text):
        piece = text[start:end]
        if _CJK.search(piece) and (not surnames or not surnames.isdisjoint(piece)):
            todo.append((start, piece))
    if not todo:
        return []
    found = tagger.spans([piece for _, piece in todo])
    return sorted(
        (offset + a, offset + b)
        for (offset, _), spans in zip(todo, found, strict=True)
        for a, b in spans
        if b - a >= MIN_NAME_CHARS
    )


__all__ = ["MAX_CHUNK", "MIN_NAME_CHARS", "chunks", "find_chinese_names", "get_tagger"]
