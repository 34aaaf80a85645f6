"""Pipeline parallelism on `torch.distributed.pipelining`: split, stage, schedule.

The layer stack is cut into `pp` stages (or `pp x stages_per_rank` for Interleaved1F1B,
rank r holding stages r, r+pp, r+2pp, ...). Each stage is a pruned deep copy of the whole
model (see `ParallelModel.pipeline_stage`), so parameter names stay those of the full
model and checkpoints load under any split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.parallel.protocol import model_layers

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


def split_layers(keys: list[str], n_stages: int) -> list[list[str]]:
    """Contiguous, near-equal runs of layers; earlier stages take the remainder."""
    if n_stages > len(keys):
        raise ConfigError(
            f"{n_stages} pipeline stages but the model has only {len(keys)} layers; lower "
            "parallel.pp (or parallel.stages_per_rank) or use a deeper model"
        )
    base, extra = divmod(len(keys), n_stages)
    out, start = [], 0
    for s in range(n_stages):
        size = base + (1 if s < extra else 0)
        out.append(keys[start : start + size])
        start += size
    return out


def stage_ids(schedule: str, pp_rank: int, pp: int, stages_per_rank: int) -> list[int]:
    if schedule == "interleaved_1f1b":
        return [pp_rank + k * pp for k in range(stages_per_rank)]
    return [pp_rank]


def num_stages(schedule: str, pp: int, stages_per_rank: int) -> int:
    return pp * stages_per_rank if schedule == "interleaved_1f1b" else pp


def check_microbatches(schedule: str, pp: int, microbatches: int) -> None:
    if schedule not in SCHEDULES:
        raise ConfigError(f"parallel.pp_schedule={schedule!r}: use one of {list(SCHEDULES)}")
    if schedule == "interleaved_1f1b" and microbatches % pp:
        raise ConfigError(
            f"interleaved_1f1b needs parallel.microbatches ({microbatches}) to be a multiple "
            f"of parallel.pp ({pp})"
        )


def split_model(
    model: nn.Module, schedule: str, pp_rank: int, pp: int, stages_per_rank: int
) -> list[tuple[int, nn.Module]]:
    """(stage index, pruned copy) for each stage this rank owns."""
    n = num_stages(schedule, pp, stages_per_rank)
    runs = split_layers(list(model_layers(model).keys()), n)
    parts = []
    for sid in stage_ids(schedule, pp_rank, pp, stages_per_rank):
        part = copy.deepcopy(model).pipeline_stage(runs[sid], first=sid == 0, last=sid == n - 1)
        parts.append((sid, part))
    return parts


@dataclass
class Pipeline:
    schedule: Any
    stage_indices: list[int]
    n_stages: int
    has_first: bool
    has_last: bool
    losses: list[torch.Tensor] = field(default_factory=list)

    def step(self, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> list[torch.Tensor]:
        """One forward+backward over all micro-batches; returns the last stage's losses."""
        losses: list[torch.Tensor] = []
        kwargs: dict[str, Any] = {}
        if self.has_last:
            kwargs = {"target": targets, "losses": losses}
        if self.has_first:
            self.schedule.step(*inputs, **kwargs)
        else:
            self.schedule.step(**kwargs)
        return losses


def build_pipeline(
    parts: list[tuple[int, nn.Module]],
    schedule: str,
    microbatches: int,
    n_stages: int,
    device: torch.device,
    group: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Pipeline:
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )

    stages = [PipelineStage(m, sid, n_stages, device, group=group) for sid, m in parts]
    # scale_grads=False: the loss already carries the global normalisation.
    if schedule == "interleaved_1f1b":
        sched = ScheduleInterleaved1F1B(stages, microbatches, loss_fn=loss_fn, scale_grads=False)
    else:
        cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
        sched = cls(stages[0], microbatches, loss_fn=loss_fn, scale_grads=False)
    ids = [sid for sid, _ in parts]
    return Pipeline(sched, ids, n_stages, 0 in ids, n_stages - 1 in ids)
