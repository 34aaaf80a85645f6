"""Run-time micro-batching: the split of each step changes, the step's maths does not."""

from __future__ import annotations

import json

import pytest
import torch
from engine_ranks import ENCODER, fit_single, seed_data, train_rows, with_layout
from rich.console import Console

from lmforge.errors import ConfigError
from lmforge.train.engine import Engine, RankContext
from lmforge.train.run_config import TrainRunConfig

BASE = with_layout(
    ENCODER,
    **{"train.max_steps": 8, "train.global_batch_size": 16, "data.length_bucketing": True},
)
DYNAMIC = with_layout(
    BASE,
    **{
        "train.dynamic_batch.enabled": True,
        "train.dynamic_batch.patience": 1,
        "train.dynamic_batch.memory_cap_mb": 1e6,  # ample: only throughput limits growth
    },
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache = tmp_path_factory.mktemp("dynamic-cache")
    out = cache / "fixed"
    seed_data(BASE, cache, out)
    return cache, fit_single(BASE, out)


def _decisions(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "batch"]


def test_changing_micro_batches_keep_the_losses_of_a_fixed_batch(reference, tmp_path):
    cache, fixed = reference
    seed_data(DYNAMIC, cache, tmp_path)
    losses = fit_single(DYNAMIC, tmp_path)
    assert losses == pytest.approx(fixed, abs=1e-5)
    decisions = _decisions(tmp_path)
    assert decisions[0]["reason"] == "initial" and decisions[0]["new"] == 8
    assert any(d["reason"] == "grow" for d in decisions)
    sizes = {r["micro_batch_size"] for r in train_rows(tmp_path)}
    assert len(sizes) > 1 and all(16 % s == 0 for s in sizes)


def test_out_of_memory_shrinks_and_retries_the_same_step(reference, tmp_path):
    cache, fixed = reference
    seed_data(DYNAMIC, cache, tmp_path)
    raised = []

    def oom_once(step: int, parts) -> None:
        if step == 4 and not raised:
            raised.append(step)
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")

    cfg = TrainRunConfig.model_validate(DYNAMIC)
    ctx = RankContext(0, 1, 0, torch.device("cpu"), False)
    engine = Engine(cfg, tmp_path, ctx, Console(quiet=True), after_backward=oom_once)
    engine.fit()
    assert raised == [4]
    assert [r["step"] for r in train_rows(tmp_path)] == list(range(1, 9))  # no step lost
    assert engine.losses() == pytest.approx(fixed, abs=1e-5)
    oom = [d for d in _decisions(tmp_path) if d["reason"] == "oom"]
    assert len(oom) == 1 and oom[0]["new"] < oom[0]["old"]


def test_length_bucketing_puts_similar_lengths_together(reference, tmp_path):
    cache, _ = reference
    seed_data(BASE, cache, tmp_path)
    from lmforge.train.tasks import load_task

    def mean_spread(raw) -> float:
        task = load_task(TrainRunConfig.model_validate(raw), tmp_path / "data")
        seqs = task.arrays["train_ids"]
        spreads = []
        for step in range(20):
            lengths = [len(seqs[i]) for i in task.step_indices(step)]
            spreads.append(max(lengths) - min(lengths))
        return sum(spreads) / len(spreads)

    plain = with_layout(BASE, **{"data.length_bucketing": False})
    assert mean_spread(BASE) < 0.5 * mean_spread(plain)


def test_dynamic_batching_with_pipeline_stages_is_refused(tmp_path):
    raw = with_layout(DYNAMIC, **{"parallel.pp": 2, "parallel.dp_shard": 1})
    cfg = TrainRunConfig.model_validate(raw)
    engine = Engine(cfg, tmp_path, RankContext(0, 2, 0, torch.device("cpu"), False))
    with pytest.raises(ConfigError, match=r"parallel\.microbatches"):
        engine.setup()
