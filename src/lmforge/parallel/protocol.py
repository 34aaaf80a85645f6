"""What a model declares so generic code can shard it, pipeline it and checkpoint its layers.

A model stays a plain `nn.Module` that runs on one process unchanged. The parallel code only
reads these declarations:

- `layers_attr`: the name of the `nn.ModuleDict` that holds the repeated blocks, keyed
  "0".."N-1". A dict (not a list) keeps parameter names stable when a pipeline stage drops
  the layers it does not own, so a checkpoint written under one layout loads under another.
- `tensor_parallel_plan(sequence_parallel)`: module-name patterns ("layers.*.attention.wq")
  mapped to torch `ParallelStyle` objects, applied with `parallelize_module` on the tp mesh.
  Attention modules read their local head count from the (possibly sharded) projection
  width at run time, so the plan needs no head-count bookkeeping.
- `pipeline_stage(layer_keys, first, last)`: prune the module in place to one pipeline stage
  (keep only `layer_keys`; drop input modules unless `first`, output modules unless `last`)
  and return it. The first stage takes the model's own inputs; every later stage takes the
  previous stage's outputs (a tensor or a tuple of tensors); the last returns logits.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class ParallelModel(Protocol):
    layers_attr: ClassVar[str]

    def tensor_parallel_plan(self, sequence_parallel: bool = True) -> dict[str, Any]: ...

    def pipeline_stage(self, layer_keys: list[str], first: bool, last: bool) -> nn.Module: ...


def model_layers(model: nn.Module) -> nn.ModuleDict:
    """The model's repeated blocks (see `layers_attr`)."""
    layers = getattr(model, type(model).layers_attr)
    if not isinstance(layers, nn.ModuleDict):
        raise TypeError(f"{type(model).__name__}.{type(model).layers_attr} must be nn.ModuleDict")
    return layers
