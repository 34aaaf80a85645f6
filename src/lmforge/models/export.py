"""The model directory: `model.safetensors` + `config.json` + `tokenizer.json`, never pickle.

An int8-dynamic model is stored as int8 weight matrices with their scale and zero point, so
the file is about four times smaller and loads back to the very same quantised weights:

    NAME.weight             int8 [out, in]     (float32 for a float model)
    NAME.weight_scale       float64 [1] or [out]
    NAME.weight_zero_point  int64   [1] or [out]
    NAME.bias               float32 [out]
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.encoder import EncoderClassifier, EncoderConfig
from lmforge.text.tokenizer import load_tokenizer, save_tokenizer
from lmforge.workspace import atomic_path, atomic_write_json, read_json

ARCHITECTURE = "encoder-classifier"
QUANTIZATIONS = ("int8_dynamic",)
MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json")
_MODEL_KEYS = ("d_model", "n_layers", "n_heads", "d_ff", "max_len", "dropout")
# Written by every save; a folder from before they existed loads with the original defaults.
_OPTIONAL_MODEL_KEYS = (
    "norm_position",
    "embed_norm",
    "type_vocab_size",
    "norm_eps",
    "pooling",
    "activation",
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EncoderConfig)}
# Older folders hold one fused attention projection; it is now q, k and v.
_FUSED_QKV = re.compile(r"^(blocks\.\d+\.attn)\.qkv\.(weight|bias|weight_scale|weight_zero_point)$")


class ModelFormatError(LmforgeError):
    """A model directory is missing a file, names another architecture, or does not match."""


def _dynamic_linear_type() -> type[nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return DynamicQuantizedLinear


def is_quantized(model: nn.Module) -> bool:
    qlinear = _dynamic_linear_type()
    return any(isinstance(m, qlinear) for m in model.modules())


def check_quantization(quantization: str | None) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ModelFormatError(
            f"unknown quantization {quantization!r}; use one of {list(QUANTIZATIONS)} or None"
        )


def quantize_int8_dynamic(model: EncoderClassifier) -> EncoderClassifier:
    """A copy of `model` whose nn.Linear layers run int8 weights with dynamic activations."""
    model = model.eval()
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)


def _quantized_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Safetensors entries for every dynamic int8 Linear, and per-layer scheme metadata."""
    tensors: dict[str, torch.Tensor] = {}
    schemes: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _dynamic_linear_type()):
            continue
        weight, bias = module.weight(), module.bias()
        tensors[f"{name}.weight"] = weight.int_repr().contiguous()
        if weight.qscheme() == torch.per_tensor_affine:
            scale = torch.tensor([weight.q_scale()], dtype=torch.float64)
            zero_point = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        elif weight.qscheme() == torch.per_channel_affine:
            if weight.q_per_channel_axis() != 0:
                raise ModelFormatError(f"layer {name}: only per-output-channel scales are stored")
            scale = weight.q_per_channel_scales().to(torch.float64)
            zero_point = weight.q_per_channel_zero_points().to(torch.int64)
        else:
            raise ModelFormatError(f"layer {name}: unsupported qscheme {weight.qscheme()}")
        tensors[f"{name}.weight_scale"] = scale.contiguous()
        tensors[f"{name}.weight_zero_point"] = zero_point.contiguous()
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().float().contiguous()
        schemes[f"qscheme.{name}"] = str(weight.qscheme()).removeprefix("torch.")
    return tensors, schemes


