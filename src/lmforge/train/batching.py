"""Dynamic batching: token-budget micro-batches, a fixed-size baseline, and LM sequence packing.

Every source here is a `BatchSource` (see `lmforge.train.trainer`): batch k of the stream is a
pure function of (data, settings, seed, k), so `iter_from(k)` resumes exactly. Epoch e is laid
out from `np.random.default_rng([seed, e])` and nothing else.

- `TokenBudgetBatcher`: variable-size classification micro-batches whose padded size
  (rows x longest row) stays within `max_tokens`, grouped by length so little goes to padding.
- `fixed_size_batches`: the baseline, a fixed number of random examples per batch.
- `ExampleSteps`: regroups any of the above into optimizer steps of exactly N examples, so
  the effective batch stays what it was with fixed-size batches.
- `PackedLMBatches`: documents joined by EOS and cut into fixed-length LM windows, with
  `shard(rank, world)` giving each data-parallel rank its rows of every global batch.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lmforge.errors import ConfigError, InputDataError
from lmforge.text.tokenizer import PAD_ID

Batch = dict[str, torch.Tensor]
IGNORE_INDEX = -100  # label of a padded LM position; F.cross_entropy skips it by default


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name}={value!r}: use a whole number of at least 1")


def shard_batch(batch: Batch, rank: int, world: int) -> Batch:
    """Rank `rank`'s contiguous share of a global batch: rows [r*B/W, (r+1)*B/W)."""
    if not 0 <= rank < world:
        raise ConfigError(f"rank={rank} is outside world size {world}; use 0..{world - 1}")
    sizes = {len(v) for v in batch.values() if isinstance(v, torch.Tensor)}
    if len(sizes) != 1:
        raise InputDataError(f"batch tensors disagree on rows: {sorted(sizes)}")
    rows = sizes.pop()
    if rows % world:
        raise ConfigError(
            f"a global batch of {rows} rows cannot be split evenly over {world} ranks; "
            f"use a batch size that is a multiple of {world}"
        )
    share = rows // world
    return {
        k: v[rank * share : (rank + 1) * share] if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


class RowBatches:
    """What the classification batchers share: truncation, collation, padding counters,
    and resume over per-epoch layouts (a layout is the epoch's batches as row indices)."""

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        labels: Sequence[int] | None,
        max_len: int,
        seed: int,
        pad_id: int,
    ) -> None:
        _check_positive(max_len=max_len)
        if len(sequences) == 0:
            raise InputDataError("no sequences to batch: the input is empty")
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        if (lengths == 0).any():
            first = int(np.flatnonzero(lengths == 0)[0])
            raise InputDataError(
                f"sequence {first} is empty ({int((lengths == 0).sum())} in all); drop empty "
                "texts before batching (an encoder input has at least [CLS] [SEP])"
            )
        if labels is not None and len(labels) != len(sequences):
            raise InputDataError(
                f"{len(labels)} labels for {len(sequences)} sequences; give one label per sequence"
            )
        self.sequences = sequences
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.lengths = np.minimum(lengths, max_len)  # lengths after truncation
        self.max_len = max_len
        self.seed = seed
        self.pad_id = pad_id
        self.real_tokens = 0  # counters over everything collated so far
        self.padded_slots = 0
        self._epoch_sizes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.sequences)

    def epoch_layout(self, epoch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def batches_in_epoch(self, epoch: int) -> int:
        if epoch not in self._epoch_sizes:
            self._epoch_sizes[epoch] = len(self.epoch_layout(epoch))
        return self._epoch_sizes[epoch]

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, batch index in it) of stream position `position`."""
        if position < 0:
            raise ConfigError(f"position={position}: a stream position is at least 0")
        epoch = 0
        while position >= (n := self.batches_in_epoch(epoch)):
            position -= n
            epoch += 1
        return epoch, position

    def iter_rows_from(self, position: int = 0) -> Iterator[np.ndarray]:
        """Row indices of each batch from `position` on, endlessly (no tensors built)."""
        epoch, skip = self.locate(position)
        while True:
            layout = self.epoch_layout(epoch)
            self._epoch_sizes[epoch] = len(layout)
            yield from layout[skip:]
            epoch, skip = epoch + 1, 0

    def iter_from(self, position: int = 0) -> Iterator[Batch]:
        for rows in self.iter_rows_from(position):
            yield self.collate(rows)

    def collate(self, rows: np.ndarray) -> Batch:
        """{"input_ids" [B, T] int64, "attention_mask" [B, T] int64, "labels" [B] int64},
        T = the longest (truncated) sequence among `rows`."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[i, :n] = self.sequences[row][:n]
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        self.real_tokens += int(lengths.sum())
        self.padded_slots += len(rows) * width
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if self.labels is not None:
            batch["labels"] = torch.from_numpy(self.labels[rows])
        return batch

    @property
    def padding_share(self) -> float:
        """Pad tokens / padded slots over every batch collated so far (0 before any)."""
        return 1.0 - self.real_tokens / self.padded_slots if self.padded_slots else 0.0

    def layout_padding_share(self, epoch: int = 0) -> float:
        """The padding share one whole epoch would have, computed from its layout alone."""
        real = slots = 0
        for rows in self.epoch_layout(epoch):
            lengths = self.lengths[rows]
            real += int(lengths.sum())
            slots += len(rows) * int(lengths.max())
        return 1.0 - real / slots


