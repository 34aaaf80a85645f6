"""Export a model folder to ONNX (fp32, optionally int8) for ONNX Runtime serving.

An ONNX model folder holds the same files a PyTorch folder does, with `model.onnx` in place
of `model.safetensors`, so it registers in the model registry like any other version:

    model.onnx      inputs input_ids, attention_mask (int64 [batch, seq]) -> logits [batch, C]
    config.json     the source's config plus "format": "onnx" and "quantization"
                    (null for fp32, "int8-onnx" for the int8 variant)
    tokenizer.json  copied from the source: ONNX Runtime gets exactly the ids torch gets

The int8 variant is ONNX Runtime's dynamic quantisation of the fp32 graph: the weight matrices
of every MatMul with a constant weight (every nn.Linear of the encoder) are stored as int8 and
activations are quantised on the fly, the same layers `int8_dynamic` quantises in PyTorch;
embeddings and LayerNorms stay float32.

Every export is checked before it is kept: ONNX Runtime must reproduce the PyTorch logits on
probe batches of shapes other than the one traced, so a graph with a frozen batch or sequence
length never reaches the registry.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.workspace import atomic_write_json, read_json

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
INT8_ONNX = "int8-onnx"  # config.json "quantization" of the int8 variant
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
# Opset 18 lowers attention to MatMul/Softmax, which every onnxruntime>=1.18 runs.
OPSET = 18
# A protobuf message cannot exceed 2 GiB; bigger models would need external data files,
# which the registry (safetensors/onnx/json/txt only) does not accept.
_PROTOBUF_LIMIT = 2**31 - 1
_PIP_HINT = "install the ONNX extra: pip install 'lmforge[onnx]'"
# Export self-check: ORT vs torch logits on the probe batches.
_CHECK_ATOL = 1e-3
_CHECK_RTOL = 1e-3


class OnnxExportError(LmforgeError):
    """An ONNX export cannot be made: missing packages, a folder of the wrong kind, a bad graph."""


def require_onnx() -> None:
    """Fail early, with the install command, when the ONNX packages are missing."""
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise OnnxExportError(f"ONNX export needs {missing}, which are not installed; {_PIP_HINT}")


def export_onnx(model_dir: str | Path, out_dir: str | Path, int8: bool = False) -> Path:
    """Export a PyTorch model folder to an ONNX folder at `out_dir` (replaced atomically).

    `int8=True` stores ONNX Runtime's dynamic int8 quantisation of the fp32 graph. An int8
    PyTorch folder is dequantised first, so the exported graph is always a float one.
    """
    from lmforge.models.export import load_model_dir

    require_onnx()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if (model_dir / ONNX_FILE).is_file() and not (model_dir / "model.safetensors").is_file():
        raise OnnxExportError(
            f"{model_dir} is already an ONNX export; export from the PyTorch folder it came "
            "from, or use quantize_onnx() to make its int8 variant"
        )
    model, _, config = load_model_dir(model_dir, quantization=None)
    _check_size(model)
    onnx_config = {**config, "format": "onnx", "quantization": INT8_ONNX if int8 else None}

    def write(staging: Path) -> None:
        fp32_path = staging / ONNX_FILE
        _export_graph(model, fp32_path)
        _check_against_torch(model, fp32_path, config)
        if int8:
            int8_path = staging / f".{ONNX_FILE}.int8"
            _quantize_graph(fp32_path, int8_path)
            os.replace(int8_path, fp32_path)

    return _write_folder(out_dir, write, onnx_config, model_dir / TOKENIZER_FILE)


def quantize_onnx(onnx_dir: str | Path, out_dir: str | Path) -> Path:
    """The int8 variant of an fp32 ONNX folder, without exporting from PyTorch again."""
    require_onnx()
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    if not (onnx_dir / ONNX_FILE).is_file():
        raise OnnxExportError(
            f"{onnx_dir} holds no {ONNX_FILE}; make one first with export_onnx(MODEL_DIR, OUT)"
        )
    config = read_json(onnx_dir / CONFIG_FILE)
    if config.get("quantization") is not None:
        raise OnnxExportError(
            f"{onnx_dir} is already quantised ({config['quantization']!r}); "
            "quantise the fp32 ONNX folder instead"
        )

    def write(staging: Path) -> None:
        _quantize_graph(onnx_dir / ONNX_FILE, staging / ONNX_FILE)

    return _write_folder(
        out_dir, write, {**config, "quantization": INT8_ONNX}, onnx_dir / TOKENIZER_FILE
    )


# --- the steps ---------------------------------------------------------------------------------


def _check_size(model: torch.nn.Module) -> None:
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if nbytes >= _PROTOBUF_LIMIT:
        raise OnnxExportError(
            f"the model holds {nbytes / 1e9:.1f} GB of weights, over the 2 GB an ONNX file can "
            "hold without external data; serve it with the PyTorch backend (backend kind torch)"
        )


def _example_inputs(max_len: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Batch 2 and length > 1: torch.export specialises dimensions of size 0 or 1, so an
    # example of that size would freeze the axis instead of keeping it dynamic.
    seq = max(2, min(8, max_len))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, seq), generator=generator)
    mask = torch.ones(2, seq, dtype=torch.int64)
    mask[1, seq // 2 :] = 0  # a padded row, so the masking path is the one traced
    return ids, mask


def _export_graph(model: torch.nn.Module, path: Path) -> None:
    """Write the fp32 graph with dynamic batch and sequence axes.

    The torch.export-based exporter (`dynamo=True`) is used, not the TorchScript tracer
    (`dynamo=False`). Both give correct graphs for this encoder on torch 2.13, but the tracer
    is deprecated since torch 2.9 and freezes Python branches: the encoder's `seq_len >
    max_len` check became a constant with a TracerWarning. torch.export turns that check into
    the bound `seq <= max_len` on a symbolic axis instead. The cost is time: a few seconds per
    export where tracing takes well under one.
    """
    cfg = model.config
    ids, mask = _example_inputs(cfg.max_len, cfg.vocab_size)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=cfg.max_len)
    with _quiet_exporter():
        program = torch.onnx.export(
            model.eval(),
            (ids, mask),
            None,
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            opset_version=OPSET,
            verbose=False,
        )
    if program is None:  # the API returns the program for dynamo=True; guard the contract
        raise OnnxExportError("torch.onnx.export returned no program; upgrade torch")
    proto = program.model_proto
    # The exporter annotates each node with the Python stack trace that produced it: local
    # file paths that double the file size and have no business in a shipped artifact.
    for node in proto.graph.node:
        del node.metadata_props[:]
    import onnx

    onnx.save_model(proto, str(path))


def _quantize_graph(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporter():
        # MatMul only: every nn.Linear (the head's Gemm is rewritten to one), the layers torch's
        # int8_dynamic quantises, so the two int8 variants compare like for like. Matmuls of
        # two activations (attention scores) stay float: MatMulConstBOnly is ORT's default.
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
        )


def _check_against_torch(model: torch.nn.Module, path: Path, config: dict[str, Any]) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    max_len, vocab = int(config["model"]["max_len"]), int(config["vocab_size"])
    generator = torch.Generator().manual_seed(1)
    # Shapes other than the traced (2, 8): one row, and more rows at another length.
    for rows, seq in ((1, min(3, max_len)), (5, max_len)):
        ids = torch.randint(0, vocab, (rows, seq), generator=generator)
        mask = torch.ones(rows, seq, dtype=torch.int64)
        mask[-1, max(1, seq // 3) :] = 0
        with torch.inference_mode():
            want = model(ids, mask).float().numpy()
        got = session.run([OUTPUT_NAME], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        if got[0].shape != want.shape or not np.allclose(
            got[0], want, atol=_CHECK_ATOL, rtol=_CHECK_RTOL
        ):
            worst = float(np.abs(got[0] - want).max()) if got[0].shape == want.shape else "n/a"
            raise OnnxExportError(
                f"the exported graph disagrees with PyTorch on a batch of shape {(rows, seq)} "
                f"(max |diff| {worst}); the model uses an op the exporter mistranslates, serve "
                "it with the PyTorch backend"
            )


def _write_folder(
    out_dir: Path,
    write_model: Callable[[Path], None],
    config: dict[str, Any],
    tokenizer: Path,
) -> Path:
    """Build the folder in a staging dir beside `out_dir`, then swap it in by renames."""
    if not tokenizer.is_file():
        raise OnnxExportError(f"{tokenizer} not found; the source folder is incomplete")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write_model(staging)
        atomic_write_json(staging / CONFIG_FILE, config)
        shutil.copy2(tokenizer, staging / TOKENIZER_FILE)
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


class _DropQuantHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' progress chatter and advice that does not apply here.

    torch.export warns about optional torchvision ops; onnxruntime's quantiser advises a
    pre-processing pass (shape inference + graph fusions) that dynamic MatMul quantisation of
    this graph does not need.
    """
    hint = _DropQuantHint()
    root = logging.getLogger()
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    root.addFilter(hint)
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(hint)
        exporter_log.setLevel(level)
