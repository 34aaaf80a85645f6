"""Every layout computes the same training step: losses equal one process's within 1e-5.

Five fp32 steps of a tiny decoder LM (and the encoder classifier) on gloo ranks: DDP,
FSDP2, tensor parallel (with sequence parallel), each pipeline schedule, dp x tp and
pp x dp x tp. The global batch is the same in every run; only the layout changes.
"""

from __future__ import annotations

import math

import pytest
from engine_ranks import DECODER, ENCODER, fit_ranks, fit_single, seed_data, with_layout

TOL = 1e-5

DECODER_LAYOUTS = {
    "ddp": (2, {"parallel.dp_replicate": 2, "parallel.dp_shard": 1}),
    "fsdp2": (2, {"parallel.dp_shard": 2}),
    "tp_sp": (2, {"parallel.tp": 2, "parallel.dp_shard": 1}),
    "pp_gpipe": (2, {"parallel.pp": 2, "parallel.dp_shard": 1, "parallel.pp_schedule": "gpipe"}),
    "pp_1f1b": (2, {"parallel.pp": 2, "parallel.dp_shard": 1, "parallel.pp_schedule": "1f1b"}),
    "pp_interleaved": (
        2,
        {
            "parallel.pp": 2,
            "parallel.dp_shard": 1,
            "parallel.pp_schedule": "interleaved_1f1b",
            "parallel.stages_per_rank": 2,
        },
    ),
    "dp_x_tp": (4, {"parallel.dp_shard": 2, "parallel.tp": 2}),
    "pp_x_dp_x_tp": (
        8,
        {"parallel.pp": 2, "parallel.dp_shard": 2, "parallel.tp": 2, "parallel.microbatches": 2},
    ),
}

# Activation checkpointing recomputes the same forward: losses must not move either.
CHECKPOINTED_LAYOUTS = {
    "fsdp2_full": (2, {"parallel.dp_shard": 2, "train.activation_checkpointing": "full"}),
    "tp_sqrt": (
        2,
        {"parallel.tp": 2, "parallel.dp_shard": 1, "train.activation_checkpointing": "sqrt"},
    ),
    "pp_selective": (
        2,
        {"parallel.pp": 2, "parallel.dp_shard": 1, "train.activation_checkpointing": "selective"},
    ),
}

ENCODER_LAYOUTS = {
    "ddp": (2, {"parallel.dp_replicate": 2, "parallel.dp_shard": 1}),
    "fsdp2": (2, {"parallel.dp_shard": 2}),
    "tp": (2, {"parallel.tp": 2, "parallel.dp_shard": 1}),
    "pp_1f1b": (2, {"parallel.pp": 2, "parallel.dp_shard": 1}),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    cache = tmp_path_factory.mktemp("parity-cache")
    refs = {}
    for name, base in (("decoder", DECODER), ("encoder", ENCODER)):
        out = cache / f"single-{name}"
        seed_data(base, cache, out)
        refs[name] = (base, cache, fit_single(base, out))
    return refs


def _check(single: list[float], multi: list[float]) -> None:
    assert len(multi) == len(single) == 5
    assert all(math.isfinite(x) for x in multi)
    worst = max(abs(a - b) for a, b in zip(single, multi, strict=True))
    assert worst < TOL, f"per-step losses differ by up to {worst:.2e}: {single} vs {multi}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("layout", list(DECODER_LAYOUTS))
def test_decoder_layout_matches_single_process(references, tmp_path, layout):
    base, cache, single = references["decoder"]
    world, changes = DECODER_LAYOUTS[layout]
    raw = with_layout(base, **changes)
    seed_data(raw, cache, tmp_path)
    _check(single, fit_ranks(raw, tmp_path, world, timeout=200))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("layout", list(ENCODER_LAYOUTS))
def test_encoder_layout_matches_single_process(references, tmp_path, layout):
    base, cache, single = references["encoder"]
    world, changes = ENCODER_LAYOUTS[layout]
    raw = with_layout(base, **changes)
    seed_data(raw, cache, tmp_path)
    _check(single, fit_ranks(raw, tmp_path, world, timeout=200))


def test_single_process_run_learns(references):
    """The reference itself must train, or equal losses would prove nothing."""
    _, _, losses = references["decoder"]
    assert losses[-1] < losses[0]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("layout", list(CHECKPOINTED_LAYOUTS))
def test_checkpointed_layout_matches_single_process(references, tmp_path, layout):
    base, cache, single = references["decoder"]
    world, changes = CHECKPOINTED_LAYOUTS[layout]
    raw = with_layout(base, **changes)
    seed_data(raw, cache, tmp_path)
    _check(single, fit_ranks(raw, tmp_path, world, timeout=200))


@pytest.mark.parametrize("policy", ["every_k", "sqrt"])
def test_checkpointed_single_process_matches(references, tmp_path, policy):
    base, cache, single = references["decoder"]
    raw = with_layout(base, **{"train.activation_checkpointing": policy})
    seed_data(raw, cache, tmp_path)
    _check(single, fit_single(raw, tmp_path))
