"""Mixed precision: fp32, bf16, or fp16 with dynamic loss scaling that agrees across ranks.

- Under FSDP2 the low precision comes from its MixedPrecisionPolicy (parameters cast per
  block, gradients reduced in fp32, fp32 master weights); otherwise from `torch.autocast`.
- fp16 scales the loss (`torch.amp.GradScaler`) so small gradients survive. A step whose
  gradients hold an inf/NaN is skipped and the scale halves; after `growth_interval` clean
  steps it doubles. With sharded (FSDP2/tensor-parallel) gradients each rank sees only its
  shard, so the overflow flag is all-reduced: every rank skips the same steps, or the
  replicas would drift apart.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def local_part(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (in place ops on it update the DTensor), else the tensor."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


class ShardAwareGradScaler(torch.amp.GradScaler):
    """GradScaler whose overflow check sees local shards and agrees across the group."""

    def __init__(self, device: str, group: Any = None, **kwargs: Any) -> None:
        super().__init__(device, **kwargs)
        self.group = group

    def _unscale_grads_(  # type: ignore[override]
        self,
        optimizer: torch.optim.Optimizer,
        inv_scale: torch.Tensor,
        found_inf: torch.Tensor,
        allow_fp16: bool,
    ) -> dict[torch.device, torch.Tensor]:
        by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    grad = local_part(param.grad)
                    if not allow_fp16 and grad.dtype == torch.float16:
                        raise ValueError("cannot unscale fp16 gradients; keep master weights fp32")
                    by_kind[(grad.device, grad.dtype)].append(grad)
            found: dict[torch.device, torch.Tensor] = {}
            for (device, _), grads in by_kind.items():
                flag = found.setdefault(device, found_inf.to(device).clone())
                torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, inv_scale.to(device))
            if not found:
                found[found_inf.device] = found_inf.clone()
            if self.group is not None:
                total = sum(f.to(found_inf.device) for f in found.values())
                dist.all_reduce(total, op=dist.ReduceOp.MAX, group=self.group)
                for f in found.values():
                    f.copy_(total.clamp(max=1.0))
        return found


class Precision:
    def __init__(
        self,
        mode: str,
        device: torch.device,
        fsdp: bool,
        initial_scale: float = 2.0**16,
        group: Any = None,
    ) -> None:
        self.mode = mode
        self.device = device
        self.dtype = DTYPES[mode]
        self.use_autocast = mode != "fp32" and not fsdp
        self.scaler = (
            ShardAwareGradScaler(device.type, group=group, init_scale=initial_scale)
            if mode == "fp16"
            else None
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.use_autocast:
            return torch.autocast(device_type=self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scale_loss(loss).backward()

    def scale_value(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def unscale(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Bring gradients back to true size (before clipping); records overflow."""
        if self.scaler is not None:
            for opt in optimizers:
                self.scaler.unscale_(opt)

    def step(self, optimizers: list[torch.optim.Optimizer], grad_norm: float) -> bool:
        """Optimizer step unless fp16 overflowed; returns whether the weights changed."""
        if self.scaler is None:
            for opt in optimizers:
                opt.step()
            return True
        before = self.scaler.get_scale()
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        return not self.scaler.get_scale() < before

    def state_dict(self) -> dict[str, Any]:
        if self.scaler is None:
            return {}
        sd = self.scaler.state_dict()
        return {k: float(v) if isinstance(v, (int, float)) else v for k, v in sd.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
