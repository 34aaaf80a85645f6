"""Models and the model directory format (see docs/workspace.md)."""

from lmforge.models.decoder import DECODER_PRESETS, DecoderConfig, DecoderLM, decoder_config
from lmforge.models.encoder import EncoderClassifier, EncoderConfig
from lmforge.models.export import (
    ModelFormatError,
    load_model_dir,
    quantize_int8_dynamic,
    save_model_dir,
)

__all__ = [
    "DECODER_PRESETS",
    "DecoderConfig",
    "DecoderLM",
    "EncoderClassifier",
    "EncoderConfig",
    "ModelFormatError",
    "decoder_config",
    "load_model_dir",
    "quantize_int8_dynamic",
    "save_model_dir",
]