def model_tensors(model: EncoderClassifier) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata `model.safetensors` holds for this (possibly int8) model."""
    tensors, metadata = _quantized_tensors(model)
    quantized = {k.removeprefix("qscheme.") for k in metadata}
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if any(owner == q or owner.startswith(q + ".") for q in quantized):
            continue  # packed params, activation scale/zero point: covered above or unused
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
    metadata["format"] = "pt"
    return tensors, metadata


def build_config(
    model: EncoderClassifier, labels: list[str], quantization: str | None
) -> dict[str, Any]:
    cfg = model.config
    return {
        "architecture": ARCHITECTURE,
        "model": {k: getattr(cfg, k) for k in (*_MODEL_KEYS, *_OPTIONAL_MODEL_KEYS)},
        "vocab_size": cfg.vocab_size,
        "pad_id": cfg.pad_id,
        "labels": list(labels),
        "quantization": quantization,
    }


def save_model_dir(
    out_dir: str | Path,
    model: EncoderClassifier,
    tokenizer: Tokenizer,
    labels: list[str],
    quantization: str | None = None,
) -> Path:
    """Write the three files into `out_dir`, replacing any folder there in one rename.

    With `quantization="int8_dynamic"` a float model is quantised first; an already
    quantised model is stored as is.
    """
    check_quantization(quantization)
    out_dir = Path(out_dir)
    if len(labels) != model.config.n_classes:
        raise ModelFormatError(
            f"{len(labels)} labels given for a model with {model.config.n_classes} classes; "
            "pass exactly one label per output"
        )
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ModelFormatError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model embeds only "
            f"{model.config.vocab_size}; save the tokenizer the model was trained with"
        )
    quantized = is_quantized(model)
    if quantized and quantization is None:
        raise ModelFormatError("the model is int8-quantised; pass quantization='int8_dynamic'")
    if quantization == "int8_dynamic" and not quantized:
        model = quantize_int8_dynamic(model)
    tensors, metadata = model_tensors(model)

    staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with atomic_path(staging / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        atomic_write_json(staging / "config.json", build_config(model, labels, quantization))
        save_tokenizer(tokenizer, staging / "tokenizer.json")
        _swap_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _swap_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; readers see the old folder or the new one, never a mix."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """Read and check `config.json`; names the missing file or wrong architecture."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFormatError(f"model directory not found: {model_dir}")
    missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ModelFormatError(
            f"model directory {model_dir} lacks {missing}; it needs {list(MODEL_FILES)} "
            "(write it with lmforge.models.save_model_dir)"
        )
    try:
        config = read_json(model_dir / "config.json")
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{model_dir / 'config.json'} is not valid JSON: {exc}") from exc
    arch = config.get("architecture") if isinstance(config, dict) else None
    if arch != ARCHITECTURE:
        raise ModelFormatError(
            f"{model_dir / 'config.json'} names architecture {arch!r}; "
            f"this loader reads {ARCHITECTURE!r} only"
        )
    absent = [k for k in ("model", "vocab_size", "pad_id", "labels") if k not in config]
    absent += [f"model.{k}" for k in _MODEL_KEYS if k not in config.get("model", {})]
    if absent:
        raise ModelFormatError(f"{model_dir / 'config.json'} lacks the keys {absent}")
    check_quantization(config.get("quantization"))
    return config


def encoder_config_from(config: dict[str, Any]) -> EncoderConfig:
    model = config["model"]
    try:
        return EncoderConfig(
            vocab_size=int(config["vocab_size"]),
            n_classes=len(config["labels"]),
            pad_id=int(config["pad_id"]),
            **{k: model[k] for k in _MODEL_KEYS},
            **{k: model.get(k, _DEFAULTS[k]) for k in _OPTIONAL_MODEL_KEYS},
        )
    except LmforgeError as exc:  # a ConfigError from a hand-edited config.json
        raise ModelFormatError(f"config.json: {exc}") from exc


