"""Typed config of a distributed training run (`lmforge train CONFIG --nproc N --out RUN`).

    model:     which architecture and size (a preset plus overrides, or a Hugging Face dir)
    data:      where the text comes from and how it becomes batches
    parallel:  the layout: dp_replicate x dp_shard x tp x pp, pipeline schedule, micro-batches
    train:     optimisation, precision, activation checkpointing, batching, checkpoints

The global batch is fixed by `train.global_batch_size` whatever the layout: each
data-parallel rank takes its share, so changing the layout never changes a step's maths.
A file is recognised as a run config (rather than a pipeline config) by its top-level
`model` section.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from lmforge.config import Section, _format_error, _read_yaml, apply_overrides
from lmforge.errors import ConfigError

PP_SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
AC_POLICIES = ("none", "full", "every_k", "sqrt", "selective")


class ModelSection(Section):
    arch: Literal["decoder", "encoder"] = Field(
        "decoder", description="decoder: Llama-style LM; encoder: BERT-style classifier."
    )
    preset: str = Field("tiny", description="Size preset (tiny, small, base, 1b).")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Config fields to change from the preset."
    )
    init_from: str | None = Field(
        None, description="Hugging Face BERT-family directory to start the encoder from."
    )


class DataSection(Section):
    source: str = Field(
        "demo",
        description="'demo' (the embedded generated reviews) or a file: csv, tsv, jsonl, parquet.",
    )
    eval_source: str | None = Field(None, description="Held-out file; default: split `source`.")
    text_field: str = "text"
    label_field: str = "label"
    docs: int = Field(4000, ge=10, description="Reviews generated when source is 'demo'.")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seq_len: int = Field(128, ge=8, description="LM: packed window; encoder: truncation length.")
    vocab_size: int = Field(4000, ge=100, description="Tokenizer trained on the train split.")
    max_docs: int | None = Field(None, ge=10, description="Read at most this many rows.")
    length_bucketing: bool = Field(
        False, description="Classifier: put texts of similar length in the same global batch."
    )


class ParallelSection(Section):
    dp_replicate: int = Field(1, ge=1)
    dp_shard: int = Field(-1, ge=-1, description="-1: whatever the other degrees leave.")
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    stages_per_rank: int = Field(2, ge=1, description="Interleaved1F1B: virtual stages per rank.")
    microbatches: int = Field(4, ge=1, description="Pipeline micro-batches per step.")
    sequence_parallel: bool = Field(True, description="Shard norms/activations on tp ranks.")
    fsdp_reshard_after_forward: bool = Field(
        True, description="Free gathered parameters after forward (less memory, more traffic)."
    )

    @model_validator(mode="after")
    def _dp_shard_value(self) -> ParallelSection:
        if self.dp_shard == 0:
            raise ValueError("dp_shard=0: use a degree >= 1, or -1 for the rest")
        return self


class DynamicBatchSection(Section):
    """Run-time micro-batching: the global batch stays fixed, its split into micro-batches
    (gradient accumulation) follows measured memory and throughput."""

    enabled: bool = Field(False, description="Change the micro-batch size at run time.")
    memory_cap_mb: float = Field(
        0.0, ge=0.0, description="Memory budget per rank; 0 = 90 % of the device (or RAM)."
    )
    headroom: float = Field(0.25, gt=0.0, lt=1.0, description="Grow only below (1-headroom)·cap.")
    high_water: float = Field(0.9, gt=0.0, le=1.0, description="Shrink above high_water·cap.")
    patience: int = Field(3, ge=1, description="Steps of evidence before growing or judging.")


class TrainSection(Section):
    global_batch_size: int = Field(16, ge=1, description="Sequences (LM) or examples per step.")
    micro_batch_size: int = Field(
        0, ge=0, description="Per-rank micro-batch for gradient accumulation; 0 = no split."
    )
    max_steps: int = Field(100, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="Max global gradient norm; 0 disables.")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    initial_loss_scale: float = Field(2.0**16, gt=0.0, description="fp16 only.")
    activation_checkpointing: Literal["none", "full", "every_k", "sqrt", "selective"] = "none"
    ac_every_k: int = Field(2, ge=1)
    seed: int = 0
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="Override the preset's.")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: only at the end).")
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(50, ge=0, description="0: only at the end and on SIGTERM.")
    keep_checkpoints: int = Field(2, ge=1)
    dynamic_batch: DynamicBatchSection = Field(default_factory=DynamicBatchSection)
    tensorboard: bool = Field(False, description="Also write TensorBoard event files.")
    threads: int = Field(0, ge=0, description="torch CPU threads per rank; 0 = cores / ranks.")
    export: bool = Field(True, description="Export the final model to RUN/model.")


class TrainRunConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    parallel: ParallelSection = Field(default_factory=ParallelSection)
    train: TrainSection = Field(default_factory=TrainSection)

    def identity_hash(self) -> str:
        """What decides the weights: resume refuses a checkpoint written under another.

        The layout is left out on purpose: a run may resume on a different layout or world
        size, since the global batch (and so each step's maths) does not depend on it.
        """
        dump = self.model_dump(mode="json")
        dump.pop("parallel")
        for speed_only in ("threads", "tensorboard", "dynamic_batch", "micro_batch_size"):
            dump["train"].pop(speed_only)
        dump["train"].pop("activation_checkpointing")
        dump["train"].pop("ac_every_k")
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def is_run_config(path: str | Path) -> bool:
    """Whether a YAML file is a training-run config (top-level `model`), not a pipeline one."""
    return isinstance(raw := _read_yaml(Path(path)), dict) and "model" in raw


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainRunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = _read_yaml(path)
        data = raw.get("data")
        root = path.resolve().parent
        if isinstance(data, dict):  # files named in the config are relative to the config
            for key in ("source", "eval_source"):
                if isinstance(data.get(key), str) and data[key] != "demo":
                    data[key] = _anchored(data[key], root)
        model = raw.get("model")
        if isinstance(model, dict) and isinstance(model.get("init_from"), str):
            model["init_from"] = _anchored(model["init_from"], root)
    raw = apply_overrides(raw, overrides or [])
    try:
        return TrainRunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, TrainRunConfig)) from None


def _anchored(value: str, root: Path) -> str:
    if value.startswith("pkg:"):  # a model shipped inside a Python package, resolved later
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


def check_batch_shape(cfg: TrainRunConfig, dims: Any) -> None:
    """The global batch must split evenly over data-parallel ranks (and micro-batches).

    `dims` is the run's `ParallelDims`. Checked by the launcher before any rank starts and
    by every rank, so `python -m lmforge.train` under plain torchrun gets the same message.
    """
    g, p, t = cfg.train.global_batch_size, cfg.parallel, cfg.train
    per_dp = dims.dp * (p.microbatches if dims.pp > 1 else 1)
    if g % per_dp:
        what = f"dp={dims.dp}" + (f" x microbatches={p.microbatches}" if dims.pp > 1 else "")
        raise ConfigError(
            f"train.global_batch_size={g} is not divisible by {what} = {per_dp}; each "
            "data-parallel rank (and micro-batch) must take an equal share"
        )
    if t.dynamic_batch.enabled and dims.pp > 1:
        raise ConfigError(
            "train.dynamic_batch applies to layouts without pipeline stages; with "
            "parallel.pp > 1 set parallel.microbatches instead"
        )
    local = g // dims.dp
    if t.micro_batch_size and (dims.pp > 1 or local % t.micro_batch_size):
        raise ConfigError(
            f"train.micro_batch_size={t.micro_batch_size} must divide the per-rank batch "
            f"{local} (global {g} / dp {dims.dp}); with pp > 1 use parallel.microbatches"
        )
