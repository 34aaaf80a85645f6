"""Inference backends: one `predict(texts)` over PyTorch eager or ONNX Runtime.

`load_backend(model_dir)` picks by what the folder holds: ONNX Runtime for a folder with
`model.onnx` (written by `lmforge.compress.onnx_export`), PyTorch (`TextClassifier`) for one
with `model.safetensors`. Both tokenise with the same code (`encode_texts` + `pad_batch`),
batch texts of similar length together and return rows in input order, so the two backends
differ only in the engine that runs the forward pass.

Both are safe to call from several threads: neither keeps mutable state between calls
(ONNX Runtime's `InferenceSession.run` is thread-safe).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.text.length_batches import prediction_rows, probs_by_length

BACKEND_KINDS = ("auto", "torch", "onnx")
ONNX_FILE = "model.onnx"
TORCH_FILE = "model.safetensors"
_PIP_HINT = "pip install 'lmforge[onnx]'"


class BackendError(LmforgeError):
    """A backend cannot be loaded: no such folder, wrong kind for it, or a missing package."""


class Backend(Protocol):
    kind: str  # "torch" | "onnx"
    labels: list[str]
    quantization: str | None  # "int8_dynamic", "int8-onnx" or None

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """One `{"label": str, "probs": {label: float}}` per text, plain Python types."""
        ...


def default_threads(workers: int = 1) -> int:
    """Intra-op threads per worker so that `workers` processes share the cores evenly."""
    if workers < 1:
        raise BackendError(f"workers={workers}: use 1 or more")
    return max(1, (os.cpu_count() or 1) // workers)


class TorchBackend:
    """PyTorch eager inference through `TextClassifier` (float or int8_dynamic weights)."""

    kind = "torch"

    def __init__(self, classifier: Any, threads: int) -> None:
        self.classifier = classifier
        self.labels: list[str] = list(classifier.labels)
        self.quantization: str | None = classifier.quantization
        self.threads = threads

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, float32 [N, C], rows in the order of `texts`."""
        return self.classifier.predict_proba(texts, batch_size=batch_size)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        return self.classifier.predict(texts, batch_size=batch_size)


class OnnxBackend:
    """ONNX Runtime inference of a folder written by `lmforge.compress.onnx_export`."""

    kind = "onnx"

    def __init__(self, session: Any, tokenizer: Any, config: dict[str, Any]) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.labels: list[str] = list(config["labels"])
        self.quantization: str | None = config.get("quantization")
        self.max_len = int(config["model"]["max_len"])
        self.pad_id = int(config["pad_id"])
        self.threads = int(session.get_session_options().intra_op_num_threads)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, float32 [N, C], rows in the order of `texts`."""

        def forward(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            (logits,) = self.session.run(
                ["logits"], {"input_ids": input_ids, "attention_mask": mask}
            )
            return _softmax(logits.astype(np.float32, copy=False))

        return probs_by_length(
            self.tokenizer,
            texts,
            max_len=self.max_len,
            pad_id=self.pad_id,
            n_classes=len(self.labels),
            forward=forward,
            batch_size=batch_size,
            error=BackendError,
        )

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        return prediction_rows(self.labels, self.predict_proba(texts, batch_size=batch_size))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)  # no overflow in exp
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def load_backend(
    model_dir: str | Path,
    kind: Literal["auto", "torch", "onnx"] = "auto",
    threads: int | None = None,
) -> TorchBackend | OnnxBackend:
    """Load a model folder for inference.

    `kind="auto"` uses ONNX Runtime when the folder holds `model.onnx`, else PyTorch.
    `threads` is the intra-op thread count: `torch.set_num_threads` (process-wide) for torch,
    the session's `intra_op_num_threads` for ONNX Runtime (which also runs one op at a time,
    inter-op 1, so a worker uses exactly `threads` cores). None keeps torch's current count
    and gives ONNX Runtime that same count, so switching engines keeps the parallelism.
    """
    model_dir = Path(model_dir)
    if kind not in BACKEND_KINDS:
        raise BackendError(f"backend kind {kind!r}: use one of {list(BACKEND_KINDS)}")
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise BackendError(f"threads={threads}: use a positive count or None (the default)")
    if not model_dir.is_dir():
        raise BackendError(
            f"model directory not found: {model_dir}; pass a folder written by lmforge "
            "(a registry version's path, or the train/compress stage's model folder)"
        )
    has_onnx = (model_dir / ONNX_FILE).is_file()
    if kind == "auto":
        kind = "onnx" if has_onnx else "torch"
    if kind == "onnx":
        if not has_onnx:
            raise BackendError(
                f"{model_dir} holds no {ONNX_FILE}, so it cannot run on ONNX Runtime; export "
                "one with lmforge.compress.onnx_export.export_onnx(MODEL_DIR, OUT_DIR) or set "
                "compress.onnx: true and run `lmforge compress`, or use backend kind torch/auto"
            )
        return _load_onnx(model_dir, threads)
    if has_onnx and not (model_dir / TORCH_FILE).is_file():
        raise BackendError(
            f"{model_dir} is an ONNX export (no {TORCH_FILE}); load it with backend kind "
            "onnx or auto"
        )
    return _load_torch(model_dir, threads)


def _load_torch(model_dir: Path, threads: int | None) -> TorchBackend:
    import torch

    from lmforge.inference import TextClassifier

    classifier = TextClassifier.load(model_dir, threads=threads)
    return TorchBackend(classifier, threads=torch.get_num_threads())


def _load_onnx(model_dir: Path, threads: int | None) -> OnnxBackend:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError(
            f"{model_dir} is an ONNX model but onnxruntime is not installed; {_PIP_HINT}"
        ) from exc
    from lmforge.text.tokenizer import load_tokenizer

    config = _read_onnx_config(model_dir)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: ORT's warnings are about graph internals
    try:
        session = ort.InferenceSession(
            str(model_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own (non-Python-hierarchy) error types
        raise BackendError(
            f"ONNX Runtime cannot load {model_dir / ONNX_FILE}: {exc}; re-export the folder"
        ) from exc
    names = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if names != {"input_ids", "attention_mask"} or "logits" not in outputs:
        raise BackendError(
            f"{model_dir / ONNX_FILE} takes {sorted(names)} and gives {sorted(outputs)}; "
            "expected input_ids, attention_mask -> logits (export it with export_onnx)"
        )
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    return OnnxBackend(session, tokenizer, config)


def _read_onnx_config(model_dir: Path) -> dict[str, Any]:
    from lmforge.workspace import read_json

    path = model_dir / "config.json"
    if not path.is_file():
        raise BackendError(f"{path} not found; an ONNX model folder needs its config.json")
    try:
        config = read_json(path)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BackendError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model", {}), dict):
        raise BackendError(f"{path} is not a model config (a JSON object); re-export the folder")
    absent = [k for k in ("labels", "pad_id", "model") if k not in config]
    if "model" in config and "max_len" not in config["model"]:
        absent.append("model.max_len")
    if absent:
        raise BackendError(f"{path} lacks the keys {absent}; re-export the folder")
    return config