def split_fused_qkv(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an older folder's fused `attn.qkv.*` tensors to today's `attn.q/k/v.*`.

    The fused weight stacks q, k and v by output rows, so splitting rows is exact, for float
    weights and for int8 ones with their per-tensor (shared) or per-row (split) scales.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = _FUSED_QKV.match(key)
        if match is None:
            out[key] = value
            continue
        prefix, suffix = match.groups()
        if suffix in ("weight_scale", "weight_zero_point") and value.numel() == 1:
            parts = (value, value.clone(), value.clone())  # per-tensor: q, k, v share it
        elif value.shape[0] % 3:
            raise ModelFormatError(
                f"fused {key} has {value.shape[0]} rows, not 3 x d_model; the folder is damaged"
            )
        else:
            parts = value.chunk(3, dim=0)
        for name, part in zip("qkv", parts, strict=True):
            out[f"{prefix}.{name}.{suffix}"] = part.contiguous()
    return out


def load_model_dir(
    model_dir: str | Path, quantization: str | None = "config"
) -> tuple[EncoderClassifier, Tokenizer, dict[str, Any]]:
    """Load (model in eval mode, tokenizer, config dict) from a model directory.

    `quantization="config"` keeps what the folder holds; None gives a float model (an int8
    folder is dequantised); "int8_dynamic" quantises a float folder after loading.
    """
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    stored = config.get("quantization")
    wanted = stored if quantization == "config" else quantization
    check_quantization(wanted)
    try:
        tensors = load_file(str(model_dir / "model.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise ModelFormatError(f"cannot read {model_dir / 'model.safetensors'}: {exc}") from exc
    tensors = split_fused_qkv(tensors)
    model = EncoderClassifier(encoder_config_from(config))
    model.eval()
    if stored == "int8_dynamic" and wanted == "int8_dynamic":
        model = _load_quantized(model, tensors, model_dir)
    else:
        if stored == "int8_dynamic":
            tensors = _dequantize(tensors)
        _load_float(model, tensors, model_dir)
        if wanted == "int8_dynamic":
            model = quantize_int8_dynamic(model)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    return model, tokenizer, config


def _load_float(model: nn.Module, tensors: dict[str, torch.Tensor], model_dir: Path) -> None:
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(
            f"{model_dir / 'model.safetensors'} does not match config.json: {exc}"
        ) from exc


def _dequantize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        if key.endswith((".weight_scale", ".weight_zero_point")):
            continue
        scale_key = key.removesuffix(".weight") + ".weight_scale"
        if key.endswith(".weight") and scale_key in tensors:
            zero_point = tensors[scale_key.replace("_scale", "_zero_point")]
            scale = tensors[scale_key]
            if scale.numel() > 1:  # per output channel
                scale, zero_point = scale[:, None], zero_point[:, None]
            value = ((value.to(torch.float64) - zero_point) * scale).to(torch.float32)
        out[key] = value
    return out


def _load_quantized(
    model: EncoderClassifier, tensors: dict[str, torch.Tensor], model_dir: Path
) -> EncoderClassifier:
    """Load the float tensors into `model`, quantise it, then put the stored int8 weights in."""
    where = model_dir / "model.safetensors"
    int8_layers = sorted(k.removesuffix(".weight_scale") for k in tensors if k.endswith("_scale"))
    owned = {
        f"{n}.{s}"
        for n in int8_layers
        for s in ("weight", "weight_scale", "weight_zero_point", "bias")
    }
    try:
        missing, unexpected = model.load_state_dict(
            {k: v for k, v in tensors.items() if k not in owned}, strict=False
        )
    except RuntimeError as exc:
        raise ModelFormatError(f"{where} does not match config.json: {exc}") from exc
    missing = [k for k in missing if k not in owned]
    if missing or unexpected:
        raise ModelFormatError(
            f"{where} does not match config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    qmodel = quantize_int8_dynamic(model)
    qlayers = {n: m for n, m in qmodel.named_modules() if isinstance(m, _dynamic_linear_type())}
    if sorted(qlayers) != int8_layers:
        raise ModelFormatError(
            f"{where} holds int8 layers {int8_layers[:5]}, the model has {sorted(qlayers)[:5]}"
        )
    for name, module in qlayers.items():
        int8 = tensors[f"{name}.weight"]
        scale = tensors[f"{name}.weight_scale"]
        zero_point = tensors[f"{name}.weight_zero_point"]
        if tuple(int8.shape) != (module.out_features, module.in_features):
            raise ModelFormatError(
                f"{where}: layer {name} is {tuple(int8.shape)}, config.json implies "
                f"{(module.out_features, module.in_features)}"
            )
        # Values on the int8 grid survive the float round trip exactly.
        grid = ((int8.to(torch.float64) - zero_point[:, None]) * scale[:, None]).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantize_per_* deprecation notice
            if scale.numel() == 1:
                qweight = torch.quantize_per_tensor(
                    grid, float(scale), int(zero_point), torch.qint8
                )
            else:
                qweight = torch.quantize_per_channel(
                    grid, scale, zero_point, axis=0, dtype=torch.qint8
                )
        module.set_weight_bias(qweight, tensors.get(f"{name}.bias"))
    return qmodel
