"""Noise injectors: which kinds a noisy document gets, and the text transformations.

Removal kinds (junk, short, gibberish, other languages, spam) go only to the free-text sources
(web pages, posts): a structured record renders through a template that adds product fields,
so its text is never empty or pure junk. Records get duplicates, PII and mojibake.
"""

from __future__ import annotations

import random
import unicodedata

from lmforge.demo import bank_misc

NOISE_KINDS = (
    "exact_duplicate",
    "near_duplicate",
    "pii",
    "mojibake",
    "html_junk",
    "too_short",
    "gibberish",
    "wrong_language",
    "spam",
)
REMOVAL_KINDS = ("html_junk", "too_short", "gibberish", "wrong_language", "spam")
DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate")

# (kinds, weight) for a noisy document, per source family.
_TEXT_MIX = (
    (("exact_duplicate",), 12),
    (("near_duplicate",), 10),
    (("pii",), 16),
    (("mojibake",), 8),
    (("html_junk",), 9),
    (("too_short",), 7),
    (("gibberish",), 7),
    (("wrong_language",), 9),
    (("spam",), 7),
    (("near_duplicate", "pii"), 6),
    (("pii", "mojibake"), 5),
    (("pii", "spam"), 4),
)
_RECORD_MIX = (
    (("exact_duplicate",), 24),
    (("near_duplicate",), 20),
    (("pii",), 30),
    (("mojibake",), 12),
    (("near_duplicate", "pii"), 8),
    (("pii", "mojibake"), 6),
)
_MIXES = {"text": _TEXT_MIX, "record": _RECORD_MIX}


def pick_kinds(rng: random.Random, family: str) -> tuple[str, ...]:
    mix = _MIXES[family]
    return rng.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]


