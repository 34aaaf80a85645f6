"""The global gradient norm (and clipping) over parameters of any layout.

Plain tensors (replicated) count once; DTensor gradients (FSDP2 shards, tensor-parallel
shards or replicated norms) contribute their full norm, computed by DTensor itself; pipeline
stages hold disjoint parameters, so their squared norms are summed over the pp group.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist


def global_grad_norm(params: list[torch.Tensor], pp_group: Any = None) -> float:
    from torch.distributed.tensor import DTensor

    squares = torch.zeros((), dtype=torch.float64)
    for p in params:
        g = p.grad
        if g is None:
            continue
        norm = torch.linalg.vector_norm(g, dtype=torch.float32)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares += norm.double().cpu() ** 2
    if pp_group is not None:
        dist.all_reduce(squares, group=pp_group)
    return math.sqrt(float(squares))


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, pp_group: Any = None) -> float:
    """Scale gradients so their global norm is at most `max_norm` (0: only measure)."""
    total = global_grad_norm(params, pp_group)
    if max_norm > 0 and math.isfinite(total) and total > max_norm:
        coef = max_norm / (total + 1e-6)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
    return total
