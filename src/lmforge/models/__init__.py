"""Models and the model directory format (see docs/workspace.md)."""

from lmforge.models.encoder import EncoderClassifier, EncoderConfig
from lmforge.models.export import (
    ModelFormatError,
    load_model_dir,
    quantize_int8_dynamic,
    save_model_dir,
)

__all__ = [
    "EncoderClassifier",
    "EncoderConfig",
    "ModelFormatError",
    "load_model_dir",
    "quantize_int8_dynamic",
    "save_model_dir",
]
