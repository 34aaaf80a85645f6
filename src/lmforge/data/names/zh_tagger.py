"""The Chinese person-name tagger: numpy inference over the shipped safetensors weights.

Model: character + next-character-bigram embeddings -> a stack of dilated 1-D convolutions
(residual after the first) -> per-character O/B/I scores -> a linear-chain CRF decoded with
Viterbi. Decoding forbids I after O and at the start, so every span starts with B. Inference
is plain numpy so data-cleaning workers need no torch threads; the trainer (`train_zh`)
builds the same network in torch and writes the weights this module reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.names.msra import TAG_B, TAG_I, TAG_O, tag_spans
from lmforge.errors import InputDataError

WEIGHTS = Path(__file__).with_name("zh_person.safetensors")
FORMAT = "lmforge-zh-person/1"
RETRAIN = (
    "python -m lmforge.data.names.train_zh --msra /path/to/msra_ner.zip "
    "--out src/lmforge/data/names/"
)
PAD, UNK = 0, 1  # ids shared by the char and bigram vocabularies
_CODES = 0x110000  # number of Unicode code points: the base of the packed bigram keys
N_TAGS = 3
_FORBIDDEN = -1e4  # added to impossible transitions; finite so the forward algorithm stays stable

# Full-width ASCII (common in Chinese text) folds to ASCII and A-Z to a-z. Every mapping is
# one character to one character, so offsets in the normalised text equal offsets in the input.
_FOLD = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_FOLD |= {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_FOLD |= {c + 0xFEE0: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def normalize(text: str) -> str:
    """The per-character folding both training and inference apply before vocabulary lookup."""
    return text.translate(_FOLD)


def transition_mask() -> tuple[np.ndarray, np.ndarray]:
    """Additive penalties: (from, to) transitions and start scores that decoding must not use."""
    trans = np.zeros((N_TAGS, N_TAGS), dtype=np.float32)
    trans[TAG_O, TAG_I] = _FORBIDDEN
    start = np.zeros(N_TAGS, dtype=np.float32)
    start[TAG_I] = _FORBIDDEN
    return trans, start


@dataclass(frozen=True)
class TaggerConfig:
    char_dim: int = 64
    bigram_dim: int = 32
    width: int = 96
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    kernel: int = 3

    def to_json(self) -> str:
        return json.dumps(
            {
                "char_dim": self.char_dim,
                "bigram_dim": self.bigram_dim,
                "width": self.width,
                "dilations": list(self.dilations),
                "kernel": self.kernel,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TaggerConfig:
        raw = json.loads(text)
        return cls(
            char_dim=int(raw["char_dim"]),
            bigram_dim=int(raw["bigram_dim"]),
            width=int(raw["width"]),
            dilations=tuple(int(d) for d in raw["dilations"]),
            kernel=int(raw["kernel"]),
        )


class Vocab:
    """Character and bigram ids. Index 0 is padding, 1 unknown, the listed items follow."""

    def __init__(self, chars: Sequence[str], bigrams: Sequence[str]) -> None:
        self.chars = list(chars)
        self.bigrams = list(bigrams)
        self._char_ids = {c: i + 2 for i, c in enumerate(self.chars)}
        self._bigram_ids = {b: i + 2 for i, b in enumerate(self.bigrams)}
        # Array forms of the same maps for `encode_codes`: char id by code point, and the
        # bigrams as sorted (first * _CODES + second) keys for a binary search.
        top = max((ord(c) for c in self.chars), default=0) + 1
        self._char_table = np.full(top, UNK, dtype=np.int32)
        for c, i in self._char_ids.items():
            self._char_table[ord(c)] = i
        keys = np.array([ord(b[0]) * _CODES + ord(b[1]) for b in self.bigrams], dtype=np.int64)
        order = np.argsort(keys)
        self._bigram_keys = keys[order]
        self._bigram_vals = (order + 2).astype(np.int64)

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Char ids and next-bigram ids of already normalised text; the last character has no
        following bigram and gets PAD."""
        cids = self._char_ids
        bids = self._bigram_ids
        chars = [cids.get(c, UNK) for c in text]
        bigrams = [bids.get(text[i : i + 2], UNK) for i in range(len(text) - 1)]
        if text:
            bigrams.append(PAD)
        return chars, bigrams

    def encode_codes(self, codes: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`encode` for many texts at once: `codes` are the code points of normalised texts
        laid end to end with gaps, `real` marks the text positions. Gives the same ids as
        `encode` on each text, with PAD in the gaps."""
        table = self._char_table
        inside = codes < len(table)
        chars = np.where(inside, table[np.where(inside, codes, 0)], UNK) * real
        pairs = codes[:-1].astype(np.int64) * _CODES + codes[1:]
        bigrams = np.full(len(codes), PAD, dtype=np.int64)
        found = np.full(len(pairs), UNK, dtype=np.int64)
        if len(self._bigram_keys):
            at = np.minimum(np.searchsorted(self._bigram_keys, pairs), len(self._bigram_keys) - 1)
            hit = self._bigram_keys[at] == pairs
            found = np.where(hit, self._bigram_vals[at], UNK)
        bigrams[:-1] = np.where(real[:-1] & real[1:], found, PAD)
        return chars, bigrams


def conv_columns(x: np.ndarray, dilation: int, kernel: int, gap: int) -> np.ndarray:
    """(N, C) -> (N - 2*gap, kernel*C): the taps of a 'same' dilated convolution for rows
    gap..N-gap of a packed sequence whose first and last `gap` rows are padding, laid out
    tap-major to match a torch Conv1d weight transposed to (kernel, in, out)."""
    pad = dilation * (kernel - 1) // 2
    n = len(x)
    taps = [x[gap - pad + k * dilation : n - gap - pad + k * dilation] for k in range(kernel)]
    return np.concatenate(taps, axis=1)


def viterbi(
    emissions: np.ndarray,
    lengths: np.ndarray,
    trans: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> list[list[int]]:
    """Best tag path per sequence of a padded batch. emissions: (B, T, n_tags).

    The forward pass runs over the padding too (cheaper than masking every step); each
    sequence's final score is read at its own last position and its backtrack starts there."""
    b, t, n = emissions.shape
    rows = np.arange(b)
    scores = np.empty((t, b, n), dtype=np.float32)
    back = np.empty((t, b, n), dtype=np.intp)
    scores[0] = start + emissions[:, 0]
    for i in range(1, t):
        cand = scores[i - 1][:, :, None] + trans
        back[i] = cand.argmax(axis=1)
        np.add(cand.max(axis=1), emissions[:, i], out=scores[i])
    final = np.maximum(lengths, 1) - 1
    last = (scores[final, rows] + end).argmax(axis=1)
    cur = last
    paths = np.empty((b, t), dtype=np.intp)
    for i in range(t - 1, -1, -1):
        cur = np.where(final == i, last, cur)  # a sequence's backtrack starts at its end
        paths[:, i] = cur
        if i:
            cur = back[i, rows, cur]
    return [paths[j, : lengths[j]].tolist() for j in range(b)]


class ZhPersonTagger:
    """Finds person names in short Chinese texts (sentences up to a few hundred characters)."""

    def __init__(
        self,
        config: TaggerConfig,
        vocab: Vocab,
        tensors: dict[str, np.ndarray],
        surnames: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.vocab = vocab
        self.surnames = frozenset(surnames)
        self.metadata = dict(metadata or {})
        f32 = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
        self._char_emb = f32["char_emb.weight"]
        self._bigram_emb = f32["bigram_emb.weight"]
        self._convs = []
        for i, dilation in enumerate(config.dilations):
            w = f32[f"convs.{i}.weight"]  # torch layout (out, in, kernel)
            flat = np.ascontiguousarray(w.transpose(2, 1, 0).reshape(-1, w.shape[0]))
            self._convs.append((flat, f32[f"convs.{i}.bias"], dilation))
        self._out_w = np.ascontiguousarray(f32["out.weight"].T)
        self._out_b = f32["out.bias"]
        trans_mask, start_mask = transition_mask()
        self._trans = f32["crf.trans"] + trans_mask
        self._start = f32["crf.start"] + start_mask
        self._end = f32["crf.end"]

    def emissions(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-character tag scores of a padded batch (B, T, 3) and the lengths.

        The texts run through the network packed end to end with `gap` padding rows between
        them, so every convolution is one matrix product with no per-text padding to waste."""
        kernel = self.config.kernel
        gap = max(self.config.dilations) * (kernel - 1) // 2
        lengths = np.array([len(t) for t in texts], dtype=np.int64)
        sep = "\0" * gap
        packed = normalize(sep + sep.join(texts) + sep)
        codes = np.frombuffer(packed.encode("utf-32-le"), dtype=np.uint32)
        n = len(codes)
        starts = gap + np.concatenate([[0], np.cumsum(lengths + gap)[:-1]])
        t = int(lengths.max(initial=0))
        valid = np.arange(t)[None, :] < lengths[:, None]
        where = np.where(valid, starts[:, None] + np.arange(t)[None, :], 0)
        real = np.zeros(n, dtype=bool)
        real[where[valid]] = True
        chars, bigrams = self.vocab.encode_codes(codes, real)
        mask = real.astype(np.float32)[:, None]
        h = np.concatenate([self._char_emb[chars], self._bigram_emb[bigrams]], axis=1) * mask
        for i, (w, bias, dilation) in enumerate(self._convs):
            y = np.zeros((n, w.shape[1]), dtype=np.float32)
            np.matmul(conv_columns(h, dilation, kernel, gap), w, out=y[gap : n - gap])
            y += bias
            np.maximum(y, 0.0, out=y)
            # Zero the gaps after every layer so no text sees its neighbours: batched and
            # one-by-one results agree.
            h = (y if i == 0 else h + y) * mask
        flat = h @ self._out_w + self._out_b
        return flat[where], lengths

    def tag(self, texts: Sequence[str]) -> list[list[int]]:
        """O/B/I tag ids per character for each text, in one batch."""
        texts = list(texts)
        if not texts:
            return []
        out: list[list[int]] = [[] for _ in texts]
        live = [i for i, t in enumerate(texts) if t]
        if not live:
            return out
        em, lengths = self.emissions([texts[i] for i in live])
        for i, path in zip(
            live, viterbi(em, lengths, self._trans, self._start, self._end), strict=True
        ):
            out[i] = path
        return out

    def spans(self, texts: Sequence[str], batch_size: int = 256) -> list[list[tuple[int, int]]]:
        """[start, end) name spans per text. Texts are batched by length so padding stays small."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        result: list[list[tuple[int, int]]] = [[] for _ in texts]
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            for i, tags in zip(idx, self.tag([texts[i] for i in idx]), strict=True):
                result[i] = tag_spans(tags)
        return result


_REQUIRED_META = ("format", "config", "chars", "bigrams")


def load_tagger(path: str | Path = WEIGHTS) -> ZhPersonTagger:
    """Read a tagger from a safetensors file written by the trainer."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputDataError(
            f"Chinese name model weights not found at {path}: reinstall lmforge or retrain "
            f"them with `{RETRAIN}`"
        )
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
        missing = [k for k in _REQUIRED_META if k not in meta]
        if missing or meta["format"] != FORMAT:
            raise ValueError(f"metadata lacks {missing or 'format ' + FORMAT}")
        config = TaggerConfig.from_json(meta["config"])
        vocab = Vocab(json.loads(meta["chars"]), json.loads(meta["bigrams"]))
        return ZhPersonTagger(config, vocab, tensors, meta.get("surnames", ""), meta)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(
            f"Chinese name model weights at {path} are corrupt or from another version ({exc}): "
            f"retrain them with `{RETRAIN}`"
        ) from None


__all__ = [
    "TAG_B",
    "TAG_I",
    "TAG_O",
    "WEIGHTS",
    "TaggerConfig",
    "Vocab",
    "ZhPersonTagger",
    "load_tagger",
    "normalize",
    "viterbi",
]
