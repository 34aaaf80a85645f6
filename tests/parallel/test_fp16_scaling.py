"""fp16 dynamic loss scaling under FSDP2: an overflow on one rank skips the step everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_ranks import DECODER, fit_single, seed_data, train_rows, with_layout
from rich.console import Console

from dist_helpers import run_ranks
from lmforge.train.engine import Engine, RankContext
from lmforge.train.precision import local_part
from lmforge.train.run_config import TrainRunConfig

FP16 = with_layout(DECODER, **{"train.precision": "fp16", "train.max_steps": 5})
OVERFLOW_STEP = 3


def _snapshot(parts) -> list[torch.Tensor]:
    return [local_part(p.detach()).clone() for m in parts for p in m.parameters()]


def _overflow_rank(rank: int, world: int, raw: dict, out: str) -> None:
    cfg = TrainRunConfig.model_validate(raw)
    seen: dict[str, list[torch.Tensor]] = {}
    unchanged: list[bool] = []

    def hook(step: int, parts) -> None:
        if step == OVERFLOW_STEP:
            seen["before"] = _snapshot(parts)
            if rank == 1:  # only one rank's shard overflows
                grad = next(p.grad for m in parts for p in m.parameters() if p.grad is not None)
                local_part(grad).view(-1)[0] = float("inf")
        elif step == OVERFLOW_STEP + 1:
            after = _snapshot(parts)
            unchanged.append(
                all(torch.equal(a, b) for a, b in zip(seen["before"], after, strict=True))
            )

    ctx = RankContext(rank, world, rank, torch.device("cpu"), True)
    Engine(cfg, out, ctx, Console(quiet=True), after_backward=hook).fit()
    Path(out, f"unchanged-{rank}.json").write_text(json.dumps(unchanged))


@pytest.mark.timeout(200)
def test_injected_overflow_is_skipped_on_every_rank_and_halves_the_scale(tmp_path):
    raw = with_layout(FP16, **{"parallel.dp_shard": 2})
    seed_data(raw, tmp_path, tmp_path / "run")
    run_ranks(_overflow_rank, 2, raw, str(tmp_path / "run"), timeout=180)
    rows = {r["step"]: r for r in train_rows(tmp_path / "run")}
    assert rows[OVERFLOW_STEP]["overflow"] is True
    assert rows[OVERFLOW_STEP]["overflows"] == 1
    assert rows[OVERFLOW_STEP]["loss_scale"] == rows[OVERFLOW_STEP - 1]["loss_scale"] / 2
    assert not any(rows[s]["overflow"] for s in rows if s != OVERFLOW_STEP)
    for rank in (0, 1):  # the skipped step left both ranks' shards untouched
        assert json.loads((tmp_path / "run" / f"unchanged-{rank}.json").read_text()) == [True]


def test_fp16_single_process_trains_with_a_finite_loss(tmp_path):
    seed_data(FP16, tmp_path, tmp_path / "run")
    losses = fit_single(FP16, tmp_path / "run")
    assert all(l == l and abs(l) < 100 for l in losses)  # noqa: E741 - finite
    assert losses[-1] < losses[0]
    assert train_rows(tmp_path / "run")[0]["loss_scale"] == 2.0**16
