"""A WordPiece tokenizer trained offline on the run's own text (HF `tokenizers`).

BERT-style normalisation lowercases, strips accents and puts spaces around every CJK
character, so Chinese is split into single characters while English gets word pieces.
Count ties between merge candidates are broken in hash-map order inside the trainer, so two
trainings on the same text can differ in a few rare tokens; a resumed run reuses the saved
file instead of retraining. The saved `tokenizer.json` carries no truncation or padding: `encode_texts` applies both, so
training and inference truncate the same way without mutating a shared tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import WordPieceTrainer

from lmforge.errors import InputDataError, LmforgeError
from lmforge.workspace import atomic_write_text

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # their ids are their positions: [PAD] = 0
PAD_ID = 0

# A token covers at least one non-space character, so cutting the raw text at this many
# characters per allowed token never changes the truncated result for ordinary text and
# keeps a 20,000-character document from being tokenised in full just to be cut.
_CHARS_PER_TOKEN_BOUND = 16


class TokenizerError(LmforgeError):
    """A tokenizer file is missing, unreadable or lacks the special tokens."""


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a WordPiece tokenizer; the result adds `[CLS] ... [SEP]` around each text."""
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise TokenizerError(f"vocab_size={vocab_size} is too small; use at least 100")
    tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    seen = 0

    def counted(items: Iterable[str]) -> Iterable[str]:
        nonlocal seen
        for text in items:
            seen += 1
            yield text

    tok.train_from_iterator(counted(texts), trainer=trainer)
    if seen == 0:
        raise InputDataError("cannot train a tokenizer on no texts; the training split is empty")
    # The trainer numbers tokens in hash-map order, which changes from process to process;
    # renumber them (specials first, then sorted) so equal vocabularies get equal ids.
    learned = sorted(t for t in tok.get_vocab() if t not in SPECIAL_TOKENS)
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *learned])}
    tok.model = models.WordPiece(
        vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))],
    )
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
    """Pad to the longest sequence: returns (input_ids int64 [B, T], attention_mask int64 [B, T])."""
    width = max((len(x) for x in ids), default=1)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask
