from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lmforge.errors import InputDataError, StageError
from lmforge.train.data import (
    ClassificationBatches,
    LabelledDocs,
    load_train_data,
    split_stratified,
    write_docs_parquet,
)
from lmforge.workspace import Workspace


def test_load_drops_unlabelled_and_splits_stratified(tmp_path: Path, make_docs, write_clean):
    ws = Workspace(tmp_path)
    write_clean(ws, make_docs(400, unlabelled=25))
    data = load_train_data(ws, eval_fraction=0.2, seed=0)
    assert len(data.train) + len(data.eval) == 400
    assert data.labels == ["bad", "good", "mixed"]
    assert not set(data.train.ids) & set(data.eval.ids)
    total, held = Counter(data.train.labels + data.eval.labels), Counter(data.eval.labels)
    for label in data.labels:
        assert held[label] == round(total[label] * 0.2)
    again = load_train_data(ws, eval_fraction=0.2, seed=0)
    assert again.eval.ids == data.eval.ids and again.data_hash == data.data_hash
    assert load_train_data(ws, eval_fraction=0.2, seed=1).eval.ids != data.eval.ids


def test_split_is_stable_when_documents_are_added(make_docs):
    docs = make_docs(300)
    small = LabelledDocs([d["id"] for d in docs], [d["text"] for d in docs], ["x"] * 300)
    _, eval_small = split_stratified(small, 0.2, seed=3)
    extra = make_docs(330)
    big = LabelledDocs([d["id"] for d in extra], [d["text"] for d in extra], ["x"] * 330)
    _, eval_big = split_stratified(big, 0.2, seed=3)
    moved = set(eval_small.ids) - set(eval_big.ids)
    assert len(moved) <= 6  # only documents near the cut may change side


def test_no_labels_or_one_class_is_a_data_error(tmp_path: Path, make_docs, write_clean):
    with pytest.raises(StageError, match="data stage"):
        load_train_data(Workspace(tmp_path / "empty"), 0.2, 0)
    ws = Workspace(tmp_path / "nolabels")
    write_clean(ws, make_docs(0, unlabelled=20), shards=1)
    with pytest.raises(InputDataError, match="labelled"):
        load_train_data(ws, 0.2, 0)
    ws = Workspace(tmp_path / "one")
    docs = [{**d, "label": "good"} for d in make_docs(20)]
    write_clean(ws, docs, shards=1)
    with pytest.raises(InputDataError, match="two classes"):
        load_train_data(ws, 0.2, 0)


def test_eval_parquet_roundtrip(tmp_path: Path):
    docs = LabelledDocs(["a", "b"], ["x y", "物流"], ["pos", "neg"])
    path = write_docs_parquet(docs, tmp_path / "eval.parquet")
    assert pq.read_table(path).to_pydict() == {
        "id": ["a", "b"],
        "text": ["x y", "物流"],
        "label": ["pos", "neg"],
    }


def make_stream(n: int = 100, batch_size: int = 8) -> ClassificationBatches:
    rng = np.random.default_rng(0)
    ids = [list(range(2, 2 + int(k))) for k in rng.integers(3, 60, n)]
    return ClassificationBatches(
        ids, [i % 2 for i in range(n)], batch_size, seed=7, bucket_batches=4
    )


def test_iter_from_equals_skipping():
    stream = make_stream()
    straight = list(islice(stream.iter_from(0), 30))  # crosses an epoch boundary (13 batches)
    resumed = list(islice(stream.iter_from(17), 13))
    for a, b in zip(straight[17:], resumed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_epoch_covers_every_document_once_with_less_padding():
    stream = make_stream()
    layout = stream.epoch_layout(0)
    assert sorted(np.concatenate(layout).tolist()) == list(range(100))
    assert stream.epoch_layout(1)[0].tolist() != layout[0].tolist()
    batch = next(stream.iter_from(0))
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["labels"].dtype == torch.int64
    padded = sum(len(b) * stream.lengths[b].max() for b in layout)
    rng = np.random.default_rng(1)
    order = rng.permutation(100)
    random_padded = sum(
        len(order[i : i + 8]) * stream.lengths[order[i : i + 8]].max() for i in range(0, 100, 8)
    )
    assert padded < 0.8 * random_padded
