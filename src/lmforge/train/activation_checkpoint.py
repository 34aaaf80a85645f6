"""Activation checkpointing for any model that declares its blocks (see `parallel.protocol`).

`apply_activation_checkpointing(model, policy)` swaps blocks of `model_layers(model)` for
wrappers in place; the model's own forward, which loops over that `nn.ModuleDict`, is
unchanged. Every wrapper recomputes with non-reentrant `torch.utils.checkpoint`.

Policies (activation memory for N blocks, recompute cost):

- `none`: nothing is wrapped.
- `full`: every block is checkpointed. Keeps one input per block: O(N), plus one block's
  internals during its backward; about one extra forward of compute.
- `every_k`: every k-th block ("k-1", "2k-1", ...). Trades memory for compute in between.
- `sqrt`: the N blocks form ceil(sqrt(N)) contiguous segments, each checkpointed as one unit,
  so only segment inputs are kept and one segment is recomputed at a time: O(sqrt N). The
  recomputed segment holds all its blocks' internals at once, and a transformer block's are
  ~20x its input, so below a few hundred blocks `sqrt` peaks higher than `full` (see
  bench/activation_checkpointing.py); it holds the least between forward and backward.
- `selective`: every block is checkpointed, but matmul and attention outputs are saved and
  only the cheap ops between them (norms, activations, residual adds) are recomputed.

Names in the state dict do not change. `checkpoint_wrapper` stores the block as
`_checkpoint_wrapped_module` and registers state-dict hooks that strip that prefix on save
and add it back on load. The segment wrappers used by `sqrt` subclass the same base class, so
they get the same hooks, and a segment head holds the blocks after it only as plain
references (each is registered once, under its own key). A state dict saved under any policy
therefore loads under any other, or into the unwrapped model. (`named_parameters()` on the
whole model still shows the prefix, exactly as with `checkpoint_wrapper`.)

Where it goes in the engine: after tensor parallelism and pipeline splitting, before FSDP.
Tensor-parallel plans name modules by path ("layers.*.attention.wq"), and torch's
`parallelize_module` does not see through a wrapper: it warns and leaves that block
unsharded. Pipeline pruning could drop a segment head and keep blocks that rely on it. FSDP
comes last; shard the block inside each wrapper (`unwrap_block`), so its unshard/reshard hooks
fire wherever the block really runs (for `sqrt`, inside its segment head's checkpoint).
Sharding the wrappers gives the same gradients too (checked with 2-rank FSDP2 on gloo), but
under `sqrt` each pass-through call of a segment tail would gather its weights once more.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    ActivationWrapper,
    checkpoint_wrapper,
)
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from lmforge.errors import ConfigError
from lmforge.parallel.protocol import model_layers

POLICIES = ("none", "full", "every_k", "sqrt", "selective")

# Outputs the `selective` policy keeps: the matmuls (linear layers reach the dispatcher as
# mm/addmm, batched attention matmuls as bmm) and every fused attention kernel. On CPU, SDPA
# runs `_scaled_dot_product_flash_attention_for_cpu`, or the math path, which is made of
# bmm/softmax ops. Looked up by name so a build that lacks one kernel still works.
_SAVED_OPS = frozenset(
    getattr(torch.ops.aten, name)
    for name in (
        "mm",
        "addmm",
        "bmm",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    if hasattr(torch.ops.aten, name)
)


def _save_matmuls(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if func.overloadpacket in _SAVED_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


class _SegmentTail(ActivationWrapper):
    """A block that runs inside the checkpoint of the segment head before it.

    The model's loop still calls it; there it passes the hidden state through, because the
    head has already applied it. The head calls it with `live` set to really run it.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__(block)
        self.live = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.live:
            return self._checkpoint_wrapped_module(*args, **kwargs)
        if not args:
            raise TypeError("a checkpointed segment needs the hidden state as first positional arg")
        return args[0]


class _SegmentHead(ActivationWrapper):
    """The first block of a segment: runs it and the segment's tails under one checkpoint.

    Every block of the segment gets the extra arguments (masks, rotary tables) this block was
    called with, as in the model's loop, and must return the new hidden state.
    """

    def __init__(self, block: nn.Module, tails: list[_SegmentTail]) -> None:
        super().__init__(block)
        # A tuple, not submodules: each tail is registered under its own key in the layer
        # dict, so registering it here too would list its parameters twice.
        self._tails = tuple(tails)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self._run_segment, *args, use_reentrant=False, **kwargs)

    def _run_segment(self, *args: Any, **kwargs: Any) -> Any:
        hidden = self._checkpoint_wrapped_module(*args, **kwargs)
        extras = args[1:]
        for tail in self._tails:
            # Call the tail module (not the block inside it) so hooks put on it still fire.
            tail.live = True
            try:
                hidden = tail(hidden, *extras, **kwargs)
            finally:
                tail.live = False
        return hidden


def sqrt_segments(keys: list[str]) -> list[list[str]]:
    """Split `keys` into ceil(sqrt(N)) contiguous segments whose sizes differ by at most one."""
    n = len(keys)
    if n == 0:
        return []
    n_segments = math.ceil(math.sqrt(n))
    size, extra = divmod(n, n_segments)
    segments, start = [], 0
    for i in range(n_segments):
        end = start + size + (1 if i < extra else 0)
        segments.append(keys[start:end])
        start = end
    return segments


def unwrap_block(module: nn.Module) -> nn.Module:
    """The original block inside a wrapper added here (the module itself if unwrapped)."""
    while isinstance(module, ActivationWrapper):
        module = module._checkpoint_wrapped_module
    return module


def apply_activation_checkpointing(model: nn.Module, policy: str, every_k: int = 2) -> list[str]:
    """Wrap blocks of `model_layers(model)` in place for `policy`; return the wrapped keys.

    For `sqrt`, the keys returned are the segment heads (one per checkpointed segment).
    Apply after tensor parallelism and before FSDP (see the module docstring for why).
    """
    if policy not in POLICIES:
        raise ConfigError(
            f"activation checkpointing policy {policy!r} is unknown; use one of: "
            + ", ".join(POLICIES)
        )
    if policy == "every_k" and (isinstance(every_k, bool) or not isinstance(every_k, int)):
        raise ConfigError(f"every_k={every_k!r}: use a whole number >= 1")
    if policy == "every_k" and every_k < 1:
        raise ConfigError(f"every_k={every_k}: use a whole number >= 1")
    layers = model_layers(model)
    keys = list(layers.keys())
    if any(isinstance(layers[k], ActivationWrapper) for k in keys):
        raise RuntimeError("activation checkpointing is already applied to this model")

    if policy == "none":
        return []
    if policy == "sqrt":
        heads = []
        for segment in sqrt_segments(keys):
            tails = [_SegmentTail(layers[k]) for k in segment[1:]]
            layers[segment[0]] = _SegmentHead(layers[segment[0]], tails)
            for key, tail in zip(segment[1:], tails, strict=True):
                layers[key] = tail
            heads.append(segment[0])
        return heads

    chosen = keys[every_k - 1 :: every_k] if policy == "every_k" else keys
    for key in chosen:
        if policy == "selective":
            # A fresh pair of contexts per call: each one caches that call's saved outputs.
            context_fn = partial(create_selective_checkpoint_contexts, _save_matmuls)
            layers[key] = checkpoint_wrapper(layers[key], context_fn=context_fn)
        else:
            layers[key] = checkpoint_wrapper(layers[key])
    return chosen
