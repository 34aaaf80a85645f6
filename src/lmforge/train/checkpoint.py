"""Training checkpoints: everything needed to continue a run as if it never stopped.

    checkpoints/step-NNNNNN/
        model.safetensors      model weights (shared tensors stored once)
        optimizer.safetensors  optimizer state tensors, keyed "state.<param index>.<name>",
                               plus RNG state tensors, keyed "rng.<name>"
        state.json             step, data position, scheduler, optimizer param groups,
                               the rest of the RNG state, and the run's identity (`meta`)

A checkpoint is written into a hidden temp folder and renamed into place, so a crash leaves
either the whole checkpoint or none; only the newest `keep` are kept. No pickle anywhere.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lmforge.errors import LmforgeError
from lmforge.workspace import atomic_write_json, read_json

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(LmforgeError):
    """A checkpoint folder is incomplete or does not fit the model being trained."""


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint."""

    step: int = 0
    data_position: int = 0  # batches consumed from the batch source
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time in training steps only (no eval, no checkpoint writes)
    meta: dict[str, Any] = field(default_factory=dict)  # run identity, compared on resume


# -- RNG -------------------------------------------------------------------------------------


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) holding the torch, CUDA, numpy and Python generators' state."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(internal, dtype=torch.int64)
    info = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": cached},
        "python": {"version": version, "gauss": gauss},
    }
    return tensors, info


def restore_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    np_info = info["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state(
        (np_info["kind"], keys, np_info["pos"], np_info["has_gauss"], np_info["cached"])
    )
    py = info["python"]
    internal = tuple(int(x) for x in tensors["rng.python"].tolist())
    random.setstate((py["version"], internal, py["gauss"]))


# -- optimizer state <-> safetensors + JSON --------------------------------------------------


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in sd["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in info["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in info["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):  # JSON turned the tuple into a list
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# -- folders ---------------------------------------------------------------------------------


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders are skipped)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def clear_checkpoints(ckpt_dir: str | Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def read_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's state.json (cheap: no tensors are read)."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"checkpoint {path} has no state.json; delete the folder")
    return read_json(path / "state.json")


def save_checkpoint(
    ckpt_dir: str | Path,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    state: TrainState,
    rng: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    keep: int = 2,
) -> Path:
    """Write `step-NNNNNN` atomically and prune to the newest `keep` checkpoints.

    `rng` defaults to the generators' state now; the trainer passes the state from the start
    of an interrupted step so that the step replays with the same dropout masks.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    target = ckpt_dir / f"step-{state.step:06d}"
    tmp = ckpt_dir / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        rng_tensors, rng_info = rng if rng is not None else capture_rng_state()
        opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
        save_model(model, str(tmp / "model.safetensors"))
        save_file({**opt_tensors, **rng_tensors}, str(tmp / "optimizer.safetensors"))
        atomic_write_json(
            tmp / "state.json",
            {
                "format": FORMAT_VERSION,
                "step": state.step,
                "data_position": state.data_position,
                "tokens_seen": state.tokens_seen,
                "train_seconds": state.train_seconds,
                "meta": state.meta,
                "scheduler": scheduler.state_dict(),
                "optimizer": opt_info,
                "rng": rng_info,
                "saved_at": time.time(),
            },
        )
        old = ckpt_dir / f".old-{target.name}-{os.getpid()}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    restore_rng: bool = True,
) -> TrainState:
    """Load a checkpoint into the given objects (built the same way as when it was saved)."""
    path = Path(path)
    info = read_state(path)
    for name in ("model.safetensors", "optimizer.safetensors"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} lacks {name}; delete the folder")
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; delete the checkpoints to start fresh"
        )
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, info["optimizer"]))
    scheduler.load_state_dict(info["scheduler"])
    if restore_rng:
        restore_rng_state(tensors, info["rng"])
    return TrainState(
        step=int(info["step"]),
        data_position=int(info["data_position"]),
        tokens_seen=int(info["tokens_seen"]),
        train_seconds=float(info["train_seconds"]),
        meta=info.get("meta", {}),
    )
