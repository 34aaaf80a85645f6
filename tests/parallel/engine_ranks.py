"""Run the training engine in this process or on N gloo ranks, and read back its losses."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dist_helpers import run_ranks
from lmforge.train.engine import Engine, RankContext
from lmforge.train.run_config import TrainRunConfig
from lmforge.train.tasks import prepare_data

DECODER: dict[str, Any] = {
    "model": {
        "arch": "decoder",
        "preset": "tiny",
        "overrides": {"d_model": 32, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64},
    },
    "data": {"source": "demo", "docs": 300, "seq_len": 16, "vocab_size": 300},
    "train": {
        "global_batch_size": 8,
        "max_steps": 5,
        "lr": 1e-2,
        "warmup_steps": 0,
        "checkpoint_every": 0,
        "eval_every": 0,
        "export": False,
    },
}

ENCODER: dict[str, Any] = {
    "model": {
        "arch": "encoder",
        "preset": "tiny",
        "overrides": {"d_model": 32, "n_layers": 4, "n_heads": 4, "d_ff": 64, "dropout": 0.0},
    },
    "data": {"source": "demo", "docs": 300, "seq_len": 24, "vocab_size": 300},
    "train": copy.deepcopy(DECODER["train"]),
}


def with_layout(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `base` with dotted-key changes: with_layout(c, **{"parallel.tp": 2})."""
    raw = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return raw


def seed_data(raw: dict[str, Any], cache: Path, out: Path) -> None:
    """Tokenize once per config family and copy it in, so ranks skip the preparation."""
    cfg = TrainRunConfig.model_validate(raw)
    key = cache / f"data-{cfg.model.arch}"
    if not (key / "prepared.json").exists():
        prepare_data(cfg, key)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "data").exists():
        shutil.copytree(key, out / "data")


def _rank_fit(rank: int, world: int, raw: dict[str, Any], out: str) -> None:
    cfg = TrainRunConfig.model_validate(raw)
    ctx = RankContext(rank, world, rank, torch.device("cpu"), True)
    engine = Engine(cfg, out, ctx, Console(quiet=True))
    engine.fit()
    if rank == 0:
        (Path(out) / "losses.json").write_text(json.dumps(engine.losses()))


def fit_single(raw: dict[str, Any], out: Path) -> list[float]:
    cfg = TrainRunConfig.model_validate(raw)
    ctx = RankContext(0, 1, 0, torch.device("cpu"), False)
    engine = Engine(cfg, out, ctx, Console(quiet=True))
    engine.fit()
    return engine.losses()


def fit_ranks(raw: dict[str, Any], out: Path, world: int, timeout: float = 150.0) -> list[float]:
    run_ranks(_rank_fit, world, raw, str(out), timeout=timeout)
    return json.loads((out / "losses.json").read_text())


def train_rows(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "train"]
