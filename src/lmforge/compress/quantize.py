"""One entry point per compression method: `compress_model(model, method)`.

The int8 transform itself lives with the model format (`lmforge.models.export`), because
loading an int8 model folder must rebuild exactly the same modules; this module picks the
transform by name and refuses unknown names with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.export import is_quantized, quantize_int8_dynamic

# method name (CompressConfig.method, config.json "quantization") -> transform
COMPRESSION_METHODS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "int8_dynamic": quantize_int8_dynamic,
}


def compress_model(model: nn.Module, method: str) -> nn.Module:
    """A compressed copy of a float `model`; the original is left untouched.

    int8_dynamic: every nn.Linear stores int8 weights (per-tensor scale and zero point) and
    quantises its input activations on the fly; embeddings and LayerNorms stay float32.
    """
    transform = COMPRESSION_METHODS.get(method)
    if transform is None:
        raise ConfigError(
            f"unknown compression method {method!r}; use one of {sorted(COMPRESSION_METHODS)}"
        )
    if is_quantized(model):
        raise ConfigError(
            "the model is already quantised; compress the float (production) version instead"
        )
    return transform(model)
