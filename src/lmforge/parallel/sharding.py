"""Apply a layout to one model part: tensor parallel first, then data parallel.

Order matters: tensor parallel turns weights into DTensors on the tp mesh; FSDP2 then
shards those along the data-parallel mesh (2D: dp_shard x tp). Each transformer block is
its own FSDP2 unit so only one block's full parameters are alive at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.parallel.dims import ParallelDims
from lmforge.parallel.protocol import model_layers

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_tp_divisors(model: nn.Module, tp: int) -> None:
    divisors = getattr(model, "tp_divisors", dict)()
    bad = {name: value for name, value in divisors.items() if value % tp}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise ConfigError(
            f"parallel.tp={tp} does not divide the model's {shown}; pick a tp degree that "
            "divides every one of them"
        )


def apply_tensor_parallel(model: nn.Module, tp_mesh: Any, sequence_parallel: bool) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    check_tp_divisors(model, tp_mesh.size())
    parallelize_module(model, tp_mesh, model.tensor_parallel_plan(sequence_parallel))


def apply_fsdp(
    model: nn.Module,
    dp_mesh: Any,
    precision: str,
    reshard_after_forward: bool,
) -> None:
    """FSDP2 on every block, then on the root (which owns embeddings, norms, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = PRECISION_DTYPES[precision]
    # Compute in the low precision, but reduce gradients in fp32 so the sum over ranks
    # loses nothing; master weights and optimizer state stay fp32.
    mp = MixedPrecisionPolicy(
        param_dtype=None if precision == "fp32" else dtype, reduce_dtype=torch.float32
    )
    from lmforge.train.activation_checkpoint import unwrap_block

    layers = model_layers(model)
    for key in layers:
        # Shard the block itself, not its checkpoint wrapper: a sqrt-segment pass-through
        # would otherwise gather its weights a second time.
        fully_shard(
            unwrap_block(layers[key]),
            mesh=dp_mesh,
            mp_policy=mp,
            reshard_after_forward=reshard_after_forward,
        )
    # The root's parameters are used last in forward and first in backward: keeping them
    # gathered after forward saves one all-gather per step.
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False)


def apply_ddp(model: nn.Module, dp_mesh: Any, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, process_group=dp_mesh.get_group())


def parallelize_part(
    model: nn.Module,
    dims: ParallelDims,
    mesh: Any,
    precision: str,
    device: torch.device,
    sequence_parallel: bool = True,
    reshard_after_forward: bool = True,
    activation_checkpointing: str = "none",
    ac_every_k: int = 2,
) -> nn.Module:
    """Shard one model part in place; returns the module to call (a DDP wrapper for ddp).

    Order: tensor parallel (its plan names the blocks' own submodules, which a checkpoint
    wrapper would hide), then activation checkpointing, then data parallel.
    """
    if dims.tp > 1:
        apply_tensor_parallel(model, mesh["tp"], sequence_parallel)
    if activation_checkpointing != "none":
        from lmforge.train.activation_checkpoint import apply_activation_checkpointing

        apply_activation_checkpointing(model, activation_checkpointing, ac_every_k)
    mode = dims.data_parallel_mode
    if mode == "fsdp":
        apply_fsdp(model, mesh["dp_shard"], precision, reshard_after_forward)
    elif mode == "hsdp":
        apply_fsdp(model, mesh["dp_replicate", "dp_shard"], precision, reshard_after_forward)
    elif mode == "ddp":
        return apply_ddp(model, mesh["dp_replicate"], device)
    return model


def uses_fsdp(dims: ParallelDims) -> bool:
    return dims.data_parallel_mode in ("fsdp", "hsdp")