class TokenBudgetBatcher(RowBatches):
    """Length-bucketed micro-batches of at most `max_tokens` padded tokens each.

    Epoch layout: shuffle all examples, cut the order into windows of `bucket_size` batches'
    worth of examples (window = bucket_size x the examples of a mean-length batch), sort each
    window by length, cut it greedily into the largest batches with rows x longest <=
    max_tokens (and rows <= max_examples when set), then shuffle the batch order. Sorting
    only within windows keeps batches random enough to train on while nearly removing
    padding; a bigger `bucket_size` pads less and mixes less.

    The number of batches differs between epochs, so `iter_from(position)` counts batches
    across epochs by laying out the earlier epochs (cheap: indices only, no tensors).
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        labels: Sequence[int] | None = None,
        *,
        max_tokens: int,
        max_len: int,
        seed: int = 0,
        bucket_size: int = 32,
        max_examples: int | None = None,
        pad_id: int = PAD_ID,
    ) -> None:
        _check_positive(max_tokens=max_tokens, max_len=max_len, bucket_size=bucket_size)
        if max_examples is not None:
            _check_positive(max_examples=max_examples)
        if max_tokens < max_len:
            raise ConfigError(
                f"max_tokens={max_tokens} is smaller than one sequence of max_len={max_len}, so "
                f"a full-length sequence fits in no batch; raise max_tokens to at least "
                f"{max_len} or lower max_len to {max_tokens}"
            )
        super().__init__(sequences, labels, max_len, seed, pad_id)
        self.max_tokens = max_tokens
        self.max_examples = max_examples
        self.bucket_size = bucket_size
        per_batch = max(1, max_tokens // max(1, round(float(self.lengths.mean()))))
        if max_examples is not None:
            per_batch = min(per_batch, max_examples)
        self.window = bucket_size * per_batch

    def epoch_layout(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.sequences))
        batches: list[np.ndarray] = []
        for start in range(0, len(order), self.window):
            chunk = order[start : start + self.window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(self._cut(chunk))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, chunk: np.ndarray) -> Iterator[np.ndarray]:
        """Greedy budget cut of rows sorted by length: each batch takes as many rows as fit."""
        lengths = self.lengths[chunk]
        cap = self.max_examples or len(chunk)
        i = 0
        while i < len(chunk):
            # rows x longest grows with rows (lengths ascend): binary-search the largest fit.
            lo, hi = 1, min(cap, len(chunk) - i, self.max_tokens // int(lengths[i]))
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if mid * int(lengths[i + mid - 1]) <= self.max_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            yield chunk[i : i + lo]
            i += lo


class FixedSizeBatcher(RowBatches):
    """Baseline: each epoch is a random permutation cut into batches of `batch_size`
    examples (the last one smaller), each padded to its own longest sequence."""

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        labels: Sequence[int] | None = None,
        *,
        batch_size: int,
        max_len: int,
        seed: int = 0,
        pad_id: int = PAD_ID,
    ) -> None:
        _check_positive(batch_size=batch_size)
        super().__init__(sequences, labels, max_len, seed, pad_id)
        self.batch_size = batch_size

    def batches_in_epoch(self, epoch: int) -> int:
        return math.ceil(len(self.sequences) / self.batch_size)

    def epoch_layout(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sequences))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]


def fixed_size_batches(
    sequences: Sequence[Sequence[int]],
    labels: Sequence[int] | None = None,
    *,
    batch_size: int,
    max_len: int,
    seed: int = 0,
    pad_id: int = PAD_ID,
) -> FixedSizeBatcher:
    """The fixed-size baseline as a batch source (same output format as the token budget)."""
    return FixedSizeBatcher(
        sequences, labels, batch_size=batch_size, max_len=max_len, seed=seed, pad_id=pad_id
    )


class ExampleSteps:
    """Optimizer steps of exactly `examples_per_step` examples, made of micro-batches.

    Step k holds examples [k*N, (k+1)*N) of the source's flattened batch stream. A source
    batch that straddles a step boundary is cut there (each piece padded only to its own
    longest row), so the effective batch is the same as with fixed-size batches while the
    micro-batches keep the token budget. Weight each micro-batch's summed loss by 1/N.
    Near an epoch boundary a step can hold examples of both epochs.
    """

    def __init__(self, source: RowBatches, examples_per_step: int) -> None:
        _check_positive(examples_per_step=examples_per_step)
        self.source = source
        self.examples_per_step = examples_per_step

    def iter_from(self, position: int = 0) -> Iterator[list[Batch]]:
        if position < 0:
            raise ConfigError(f"position={position}: a step position is at least 0")
        skip = position * self.examples_per_step  # examples before the first step wanted
        n = len(self.source)
        epoch, skip = divmod(skip, n)  # every epoch holds each example exactly once
        before = sum(self.source.batches_in_epoch(e) for e in range(epoch))
        rows_iter = self.source.iter_rows_from(before)
        pending: np.ndarray | None = None
        for rows in rows_iter:  # drop whole batches, then the head of the one with the cut
            if skip < len(rows):
                pending = rows[skip:]
                break
            skip -= len(rows)
        step: list[Batch] = []
        need = self.examples_per_step
        while True:
            if pending is None or len(pending) == 0:
                pending = next(rows_iter)
            take, pending = pending[:need], pending[need:]
            step.append(self.source.collate(take))
            need -= len(take)
            if need == 0:
                yield step
                step, need = [], self.examples_per_step


def _as_stream(data: Any, eos_id: int | None) -> np.ndarray:
    """A flat int64 token stream from a stream or from documents (each followed by EOS)."""
    if isinstance(data, torch.Tensor):
        data = data.numpy()
    if isinstance(data, np.ndarray) and data.ndim == 1:
        return data.astype(np.int64, copy=False)
    if len(data) == 0:
        raise InputDataError("no tokens to pack: the input stream or document list is empty")
    if isinstance(data[0], numbers.Integral):
        return np.asarray(data, dtype=np.int64)
    if eos_id is None:
        raise ConfigError(
            "packing documents needs eos_id to separate them; pass the tokenizer's EOS/[SEP] id"
        )
    parts: list[np.ndarray] = []
    for doc in data:
        if len(doc):  # an empty document would add a lone EOS and nothing else
            parts.append(np.asarray(doc, dtype=np.int64))
            parts.append(np.array([eos_id], dtype=np.int64))
    if not parts:
        raise InputDataError(f"all {len(data)} documents are empty: nothing to pack")
    return np.concatenate(parts)


class PackedLMBatches:
    """Causal-LM batches packed from a token stream: no padding except at the epoch's end.

    Documents (in the order given) are joined into one stream with `eos_id` after each.
    Window w covers stream[w*seq_len : w*seq_len + seq_len + 1]; its first seq_len tokens
    are the inputs and its last seq_len the labels, so every stream token but the first is a
    label exactly once per epoch. Each epoch shuffles the full windows; the partial tail
    window and any filler rows that complete the last batch come last, padded with `pad_id`
    (inputs) and IGNORE_INDEX (labels). Every batch has exactly `batch_size` rows so that
    data-parallel ranks always get equal shares.
    """

    def __init__(
        self,
        token_stream_or_docs: Any,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        eos_id: int | None = None,
        pad_id: int = PAD_ID,
    ) -> None:
        _check_positive(seq_len=seq_len, batch_size=batch_size)
        self.stream = _as_stream(token_stream_or_docs, eos_id)
        if len(self.stream) < 2:
            raise InputDataError(
                f"the token stream holds {len(self.stream)} token(s); packing needs at least 2 "
                "(one input and its next-token label)"
            )
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        pairs = len(self.stream) - 1  # (input, label) pairs
        self.full_windows = pairs // seq_len
        self.windows = math.ceil(pairs / seq_len)  # plus a partial tail window, if any
        self.batches_per_epoch = math.ceil(self.windows / batch_size)
        self.rank, self.world = 0, 1
        self.real_tokens = 0
        self.padded_slots = 0

    def shard(self, rank: int, world: int) -> PackedLMBatches:
        """This source as seen by data-parallel rank `rank` of `world`: rows
        [rank*B/W, (rank+1)*B/W) of every global batch (B = batch_size)."""
        if not 0 <= rank < world:
            raise ConfigError(f"rank={rank} is outside world size {world}; use 0..{world - 1}")
        if self.batch_size % world:
            raise ConfigError(
                f"global batch_size={self.batch_size} does not split evenly over {world} "
                f"ranks; use a batch_size that is a multiple of {world}"
            )
        view = copy.copy(self)  # shares the stream array; counters start fresh
        view.rank, view.world = rank, world
        view.real_tokens = view.padded_slots = 0
        return view

    @property
    def rows_per_batch(self) -> int:
        return self.batch_size // self.world

    def epoch_windows(self, epoch: int) -> np.ndarray:
        """Window ids of the epoch in batch order; -1 marks a filler row."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.full_windows)
        filler = self.batches_per_epoch * self.batch_size - self.windows
        tail = np.arange(self.full_windows, self.windows)  # the partial window, if any
        return np.concatenate([order, tail, np.full(filler, -1)]).astype(np.int64)

    def collate(self, windows: np.ndarray) -> Batch:
        starts = windows[:, None] * self.seq_len + np.arange(self.seq_len)[None, :]
        valid = (windows[:, None] >= 0) & (starts + 1 < len(self.stream))
        safe = np.where(valid, starts, 0)
        input_ids = np.where(valid, self.stream[safe], self.pad_id)
        labels = np.where(valid, self.stream[safe + 1], IGNORE_INDEX)
        self.real_tokens += int(valid.sum())
        self.padded_slots += valid.size
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}

    def iter_from(self, position: int = 0) -> Iterator[Batch]:
        if position < 0:
            raise ConfigError(f"position={position}: a stream position is at least 0")
        epoch, skip = divmod(position, self.batches_per_epoch)
        lo = self.rank * self.rows_per_batch
        while True:
            windows = self.epoch_windows(epoch)
            for b in range(skip, self.batches_per_epoch):
                base = b * self.batch_size + lo
                yield self.collate(windows[base : base + self.rows_per_batch])
            epoch, skip = epoch + 1, 0

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real_tokens / self.padded_slots if self.padded_slots else 0.0
