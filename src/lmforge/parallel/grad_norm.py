"""The global gradient norm (and clipping) over parameters of any layout.

Squared norms are summed locally, one sum per kind of sharding, and each sum is all-reduced
only over the mesh dims it is sharded on: a DTensor gradient sharded by FSDP2 or tensor
parallel adds its shards, a replicated one (Replicate placements, or a plain tensor, which
every rank of the group holds whole) counts once. Pipeline stages hold disjoint parameters,
so the total is summed over the pp group last. A handful of all-reduces per step, however
many parameters.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist


def global_grad_norm(
    params: list[torch.Tensor], pp_group: Any = None, device_type: str = "cpu"
) -> float:
    from torch.distributed.tensor import DTensor

    plain = torch.zeros((), dtype=torch.float64)
    sharded: dict[tuple[Any, tuple[Any, ...]], torch.Tensor] = defaultdict(
        lambda: torch.zeros((), dtype=torch.float64)
    )
    meshes: dict[tuple[Any, tuple[Any, ...]], Any] = {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            key = (id(g.device_mesh), tuple(g.placements))
            meshes[key] = g.device_mesh
            local = g.to_local()
            sharded[key] += torch.linalg.vector_norm(local, dtype=torch.float32).double().cpu() ** 2
        else:
            plain += torch.linalg.vector_norm(g, dtype=torch.float32).double().cpu() ** 2
    total = plain
    for key, squares in sharded.items():
        mesh, placements = meshes[key], key[1]
        for dim, placement in enumerate(placements):
            # Anything but Replicate splits the tensor over this dim (Shard, and FSDP2's
            # _StridedShard over a tensor-parallel shard, which is not a Shard subclass).
            if not placement.is_replicate():
                squares = _all_reduce(squares, mesh.get_group(dim), mesh.device_type)
        total = total + squares
    if pp_group is not None:
        total = _all_reduce(total, pp_group, device_type)
    return math.sqrt(float(total))


def _all_reduce(value: torch.Tensor, group: Any, device_type: str) -> torch.Tensor:
    # NCCL reduces device tensors only; gloo takes CPU ones.
    t = value.to("cuda") if device_type == "cuda" else value.clone()
    dist.all_reduce(t, group=group)
    return t.cpu()


def clip_grad_norm(
    params: list[torch.Tensor], max_norm: float, pp_group: Any = None, device_type: str = "cpu"
) -> float:
    """Scale gradients so their global norm is at most `max_norm` (0: only measure)."""
    total = global_grad_norm(params, pp_group, device_type)
    if max_norm > 0 and math.isfinite(total) and total > max_norm:
        coef = max_norm / (total + 1e-6)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
    return total