def normalize(text: str) -> str:
    """NFKC + whitespace collapse: the equality under which exact duplicates are equal."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


# -- duplicates --------------------------------------------------------------------------------


def exact_variant(rng: random.Random, text: str) -> str:
    """The same text, or a copy equal to it only after NFKC and whitespace collapse."""
    roll = rng.random()
    if roll < 0.5:
        return text
    if roll < 0.75:
        return _whitespace_variant(rng, text)
    # Full-width forms of ASCII characters (and half-width CJK punctuation): NFKC undoes both.
    table = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F))}
    table["，"] = ","
    table["！"] = "!"
    out = "".join(table.get(c, c) if rng.random() < 0.7 else c for c in text)
    return _whitespace_variant(rng, out) if rng.random() < 0.3 else out


def _whitespace_variant(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    if len(words) > 1:
        glue = [rng.choice((" ", " ", "  ", "\n", " \t")) for _ in words[1:]]
        text = words[0] + "".join(g + w for g, w in zip(glue, words[1:], strict=True))
    return rng.choice(("", " ", "\n", "\u3000")) + text + rng.choice(("", " ", "\n", "  "))


def near_edit(rng: random.Random, text: str, lang: str) -> str:
    """A copy with one to three small edits that survive normalisation."""
    base = normalize(text)
    edits = _ZH_EDITS if lang == "zh" else _EN_EDITS
    out = text
    for _ in range(8):
        for _ in range(1 if len(text) < 60 else rng.choice((1, 1, 2, 3))):
            out = rng.choice(edits)(rng, out)
        if normalize(out) != base:
            return out
    return out + ("！" if lang == "zh" else " !")


def _swap_letters(rng: random.Random, text: str) -> str:
    spots = [i for i in range(len(text) - 1) if text[i].isalpha() and text[i + 1].isalpha()]
    if not spots:
        return text
    i = rng.choice(spots)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def _drop_char(rng: random.Random, text: str) -> str:
    if len(text) < 10:
        return text
    i = rng.randrange(len(text))
    return text[:i] + text[i + 1 :]


def _end_mark(rng: random.Random, text: str) -> str:
    stripped = text.rstrip(".!。！")
    return stripped + rng.choice(("!!", "...", "!", "。。", "～"))


def _en_filler(rng: random.Random, text: str) -> str:
    return rng.choice(("Honestly, ", "Update: ", "tbh ", "So, ")) + text[:1].lower() + text[1:]


def _zh_filler(rng: random.Random, text: str) -> str:
    return rng.choice(("说实话，", "更新一下：", "补充一下，", "嗯，")) + text


def _zh_drop_particle(rng: random.Random, text: str) -> str:
    spots = [i for i, c in enumerate(text) if c in "的了很挺"]
    if not spots:
        return _drop_char(rng, text)
    i = rng.choice(spots)
    return text[:i] + text[i + 1 :]


def _repeat_char(rng: random.Random, text: str) -> str:
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[: i + 1] + text[i] + text[i + 1 :]


_EN_EDITS = (_swap_letters, _drop_char, _end_mark, _en_filler, _repeat_char)
_ZH_EDITS = (_zh_drop_particle, _end_mark, _zh_filler, _repeat_char, _drop_char)


# -- mojibake ----------------------------------------------------------------------------------

# Windows-1252 leaves five bytes undefined; browsers (and this) map them to C1 controls.
_CP1252 = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256))
_LATIN1 = "".join(chr(b) for b in range(256))
_FORBIDDEN = set("&<>\"'\\\ufffd")


def _typographic(text: str) -> str:
    """English text is mostly ASCII, which survives any codec; add what real text has."""
    text = text.replace("'", "’")
    if ", " in text:
        text = text.replace(", ", " — ", 1)
    if text.endswith("."):
        text = text[:-1] + "…"
    return text if any(ord(c) > 127 for c in text) else text + " 👍"


def garble(
    rng: random.Random, text: str, lang: str, codecs: tuple[str, ...], partial: bool = True
) -> tuple[str, list[str]]:
    """Encode as UTF-8 and decode with a wrong codec, the whole text or its first sentence.

    Returns the garbled text and up to three fragments that exist only in it (the markers).
    """
    source = _typographic(text) if lang != "zh" else text
    codec = rng.choice(codecs)
    stop = "。" if lang == "zh" else ". "
    head, _, tail = source.partition(stop)
    if partial and tail and not head.isascii() and rng.random() < 0.25:
        garbled = _decode_wrong(head, codec) + stop + tail
    else:
        garbled = _decode_wrong(source, codec)
    return garbled, _fragments(rng, garbled, source)


def _decode_wrong(text: str, codec: str) -> str:
    data = text.encode("utf-8")
    if codec == "gbk":
        return data.decode("gbk", errors="replace")
    table = _CP1252 if codec == "cp1252" else _LATIN1
    return "".join(table[b] for b in data)


def _fragments(rng: random.Random, garbled: str, original: str) -> list[str]:
    runs: list[str] = []
    current = ""
    for ch in garbled + "\0":
        if ord(ch) > 127 and ch.isprintable() and ch not in _FORBIDDEN and not ch.isspace():
            current += ch
            continue
        if len(current) >= 2:
            runs.append(current)
        current = ""
    pieces = []
    for run in runs:
        size = min(len(run), rng.choice((2, 3, 4)))
        start = rng.randrange(len(run) - size + 1)
        piece = run[start : start + size]
        if piece not in original and piece not in pieces:
            pieces.append(piece)
    if len(pieces) > 3:
        pieces = [pieces[i] for i in sorted(rng.sample(range(len(pieces)), 3))]
    return pieces


# -- removal kinds -----------------------------------------------------------------------------


def html_junk_text(rng: random.Random, lang: str) -> str:
    return " ".join(rng.sample(bank_misc.JUNK[lang], rng.choice((2, 3, 4))))


def too_short_text(rng: random.Random, lang: str) -> str:
    return rng.choice(bank_misc.SHORT[lang])


def gibberish_text(rng: random.Random) -> str:
    style = rng.random()
    n = rng.randrange(20, 80)
    if style < 0.35:  # keyboard mash
        row = rng.choice(bank_misc.KEYBOARD_ROWS)
        return "".join(row[min(len(row) - 1, int(rng.random() * len(row)))] for _ in range(n))
    if style < 0.65:  # consonant soup in fake words
        consonants = "bcdfghjklmnpqrstvwxz"
        words = []
        for _ in range(n // 6):
            words.append("".join(rng.choice(consonants) for _ in range(rng.randrange(3, 9))))
        return " ".join(words)
    pool = "abcdefghijklmnopqrstuvwxyz0123456789" + bank_misc.SYMBOLS * 2
    return "".join(rng.choice(pool) for _ in range(n))


def wrong_language_text(rng: random.Random) -> str:
    lang = rng.choice(sorted(bank_misc.FOREIGN))
    sentences = rng.sample(bank_misc.FOREIGN[lang], rng.choice((1, 2, 3)))
    return ("" if lang == "ja" else " ").join(sentences)


def spam_text(rng: random.Random, lang: str, contact: str | None = None) -> str:
    if contact is None:
        phrase = rng.choice(bank_misc.SPAM[lang])
    else:
        phrase = rng.choice(bank_misc.SPAM_CONTACT[lang]).format(x=contact)
    sep = rng.choice((" ", " ", "\n", " !!! ")) if lang == "en" else rng.choice(("", " ", "！"))
    return sep.join([phrase] * rng.randrange(6, 15))
