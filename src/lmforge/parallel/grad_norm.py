"""The global gradient norm (and clipping) over parameters of any layout.

Squared norms are summed locally, one sum per kind of sharding, and each sum is all-reduced
only over the mesh dims it is sharded on: a DTensor gradient sharded by FSDP2 or tensor
parallel adds its shards, a replicated one (Replicate placements, or a plain tensor, which
every rank of the group holds whole) counts once. Pipeline stages hold disjoint parameters,
so the total is summed over the pp group last. A handful of all-reduces and one host sync
per step, however many parameters.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist


def _local(g: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return g.to_local() if isinstance(g, DTensor) else g


def _squares(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm(tensors, 2)  # one fused kernel per device and dtype
    return torch.stack([n.double() for n in norms]).pow(2).sum()


def global_grad_norm(
    params: list[torch.Tensor], pp_group: Any = None, device_type: str = "cpu"
) -> float:
    from torch.distributed.tensor import DTensor

    groups: dict[Any, list[torch.Tensor]] = defaultdict(list)
    meshes: dict[Any, Any] = {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            key = (id(g.device_mesh), tuple(g.placements))
            meshes[key] = g.device_mesh
        else:
            key = None
        groups[key].append(_local(g))
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    for key, tensors in groups.items():
        squares = _squares(tensors).to(total.device)
        if key is not None:
            mesh, placements = meshes[key], key[1]
            for dim, placement in enumerate(placements):
                # Anything but Replicate splits the tensor over this dim (Shard, and FSDP2's
                # _StridedShard over a tensor-parallel shard, which is not a Shard subclass).
                if not placement.is_replicate():
                    dist.all_reduce(squares, group=mesh.get_group(dim))
        total += squares
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    return math.sqrt(float(total))


def clip_grad_norm(
    params: list[torch.Tensor], max_norm: float, pp_group: Any = None, device_type: str = "cpu"
) -> float:
    """Scale gradients so their global norm is at most `max_norm` (0: only measure)."""
    total = global_grad_norm(params, pp_group, device_type)
    if max_norm > 0 and math.isfinite(total) and total > max_norm:
        grads = [_local(p.grad) for p in params if p.grad is not None]
        with torch.no_grad():
            torch._foreach_mul_(grads, max_norm / (total + 1e-6))
    return total
