"""What compression buys and costs: size, CPU latency and accuracy, measured the same way for
every variant.

Size is the serialized weights: the bytes of `model.safetensors` in the model folder (of
`model.onnx` in an ONNX export). A float folder stores float32 matrices; an int8 folder stores
int8 matrices plus their scale and zero point (see `lmforge.models.export`), so both numbers
are what a deployment ships and loads.
`state_dict_bytes` cross-checks it in memory: every tensor of the live model's state_dict, a
quantised weight counted at one byte per element plus its scales and zero points.

Latency is end to end (tokenise + forward + softmax) through `predict_proba` (of a
`TextClassifier` or an ONNX Runtime backend), the median of `repeats` timed calls after
warmup, with torch pinned to a fixed thread count (an ONNX Runtime session gets its count
when it is created).
Variants are timed in turn on the same batches, so drift on a shared machine (another
process, CPU frequency) hits them alike instead of favouring whichever ran first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import InputDataError

BYTES_PER_MB = 1_000_000  # MB = 10^6 bytes, like a file manager shows
WARMUP_CALLS = 3


def file_size_mb(model_dir: str | Path) -> float:
    """Serialized weights of a model folder, in MB: its `model.safetensors`, or the
    `model.onnx` of an ONNX export (weights plus a graph of a few kB)."""
    model_dir = Path(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file() and (model_dir / "model.onnx").is_file():
        weights = model_dir / "model.onnx"
    return weights.stat().st_size / BYTES_PER_MB


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor in the model's state_dict, each storage counted once.

    A quantised tensor counts its integer values plus its scale(s) and zero point(s); the
    packed params of an int8 Linear appear in the state_dict as a (weight, bias) tuple.
    """
    seen: set[int] = set()

    def size(value: Any) -> int:
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        if not isinstance(value, torch.Tensor):
            return 0  # e.g. the dtype entry of packed params
        if value.is_quantized:
            n = value.numel() * value.element_size()
            if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scales = value.q_per_channel_scales()
                points = value.q_per_channel_zero_points()
                return n + scales.numel() * 8 + points.numel() * 8
            return n + 8 + 8  # one float64 scale, one int64 zero point
        key = value.untyped_storage().data_ptr()
        if key in seen and key != 0:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()

    return sum(size(v) for v in model.state_dict().values())


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Pin torch's intra-op thread count for a measurement, then restore it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def batches_for(texts: Sequence[str], batch_size: int, count: int) -> list[list[str]]:
    """`count` consecutive windows of `batch_size` texts, wrapping around the list."""
    if not texts:
        raise InputDataError("no texts to time the model on; the eval split is empty")
    n = len(texts)
    return [[texts[(i * batch_size + j) % n] for j in range(batch_size)] for i in range(count)]


def measure_latency_ms(
    classifiers: Mapping[str, Any],
    texts: Sequence[str],
    batch_sizes: Sequence[int],
    repeats: int,
    threads: int,
) -> dict[str, dict[int, float]]:
    """Median ms per `predict_proba` call, by variant name and batch size."""
    timings: dict[str, dict[int, list[float]]] = {
        name: {bs: [] for bs in batch_sizes} for name in classifiers
    }
    with torch_threads(threads):
        for bs in batch_sizes:
            batches = batches_for(texts, bs, WARMUP_CALLS + repeats)
            for i, batch in enumerate(batches):
                for name, clf in classifiers.items():
                    started = time.perf_counter()
                    clf.predict_proba(batch, batch_size=bs)
                    elapsed = (time.perf_counter() - started) * 1000.0
                    if i >= WARMUP_CALLS:
                        timings[name][bs].append(elapsed)
    return {
        name: {bs: statistics.median(samples) for bs, samples in per_bs.items()}
        for name, per_bs in timings.items()
    }


def measure_accuracy(classifier: Any, texts: Sequence[str], labels: Sequence[str]) -> float:
    """Share of texts whose predicted label equals the gold one."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise InputDataError("no labelled texts to measure accuracy on")
    probs = classifier.predict_proba(list(texts))
    predicted = [classifier.labels[int(i)] for i in probs.argmax(axis=1)]
    return sum(p == g for p, g in zip(predicted, labels, strict=True)) / len(labels)


def load_eval_split(path: str | Path, limit: int = 0) -> tuple[list[str], list[str]]:
    """(texts, labels) of the labelled rows of `train/eval.parquet`; `limit` > 0 caps them."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputDataError(
            f"eval split not found: {path}; run the train stage first (`lmforge train`)"
        )
    table = pq.read_table(path)
    missing = [c for c in ("text", "label") if c not in table.column_names]
    if missing:
        raise InputDataError(f"{path} lacks the columns {missing}; expected id, text, label")
    rows = zip(table.column("text").to_pylist(), table.column("label").to_pylist(), strict=True)
    pairs = [(t, str(g)) for t, g in rows if t is not None and g is not None]
    if limit > 0:
        pairs = pairs[:limit]
    if not pairs:
        raise InputDataError(f"{path} has no labelled rows; accuracy cannot be measured")
    return [t for t, _ in pairs], [g for _, g in pairs]
