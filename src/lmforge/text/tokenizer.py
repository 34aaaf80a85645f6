"""A WordPiece tokenizer trained offline on the run's own text (HF `tokenizers`).

BERT-style normalisation lowercases, strips accents and puts spaces around every CJK
character, so Chinese is split into single characters while English gets word pieces.
The vocabulary is learned here (greedy pair merges with deterministic tie-breaking) rather
than by HF's trainer, whose ties follow hash-map order and differ between runs; HF
`tokenizers` still does the normalising and the fast encoding. The saved `tokenizer.json`
carries no truncation or padding: `encode_texts` applies both, so training and inference
truncate the same way without mutating a shared tokenizer.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from lmforge.errors import InputDataError, LmforgeError
from lmforge.workspace import atomic_write_text

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # their ids are their positions: [PAD] = 0
PAD_ID = 0
_PREFIX = "##"  # marks a piece that continues a word
_MAX_WORD_CHARS = 100  # longer "words" (URLs, hashes) become [UNK] instead of 100 pieces

# A token covers at least one non-space character, so cutting the raw text at this many
# characters per allowed token never changes the truncated result for ordinary text and
# keeps a 20,000-character document from being tokenised in full just to be cut.
_CHARS_PER_TOKEN_BOUND = 16


class TokenizerError(LmforgeError):
    """A tokenizer file is missing, unreadable or lacks the special tokens."""


def _normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )


def count_words(texts: Iterable[str]) -> Counter[str]:
    """Word frequencies after the tokenizer's own normalisation and pre-tokenisation."""
    norm, pre = _normalizer(), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return counts


def learn_wordpiece_vocab(
    word_counts: Mapping[str, int], vocab_size: int, min_frequency: int = 2
) -> list[str]:
    """Learn word pieces by greedy pair merging, ties broken by the pieces themselves.

    The same algorithm as BPE-trained WordPiece (HF's trainer): start from characters
    (`##` marks a piece inside a word), repeatedly merge the most frequent adjacent pair.
    Written here because HF's trainer breaks count ties in hash-map order, which makes two
    trainings on the same text disagree. Returns tokens without the special tokens.
    """
    budget = vocab_size - len(SPECIAL_TOKENS)
    words: list[list[str]] = []
    counts: list[int] = []
    for word, count in sorted(word_counts.items()):
        if 0 < len(word) <= _MAX_WORD_CHARS:
            words.append([word[0], *(_PREFIX + ch for ch in word[1:])])
            counts.append(count)
    alphabet: Counter[str] = Counter()
    for symbols, count in zip(words, counts, strict=True):
        for symbol in symbols:
            alphabet[symbol] += count
    vocab = sorted(alphabet, key=lambda s: (-alphabet[s], s))[:budget]
    known = set(vocab)

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> words holding it
    for w, symbols in enumerate(words):
        for pair in pairwise(symbols):
            pair_counts[pair] += counts[w]
            where[pair].add(w)
    # Max-heap by count, then by the pair's text; entries go stale as counts change.
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < budget and heap:
        neg_count, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg_count:
            continue
        if -neg_count < min_frequency:
            break
        merged = a + b[len(_PREFIX) :]
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed: set[tuple[str, str]] = set()
        for w in sorted(where.pop((a, b))):
            old, count = words[w], counts[w]
            for pair in pairwise(old):
                pair_counts[pair] -= count
                if pair in where:
                    where[pair].discard(w)
                changed.add(pair)
            new = _merge_pair(old, a, b, merged)
            words[w] = new
            for pair in pairwise(new):
                pair_counts[pair] += count
                where[pair].add(w)
                changed.add(pair)
        pair_counts.pop((a, b), None)
        for pair in changed:
            if pair_counts.get(pair, 0) > 0 and pair != (a, b):
                heapq.heappush(heap, (-pair_counts[pair], *pair))
    return vocab


def _merge_pair(symbols: list[str], a: str, b: str, merged: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a WordPiece tokenizer; the result adds `[CLS] ... [SEP]` around each text.

    Deterministic: the same texts give the same `tokenizer.json`, byte for byte.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise TokenizerError(f"vocab_size={vocab_size} is too small; use at least 100")
    counts = count_words(texts)
    if not counts:
        raise InputDataError("cannot train a tokenizer on no text; the training split is empty")
    learned = learn_wordpiece_vocab(counts, vocab_size, min_frequency)
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *learned])}
    tok = Tokenizer(
        models.WordPiece(
            vocab,
            unk_token=UNK,
            continuing_subword_prefix=_PREFIX,
            max_input_chars_per_word=_MAX_WORD_CHARS,
        )
    )
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=_PREFIX)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    _check_specials(tok, "the trained tokenizer")
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write `tokenizer.json` atomically."""
    path = Path(path)
    atomic_write_text(path, tok.to_str(pretty=False))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json` written by `save_tokenizer` (or any BERT-style HF tokenizer)."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}; train a model first")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception on malformed JSON
        raise TokenizerError(f"cannot read tokenizer {path}: {exc}") from exc
    _check_specials(tok, str(path))
    return tok


def _check_specials(tok: Tokenizer, where: str) -> None:
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise TokenizerError(f"{where} lacks the special tokens {missing}; retrain it")


def encode_texts(tok: Tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids `[CLS] ... [SEP]` per text, truncated to at most `max_len` ids."""
    if max_len < 3:
        raise LmforgeError(f"max_len={max_len} leaves no room for text; use at least 8")
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    limit = max_len * _CHARS_PER_TOKEN_BOUND
    clipped = [t[:limit] if isinstance(t, str) else str(t) for t in texts]
    encodings = tok.encode_batch(clipped, add_special_tokens=False)
    body = max_len - 2
    return [[cls_id, *enc.ids[:body], sep_id] for enc in encodings]


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Pad to the longest sequence: (input_ids int64 [B, T], attention_mask int64 [B, T])."""
    width = max((len(x) for x in ids), default=1)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask
