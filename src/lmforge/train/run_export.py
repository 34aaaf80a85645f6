"""The end of a run: the final weights as a model folder, evaluated and registered.

Runs on one process after the process group is gone: it builds the full model and loads
the newest checkpoint into it, which is a resharding load from whatever layout trained it.

    RUN/model/      model.safetensors + config.json + tokenizer.json
    RUN/registry/   the same folder registered as version N of the run's name (alias latest)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lmforge.train.run_config import TrainRunConfig
from lmforge.train.tasks import Task, load_task
from lmforge.workspace import atomic_path, atomic_write_json

DECODER_ARCHITECTURE = "decoder-lm"


def save_decoder_dir(out_dir: Path, model: torch.nn.Module, tokenizer: Any) -> Path:
    from safetensors.torch import save_model

    from lmforge.text.tokenizer import save_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_model(model, str(tmp))  # stores tied embeddings once
    atomic_write_json(
        out_dir / "config.json",
        {"architecture": DECODER_ARCHITECTURE, "model": model.config.to_dict()},
    )
    save_tokenizer(tokenizer, out_dir / "tokenizer.json")
    return out_dir


def final_model(cfg: TrainRunConfig, run_dir: Path) -> tuple[torch.nn.Module, Task]:
    """The full model with the newest checkpoint's weights, on the CPU, in eval mode."""
    from lmforge.train.dist_checkpoint import latest_dist_checkpoint, load_dist_checkpoint

    task = load_task(cfg, run_dir / "data")
    model = task.build_model()
    latest = latest_dist_checkpoint(run_dir / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir / 'checkpoints'} to export")
    load_dist_checkpoint(latest, [model], None, restore_rng=False)
    return model.eval(), task


def evaluate(model: torch.nn.Module, task: Task, cfg: TrainRunConfig) -> dict[str, float]:
    sums: dict[str, float] = {}
    with torch.no_grad():
        for b in task.eval_batches(10**9, 64):
            for k, v in task.eval_sums(model(*b.inputs), b.targets).items():
                sums[k] = sums.get(k, 0.0) + v
    return task.eval_metrics(sums)


def export_run(cfg: TrainRunConfig, run_dir: Path) -> dict[str, Any]:
    from lmforge.registry import ModelRegistry

    model, task = final_model(cfg, run_dir)
    metrics = evaluate(model, task, cfg)
    out = run_dir / "model"
    if task.kind == "lm":
        save_decoder_dir(out, model, task.tokenizer)
    else:
        from lmforge.models import save_model_dir

        save_model_dir(out, model, task.tokenizer, task.labels)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.resolve().name).strip("-") or "model"
    version = ModelRegistry(run_dir / "registry").register(
        name, out, metrics=metrics, tags={"arch": cfg.model.arch}, alias="latest"
    )
    return {"model_dir": str(out), "registry_version": version.version, **metrics}
