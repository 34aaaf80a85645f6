"""Person names for many texts at once: one tagger call per batch instead of one per text.

The Chinese tagger's cost is dominated by per-call overhead (a call on one short sentence
costs about as much as a call on a few hundred), so the cleaning line collects the chunks
of a few hundred documents and tags them together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmforge.data.names.en_names import find_english_names
from lmforge.data.names.spans import merge_spans
from lmforge.data.names.zh_names import MIN_NAME_CHARS, chunks, get_tagger

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def find_person_names_batch(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """`find_person_names` of every text, with the Chinese tagger run once for the batch."""
    todo: list[tuple[int, int, str]] = []  # (text index, chunk offset, chunk)
    tagger = None
    for i, text in enumerate(texts):
        if not _CJK.search(text):
            continue
        if tagger is None:
            tagger = get_tagger()
        surnames = tagger.surnames
        for start, end in chunks(text):
            piece = text[start:end]
            if _CJK.search(piece) and (not surnames or not surnames.isdisjoint(piece)):
                todo.append((i, start, piece))
    found: list[list[tuple[int, int]]] = [find_english_names(t) for t in texts]
    if todo and tagger is not None:
        tagged = tagger.spans([piece for _, _, piece in todo])
        for (i, offset, _), spans in zip(todo, tagged, strict=True):
            found[i].extend((offset + a, offset + b) for a, b in spans if b - a >= MIN_NAME_CHARS)
    return [merge_spans(spans) for spans in found]
