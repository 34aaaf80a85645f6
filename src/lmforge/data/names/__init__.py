"""Person-name detection for PII masking.

`find_chinese_names` runs a small character tagger trained on MSRA NER (numpy inference,
weights shipped next to this file, loaded once per process); `find_english_names` uses
built-in name lists and title cues; `find_person_names` returns both. Every function returns
sorted [start, end) character offsets into the text it was given.
"""

from __future__ import annotations

from lmforge.data.names.en_names import find_english_names
from lmforge.data.names.spans import merge_spans
from lmforge.data.names.zh_names import find_chinese_names


def find_person_names(text: str) -> list[tuple[int, int]]:
    """Chinese and English name spans, sorted and non-overlapping (on overlap the earlier,
    then longer, span is kept)."""
    return merge_spans(find_chinese_names(text) + find_english_names(text))


__all__ = ["find_chinese_names", "find_english_names", "find_person_names"]
