"""Training data: labelled documents from the data stage, a stable split, length-bucketed batches.

The split is stratified and decided per document by a hash of (seed, id): within each label
the documents with the smallest hashes go to eval, so the same corpus and seed always give
the same split and a document keeps its side when others are added or removed.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lmforge.errors import InputDataError, StageError
from lmforge.text.tokenizer import PAD_ID, pad_batch
from lmforge.workspace import Workspace, atomic_path, hash_file

REQUIRED_COLUMNS = ("id", "text", "label")


@dataclass
class LabelledDocs:
    ids: list[str]
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> LabelledDocs:
        return LabelledDocs(
            [self.ids[i] for i in rows],
            [self.texts[i] for i in rows],
            [self.labels[i] for i in rows],
        )


@dataclass
class TrainData:
    train: LabelledDocs
    eval: LabelledDocs
    labels: list[str]  # sorted; a label's index is its class id
    data_hash: str  # content hash of the input shards


def clean_shards(ws: Workspace) -> list[Path]:
    return sorted((ws.stage_dir("data", create=False) / "clean").glob("*.parquet"))


def read_labelled(shards: Sequence[Path]) -> LabelledDocs:
    """Every document that has a non-empty label, in shard order."""
    docs = LabelledDocs([], [], [])
    for shard in shards:
        try:
            table = pq.read_table(shard, columns=list(REQUIRED_COLUMNS))
        except (pa.ArrowInvalid, KeyError) as exc:
            raise InputDataError(
                f"cannot read {shard}: {exc}; the train stage needs the columns "
                f"{list(REQUIRED_COLUMNS)} (rerun the data stage)"
            ) from exc
        cols = table.to_pydict()
        for doc_id, text, label in zip(cols["id"], cols["text"], cols["label"], strict=True):
            if label is None or not str(label).strip() or text is None:
                continue
            docs.ids.append(str(doc_id))
            docs.texts.append(text)
            docs.labels.append(str(label).strip())
    return docs


def split_stratified(
    docs: LabelledDocs, eval_fraction: float, seed: int
) -> tuple[LabelledDocs, LabelledDocs]:
    """(train, eval): per label, round(n * eval_fraction) documents (at least 1 when n >= 2)."""
    by_label: dict[str, list[int]] = {}
    for row, label in enumerate(docs.labels):
        by_label.setdefault(label, []).append(row)
    eval_rows: set[int] = set()
    for rows in by_label.values():
        n = len(rows)
        n_eval = min(max(round(n * eval_fraction), 1 if n >= 2 else 0), n - 1)
        ranked = sorted(rows, key=lambda r: (_rank(seed, docs.ids[r]), r))
        eval_rows.update(ranked[:n_eval])
    train = [r for r in range(len(docs)) if r not in eval_rows]
    return docs.subset(train), docs.subset(sorted(eval_rows))


def _rank(seed: int, doc_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()


def load_train_data(ws: Workspace, eval_fraction: float, seed: int) -> TrainData:
    shards = clean_shards(ws)
    if not shards:
        raise StageError(
            f"no clean Parquet shards in {ws.stage_dir('data', create=False) / 'clean'}; "
            "run the data stage first (lmforge run CONFIG)"
        )
    docs = read_labelled(shards)
    if not docs.ids:
        raise InputDataError(
            f"none of the {len(shards)} clean shard(s) has a labelled document; the classifier "
            "needs a `label` field (set data.sources[].label_field)"
        )
    counts = Counter(docs.labels)
    if len(counts) < 2:
        raise InputDataError(
            f"all {len(docs)} labelled documents have the label {next(iter(counts))!r}; "
            "a classifier needs at least two classes"
        )
    train, held_out = split_stratified(docs, eval_fraction, seed)
    if not held_out.ids:
        raise InputDataError(
            f"eval_fraction={eval_fraction} leaves no eval documents out of {len(docs)}; "
            "add labelled data or raise train.eval_fraction"
        )
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(f"{shard.name}:{hash_file(shard)}\n".encode())
    return TrainData(train, held_out, sorted(counts), digest.hexdigest()[:16])


def write_docs_parquet(docs: LabelledDocs, path: str | Path) -> Path:
    """Write (id, text, label) atomically; compress reads the eval split from here."""
    table = pa.table(
        {"id": docs.ids, "text": docs.texts, "label": docs.labels},
        schema=pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.string())]),
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


class ClassificationBatches:
    """Endless shuffled batches, grouped by length so little compute goes to padding.

    Epoch e is laid out from `default_rng([seed, e])`: shuffle, cut into pools of
    `bucket_batches` batches, sort each pool by length, cut into batches, shuffle the batch
    order. Batch k of the stream is therefore a pure function of (seed, k): resume is exact.
    """

    def __init__(
        self,
        token_ids: Sequence[Sequence[int]],
        class_ids: Sequence[int],
        batch_size: int,
        seed: int,
        pad_id: int = PAD_ID,
        bucket_batches: int = 50,
    ) -> None:
        if not token_ids:
            raise InputDataError("no training documents to batch")
        self.token_ids = token_ids
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.lengths = np.array([len(x) for x in token_ids])
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.bucket_batches = bucket_batches

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.token_ids) / self.batch_size)

    def epoch_layout(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.token_ids))
        pool = self.batch_size * self.bucket_batches
        batches: list[np.ndarray] = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            )
        return [batches[i] for i in rng.permutation(len(batches))]

    def collate(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_batch([self.token_ids[i] for i in rows], self.pad_id)
        return {
            "input_ids": torch.from_numpy(input_ids),  # (B, T)
            "attention_mask": torch.from_numpy(mask),  # (B, T)
            "labels": torch.from_numpy(self.class_ids[rows]),  # (B,)
        }

    def iter_from(self, position: int) -> Iterator[dict[str, torch.Tensor]]:
        epoch, skip = divmod(position, self.batches_per_epoch)
        while True:
            for rows in self.epoch_layout(epoch)[skip:]:
                yield self.collate(rows)
            epoch, skip = epoch + 1, 0


def fixed_batches(
    token_ids: Sequence[Sequence[int]],
    class_ids: Sequence[int],
    batch_size: int,
    pad_id: int = PAD_ID,
) -> list[dict[str, torch.Tensor]]:
    """Evaluation batches: in length order, built once and reused at every evaluation."""
    order = np.argsort([len(x) for x in token_ids], kind="stable")
    labels = np.asarray(class_ids, dtype=np.int64)
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad_batch([token_ids[i] for i in rows], pad_id)
        out.append(
            {
                "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels[rows]),
            }
        )
    return out
