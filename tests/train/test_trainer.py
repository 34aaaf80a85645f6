import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from lmforge.models import EncoderClassifier, EncoderConfig
from lmforge.train.checkpoint import list_checkpoints
from lmforge.train.classify import classification_loss, make_evaluator
from lmforge.train.data import ClassificationBatches, fixed_batches
from lmforge.train.trainer import (
    Trainer,
    TrainerSettings,
    TrainingDivergedError,
    build_param_groups,
)


def synthetic_batches(n: int = 96, seed: int = 0) -> tuple[ClassificationBatches, list]:
    g = torch.Generator().manual_seed(seed)
    ids = [
        [
            2,
            *torch.randint(
                5, 60, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g
            ).tolist(),
            3,
        ]
        for _ in range(n)
    ]
    classes = [int(x[1] % 3) for x in ids]  # learnable: the first token decides
    return ClassificationBatches(ids, classes, batch_size=8, seed=seed), fixed_batches(
        ids[:32], classes[:32], 16
    )


def build_model(seed: int = 0) -> EncoderClassifier:
    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=60, n_classes=3, d_model=32, n_heads=2, d_ff=64, max_len=24)
    return EncoderClassifier(cfg)


def make_trainer(out: Path, loss_fn=classification_loss, **overrides) -> Trainer:
    batches, eval_batches = synthetic_batches()
    settings = TrainerSettings(
        max_steps=20,
        lr=3e-3,
        warmup_steps=3,
        eval_every=5,
        checkpoint_every=5,
        **overrides,
    )
    return Trainer(
        build_model(),
        loss_fn,
        batches,
        settings,
        out,
        evaluate=make_evaluator(eval_batches),
        run_meta={"run": "test"},
    )


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_interrupt_then_resume_reproduces_the_straight_run(tmp_path: Path):
    straight = make_trainer(tmp_path / "straight")
    result = straight.fit()
    assert result.steps == 20 and len(result.losses) == 20

    calls = {"n": 0}

    def interrupted_loss(model, batch):
        loss, n = classification_loss(model, batch)  # dropout has drawn its masks already
        calls["n"] += 1
        if calls["n"] == 13:  # mid step 13: the checkpoint must replay this step exactly
            raise KeyboardInterrupt
        return loss, n

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "resumed", loss_fn=interrupted_loss).fit()
    assert list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1].name == "step-000012"

    again = make_trainer(tmp_path / "resumed")
    resumed = again.fit()
    assert resumed.resumed_from == 12
    assert resumed.losses == pytest.approx(result.losses, abs=1e-6)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value, atol=1e-6, rtol=0)
    rows = read_rows(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 21))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [5, 10, 15, 20]


def test_resume_from_a_periodic_checkpoint_matches(tmp_path: Path):
    straight = make_trainer(tmp_path).fit()
    # As if the process died after step 15's checkpoint: later rows must be replaced.
    shutil.rmtree(tmp_path / "checkpoints" / "step-000020")
    resumed = make_trainer(tmp_path).fit()
    assert resumed.resumed_from == 15
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    steps = [r["step"] for r in read_rows(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 21))


def test_metrics_rows_and_checkpoint_pruning(tmp_path: Path):
    result = make_trainer(tmp_path).fit()
    rows = read_rows(tmp_path / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_second", "seconds"} <= set(train[0])
    assert train[0]["lr"] == pytest.approx(3e-3 / 3)  # first warmup step
    assert all(b["seconds"] >= a["seconds"] for a, b in itertools.pairwise(train))
    assert {"eval_loss", "eval_accuracy"} <= set(evals[-1]) and evals[-1]["step"] == 20
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-000015", "step-000020"]
    state = json.loads((tmp_path / "checkpoints" / "step-000020" / "state.json").read_text())
    assert state["meta"] == {"run": "test"} and state["data_position"] == 20
    assert result.last_eval["eval_accuracy"] == evals[-1]["eval_accuracy"]
    assert result.tokens_per_second > 0


def test_other_run_meta_starts_fresh(tmp_path: Path):
    make_trainer(tmp_path).fit()
    batches, _ = synthetic_batches()
    other = Trainer(
        build_model(),
        classification_loss,
        batches,
        TrainerSettings(max_steps=4, checkpoint_every=2, eval_every=2),
        tmp_path,
        run_meta={"run": "changed"},
    )
    result = other.fit()
    assert result.resumed_from is None and result.steps == 4
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step-000002",
        "step-000004",
    ]
    assert len(read_rows(tmp_path / "metrics.jsonl")) == 4


def test_bf16_autocast_trains(tmp_path: Path):
    result = make_trainer(tmp_path, precision="bf16").fit()
    assert result.losses[-1] < result.losses[0]
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_a_nan_loss_stops_with_a_clear_error(tmp_path: Path):
    def nan_loss(model, batch):
        loss, n = classification_loss(model, batch)
        return loss * float("nan"), n

    with pytest.raises(TrainingDivergedError, match=r"lower train\.lr"):
        make_trainer(tmp_path, loss_fn=nan_loss).fit()


def test_weight_decay_skips_norms_biases_and_embeddings():
    model = build_model()
    decay, no_decay = build_param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.head.weight) in decayed and id(model.blocks["0"].attn.q.weight) in decayed
    for p in (model.tok_emb.weight, model.pos_emb.weight, model.ln_final.weight, model.head.bias):
        assert id(p) not in decayed
    assert no_decay["weight_decay"] == 0.0


class TinyCausalLM(nn.Module):
    """A decoder-style model with tied input/output embeddings (shared tensors)."""

    def __init__(self, vocab: int = 40, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.mix(self.emb(ids)))))  # (B, T, V)


class TokenStream:
    def iter_from(self, position: int):
        while True:
            g = torch.Generator().manual_seed(position)
            yield torch.randint(0, 40, (4, 9), generator=g)
            position += 1


def lm_loss(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    logits = model(ids[:, :-1])  # (B, T-1, V)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return loss, ids[:, 1:].numel()


def test_the_loop_trains_a_decoder_lm_with_tied_weights(tmp_path: Path):
    def trainer(max_steps: int) -> Trainer:
        torch.manual_seed(0)
        return Trainer(
            TinyCausalLM(),
            lm_loss,
            TokenStream(),
            TrainerSettings(max_steps=max_steps, checkpoint_every=3, eval_every=100),
            tmp_path / "lm",
        )

    first = trainer(6).fit()
    assert first.tokens_per_second > 0 and len(first.losses) == 6
    resumed = trainer(6)
    assert resumed.fit().resumed_from == 6
    assert resumed.model.out.weight is resumed.model.emb.weight  # tie survives loading
