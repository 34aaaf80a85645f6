"""Learning-rate schedule: linear warmup, then cosine decay to a floor of `min_lr_ratio * lr`."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lmforge.errors import ConfigError


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based).

    Warmup rises linearly to 1 at step `warmup_steps - 1` (the first step already learns);
    the cosine then falls to `min_lr_ratio` at the last step and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps - 1
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A LambdaLR stepping once per optimizer step. Its state is plain numbers (JSON-safe)."""
    if total_steps < 1:
        raise ConfigError(f"max_steps={total_steps}: train for at least 1 step")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps={warmup_steps}: use 0 or more")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"min_lr_ratio={min_lr_ratio}: use a share between 0 and 1")

    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warmup_steps, total_steps, min_lr_ratio)

    return LambdaLR(optimizer, factor)
