import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.models import EncoderClassifier, EncoderConfig
from lmforge.train.checkpoint import (
    CheckpointError,
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lmforge.train.schedule import build_scheduler


def setup(seed: int = 0, vocab: int = 50):
    torch.manual_seed(seed)
    model = EncoderClassifier(
        EncoderConfig(vocab_size=vocab, n_classes=2, d_model=16, n_heads=2, d_ff=32, max_len=16)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = build_scheduler(opt, 2, 10, 0.1)
    return model, opt, sched


def train_steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        ids = torch.randint(0, 50, (4, 8))
        loss = model(ids, torch.ones_like(ids)).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_roundtrip_restores_every_piece(tmp_path: Path):
    model, opt, sched = setup()
    train_steps(model, opt, sched, 3)
    random.seed(5)
    np.random.seed(6)
    state = TrainState(step=3, data_position=3, tokens_seen=96, train_seconds=1.5, meta={"a": 1})
    path = save_checkpoint(tmp_path, model, opt, sched, state)
    expected = (torch.rand(3), np.random.rand(), random.random())

    model2, opt2, sched2 = setup(seed=1)
    loaded = load_checkpoint(path, model2, opt2, sched2)
    assert loaded == state
    assert (torch.rand(3), np.random.rand(), random.random()) == (
        pytest.approx(expected[0]),
        expected[1],
        expected[2],
    )
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value)
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        a, b = opt.state[p], opt2.state[p2]
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and torch.equal(a["step"], b["step"])
    assert sched2.state_dict()["last_epoch"] == 3
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert sorted(f.name for f in path.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]


def test_keeps_the_newest_two_and_ignores_temp_folders(tmp_path: Path):
    model, opt, sched = setup()
    for step in (1, 2, 3, 10):
        save_checkpoint(tmp_path, model, opt, sched, TrainState(step=step))
    (tmp_path / ".tmp-step-000099-123").mkdir()  # a crash mid-write
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000010"]
    assert latest_checkpoint(tmp_path).name == "step-000010"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_mismatched_model_is_a_clear_error(tmp_path: Path):
    model, opt, sched = setup()
    path = save_checkpoint(tmp_path, model, opt, sched, TrainState(step=1))
    other, opt2, sched2 = setup(vocab=70)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(path, other, opt2, sched2)
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"state\.json"):
        load_checkpoint(path, model, opt, sched)
