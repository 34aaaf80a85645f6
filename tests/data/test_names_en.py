"""English person names: exact spans on clear cases, nothing on places, products and brands."""

import pytest

from lmforge.data.names import find_english_names, find_person_names


def names(text: str) -> list[str]:
    return [text[a:b] for a, b in find_english_names(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call John Smith at 555-0100.", ["John Smith"]),
        ("Dr. Alice Wong will see you at noon.", ["Alice Wong"]),
        ("Mr Smith and Mrs. O'Brien arrived late.", ["Smith", "O'Brien"]),
        ("The speech by John F. Kennedy is famous.", ["John F. Kennedy"]),
        ("A painting by Vincent van Gogh hangs here.", ["Vincent van Gogh"]),
        ("Will Smith starred in the film.", ["Will Smith"]),
        ("Thanks for the help, Michael.", ["Michael"]),
        ("Sarah's laptop stopped charging.", ["Sarah"]),
        ("Please ask Prof. J. R. Tolkien.", ["J. R. Tolkien"]),
        ("President Biden met Emma and Jordan Peterson.", ["Biden", "Emma", "Jordan Peterson"]),
    ],
)
def test_finds_names(text, expected):
    assert names(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I bought a Kindle in Paris.",
        "Jordan shoes are comfortable.",
        "Will you ship it to Austin by May?",
        "Hope the Grace Period is long enough.",
        "We walked across the George Washington Bridge.",
        "The John Lewis store was closed.",
        "General Motors recalled the Model Y charger.",
        "Ask Alexa to play some music.",
        "Apple Watch Review: Great Battery, Bright Screen",
        "all lower case john smith and ALL CAPS JOHN SMITH",
        "",
    ],
)
def test_no_names(text):
    assert names(text) == []


def test_offsets_are_exact_and_title_is_excluded():
    text = "Hello.\nDr. Alice Wong, and then Mr. Lee."
    spans = find_english_names(text)
    assert spans == [(11, 21), (36, 39)]
    assert [text[a:b] for a, b in spans] == ["Alice Wong", "Lee"]


def test_person_names_without_chinese_text_equals_english():
    text = "Call John Smith or Dr. Alice Wong."
    assert find_person_names(text) == find_english_names(text)
