from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError, InputDataError
from lmforge.train.batching import (
    IGNORE_INDEX,
    ExampleSteps,
    PackedLMBatches,
    TokenBudgetBatcher,
    fixed_size_batches,
    shard_batch,
)

MAX_LEN = 64


def lognormal_docs(n: int = 600, seed: int = 0) -> list[list[int]]:
    """Token sequences with review-like lengths: most short, a long tail (median ~14)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=2.6, sigma=0.7, size=n).astype(int), 2, 200)
    return [rng.integers(5, 1000, int(n)).tolist() for n in lengths]


def budget_batcher(docs, **kw) -> TokenBudgetBatcher:
    kw = {"max_tokens": 512, "max_len": MAX_LEN, "seed": 7, "bucket_size": 8, **kw}
    return TokenBudgetBatcher(docs, list(range(len(docs))), **kw)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("max_tokens", [64, 300, 512, 4096])
def test_budget_is_never_exceeded_and_tensors_are_well_formed(max_tokens):
    docs = lognormal_docs()
    src = budget_batcher(docs, max_tokens=max_tokens)
    for batch in islice(src.iter_from(0), 3 * src.batches_in_epoch(0)):
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert ids.dtype == mask.dtype == labels.dtype == torch.int64
        assert ids.numel() <= max_tokens and ids.shape[1] <= MAX_LEN
        assert ids.shape == mask.shape and labels.shape == (ids.shape[0],)
        for row, doc_id in enumerate(labels.tolist()):  # labels are the doc index here
            n = min(len(docs[doc_id]), MAX_LEN)
            assert ids[row, :n].tolist() == docs[doc_id][:n]  # truncated, not reordered
            assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert mask[:, -1].any()  # padded to the longest row, not wider


def test_every_example_appears_exactly_once_per_epoch():
    docs = lognormal_docs()
    src = budget_batcher(docs)
    stream = src.iter_from(0)
    for epoch in range(3):
        seen = Counter()
        for batch in islice(stream, src.batches_in_epoch(epoch)):
            seen.update(batch["labels"].tolist())
        assert seen == Counter(range(len(docs))), epoch


def test_layout_is_deterministic_per_seed_and_epoch():
    docs = lognormal_docs()
    a, b = budget_batcher(docs), budget_batcher(docs)
    for x, y in zip(islice(a.iter_from(0), 50), islice(b.iter_from(0), 50), strict=True):
        assert same(x, y)
    first = [r.tolist() for r in a.epoch_layout(0)]
    assert first != [r.tolist() for r in a.epoch_layout(1)]
    assert first != [r.tolist() for r in budget_batcher(docs, seed=8).epoch_layout(0)]


@pytest.mark.parametrize("factory", ["budget", "fixed"])
def test_iter_from_resumes_exactly_across_epochs(factory):
    docs = lognormal_docs(300)
    if factory == "budget":
        src = budget_batcher(docs)
    else:
        src = fixed_size_batches(docs, list(range(300)), batch_size=32, max_len=MAX_LEN, seed=3)
    n0 = src.batches_in_epoch(0)
    reference = list(islice(src.iter_from(0), 2 * n0 + 5))
    for k in (0, 1, n0 - 1, n0, n0 + 3, 2 * n0):
        resumed = list(islice(type(src).iter_from(src, k), len(reference) - k))
        assert all(same(x, y) for x, y in zip(resumed, reference[k:], strict=True)), k


def test_bucketing_pads_far_less_than_fixed_size_batches():
    docs = lognormal_docs(2000)
    labels = list(range(len(docs)))
    fixed = fixed_size_batches(docs, labels, batch_size=32, max_len=MAX_LEN, seed=0)
    budget = TokenBudgetBatcher(
        docs, labels, max_tokens=512, max_len=MAX_LEN, seed=0, bucket_size=32
    )
    for src in (fixed, budget):
        for _ in islice(src.iter_from(0), src.batches_in_epoch(0)):
            pass
    assert fixed.padding_share > 0.4  # a long tail makes most random batches mostly padding
    assert budget.padding_share < 0.05
    assert budget.padding_share == pytest.approx(budget.layout_padding_share(0))


def test_max_examples_caps_batch_rows():
    src = budget_batcher(lognormal_docs(), max_tokens=4096, max_examples=16)
    sizes = [len(rows) for rows in src.epoch_layout(0)]
    assert max(sizes) == 16


def test_budget_below_one_full_sequence_is_a_config_error_naming_both():
    with pytest.raises(ConfigError, match=r"max_tokens=100 .*max_len=128.*at least 128"):
        TokenBudgetBatcher([[1, 2, 3]], max_tokens=100, max_len=128)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(InputDataError, match="empty"):
        TokenBudgetBatcher([], max_tokens=128, max_len=64)
    with pytest.raises(InputDataError, match="sequence 1 is empty"):
        TokenBudgetBatcher([[1], [], [2]], max_tokens=128, max_len=64)
    with pytest.raises(InputDataError, match="2 labels for 3 sequences"):
        TokenBudgetBatcher([[1], [2], [3]], [0, 1], max_tokens=128, max_len=64)
    with pytest.raises(ConfigError, match="batch_size=0"):
        fixed_size_batches([[1]], batch_size=0, max_len=8)


def test_numpy_sequences_and_no_labels():
    docs = [np.arange(1, n + 1) for n in (3, 5, 2, 9)]
    batch = next(TokenBudgetBatcher(docs, max_tokens=20, max_len=8).iter_from(0))
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].numel() <= 20


def test_example_steps_hold_exactly_n_examples_and_resume_exactly():
    docs = lognormal_docs(320)
    src = budget_batcher(docs, max_tokens=1024)
    steps = ExampleSteps(src, examples_per_step=32)
    reference = list(islice(steps.iter_from(0), 25))  # 2.5 epochs
    seen = Counter()
    for k, step in enumerate(reference):
        assert sum(len(mb["labels"]) for mb in step) == 32
        assert all(mb["input_ids"].numel() <= 1024 for mb in step)
        if k < 10:
            for mb in step:
                seen.update(mb["labels"].tolist())
    assert seen == Counter(range(320))  # epoch 0 = steps 0..9 here, each example once
    for k in (1, 9, 10, 17):
        resumed = list(
            islice(ExampleSteps(budget_batcher(docs, max_tokens=1024), 32).iter_from(k), 5)
        )
        for got, want in zip(resumed, reference[k : k + 5], strict=True):
            assert len(got) == len(want) and all(map(same, got, want)), k


# -- packing -----------------------------------------------------------------------------------


def packed_docs(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 500, int(n)).tolist() for n in rng.integers(1, 40, 37)]


def epoch_rows(src: PackedLMBatches) -> list[tuple[list[int], list[int]]]:
    """(inputs, labels) of every row of epoch 0, real positions only."""
    rows = []
    for b, batch in enumerate(islice(src.iter_from(0), src.batches_per_epoch)):
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.shape == labels.shape == (src.batch_size, src.seq_len)
        assert ids.dtype == labels.dtype == torch.int64
        real = labels != IGNORE_INDEX
        if b < src.batches_per_epoch - 1:
            assert real.all()  # no padding before the epoch's last batch
        for row in range(src.batch_size):
            n = int(real[row].sum())
            assert real[row].tolist() == [True] * n + [False] * (src.seq_len - n)  # pads trail
            assert (ids[row, n:] == 0).all()
            rows.append((ids[row, :n].tolist(), labels[row, :n].tolist()))
    return rows


def test_packing_labels_are_inputs_shifted_and_each_token_is_a_label_once():
    tokens = np.arange(1, 203)  # unique ids: 201 (input, label) pairs, not a multiple of 16
    src = PackedLMBatches(tokens, seq_len=16, batch_size=4, seed=1)
    labels = []
    for ids, lab in epoch_rows(src):
        assert lab == [t + 1 for t in ids]
        labels += lab
    assert sorted(labels) == list(range(2, 203))  # every token but the first, exactly once
    slots = src.batches_per_epoch * 4 * 16
    assert src.padding_share == pytest.approx(1 - 201 / slots)


def test_packing_documents_joins_them_with_eos_into_contiguous_windows():
    docs, eos, seq_len = packed_docs(), 2, 16
    stream = [t for d in docs for t in [*d, eos]]
    windows = Counter(
        tuple(stream[w : w + seq_len + 1]) for w in range(0, len(stream) - 1, seq_len)
    )
    src = PackedLMBatches(docs, seq_len=seq_len, batch_size=4, seed=1, eos_id=eos)
    got = Counter(tuple([*ids, lab[-1]]) for ids, lab in epoch_rows(src) if ids)
    assert got == windows


def test_packing_resumes_exactly_and_shards_rebuild_the_global_batch():
    docs = packed_docs(3)
    make = lambda: PackedLMBatches(docs, seq_len=8, batch_size=6, seed=5, eos_id=2)  # noqa: E731
    src = make()
    n = 2 * src.batches_per_epoch + 3
    reference = list(islice(src.iter_from(0), n))
    for k in (1, src.batches_per_epoch, n - 2):
        assert all(map(same, islice(make().iter_from(k), n - k), reference[k:])), k
    for world in (1, 2, 3, 6):
        shards = [make().shard(r, world).iter_from(4) for r in range(world)]
        for want in reference[4:12]:
            parts = [next(s) for s in shards]
            got = {key: torch.cat([p[key] for p in parts]) for key in want}
            assert same(got, want), world
            assert all(same(p, shard_batch(want, r, world)) for r, p in enumerate(parts))


def test_packing_errors():
    with pytest.raises(ConfigError, match=r"batch_size=6 .* 4 ranks.*multiple of 4"):
        PackedLMBatches(list(range(100)), seq_len=8, batch_size=6).shard(0, 4)
    with pytest.raises(ConfigError, match="rank=2 is outside world size 2"):
        PackedLMBatches(list(range(100)), seq_len=8, batch_size=6).shard(2, 2)
    with pytest.raises(InputDataError, match="empty"):
        PackedLMBatches([], seq_len=8, batch_size=2)
    with pytest.raises(ConfigError, match="eos_id"):
        PackedLMBatches([[1, 2], [3]], seq_len=8, batch_size=2)
    with pytest.raises(ConfigError, match="seq_len=0"):
        PackedLMBatches(list(range(10)), seq_len=0, batch_size=2)


def test_packing_a_flat_stream_uses_no_eos():
    src = PackedLMBatches(np.arange(1, 34), seq_len=8, batch_size=4)
    batch = next(src.iter_from(0))
    assert sorted(batch["input_ids"][:, 0].tolist()) == [1, 9, 17, 25]
    assert (batch["labels"] != IGNORE_INDEX).sum() == 32  # 33 tokens -> 32 pairs, no pad
