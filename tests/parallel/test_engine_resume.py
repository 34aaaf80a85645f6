"""Checkpoints: a crashed run resumes with the same loss curve, on the same layout or another."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from engine_ranks import DECODER, fit_single, seed_data, train_rows, with_layout
from rich.console import Console

from dist_helpers import run_ranks
from lmforge.errors import ConfigError
from lmforge.train.engine import Engine, RankContext
from lmforge.train.run_config import TrainRunConfig

SIX_STEPS = with_layout(DECODER, **{"train.max_steps": 6, "train.checkpoint_every": 3})


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def hook(current: int, parts) -> None:
        if current == step:
            raise Crash(f"simulated crash in step {current}")

    return hook


def _crashing_rank(rank: int, world: int, raw: dict, out: str, step: int) -> None:
    cfg = TrainRunConfig.model_validate(raw)
    ctx = RankContext(rank, world, rank, torch.device("cpu"), True)
    engine = Engine(cfg, out, ctx, Console(quiet=True), after_backward=crash_at(step))
    # Every rank raises at the same step, so no peer is left waiting in a collective.
    with contextlib.suppress(Crash):
        engine.fit()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache = tmp_path_factory.mktemp("resume-cache")
    out = cache / "uninterrupted"
    seed_data(SIX_STEPS, cache, out)
    return cache, fit_single(SIX_STEPS, out)


def _resume_single(raw: dict, out: Path) -> list[float]:
    losses = fit_single(raw, out)
    assert [r["step"] for r in train_rows(out)] == list(range(1, 7))  # no gap, no repeat
    return losses


def test_resume_same_layout_continues_the_loss_curve(reference, tmp_path):
    cache, full = reference
    seed_data(SIX_STEPS, cache, tmp_path)
    cfg = TrainRunConfig.model_validate(SIX_STEPS)
    engine = Engine(
        cfg,
        tmp_path,
        RankContext(0, 1, 0, torch.device("cpu"), False),
        Console(quiet=True),
        after_backward=crash_at(5),
    )
    with pytest.raises(Crash):
        engine.fit()
    assert (tmp_path / "checkpoints" / "step-000003").is_dir()
    resumed = _resume_single(SIX_STEPS, tmp_path)
    assert resumed == pytest.approx(full, abs=1e-6)


@pytest.mark.timeout(240)
def test_resume_on_another_layout_and_world_size(reference, tmp_path):
    """Saved under FSDP2 x tensor parallel on 4 ranks, resumed in one process."""
    cache, full = reference
    raw = with_layout(SIX_STEPS, **{"parallel.dp_shard": 2, "parallel.tp": 2})
    seed_data(raw, cache, tmp_path)
    run_ranks(_crashing_rank, 4, raw, str(tmp_path), 5, timeout=200)
    state = json.loads((tmp_path / "checkpoints" / "step-000003" / "state.json").read_text())
    assert state["extra"]["world_size"] == 4
    resumed = _resume_single(SIX_STEPS, tmp_path)
    assert resumed == pytest.approx(full, abs=1e-5)


@pytest.mark.timeout(240)
def test_resume_from_fsdp_into_a_pipeline(reference, tmp_path):
    cache, full = reference
    saved = with_layout(SIX_STEPS, **{"parallel.dp_shard": 2})
    seed_data(saved, cache, tmp_path)
    run_ranks(_crashing_rank, 2, saved, str(tmp_path), 4, timeout=200)
    resumed_layout = with_layout(SIX_STEPS, **{"parallel.pp": 2, "parallel.dp_shard": 1})
    from engine_ranks import fit_ranks

    resumed = fit_ranks(resumed_layout, tmp_path, 2, timeout=200)
    assert resumed == pytest.approx(full, abs=1e-5)


def test_a_changed_run_refuses_the_old_checkpoints(reference, tmp_path):
    cache, _ = reference
    seed_data(SIX_STEPS, cache, tmp_path)
    fit_single(SIX_STEPS, tmp_path)
    changed = with_layout(SIX_STEPS, **{"train.lr": 5e-3})
    with pytest.raises(ConfigError, match="different run"):
        fit_single(changed, tmp_path)
