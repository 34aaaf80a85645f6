"""Class probabilities for many texts, batched by token length; the rows for an API answer.

Every inference engine (PyTorch eager, ONNX Runtime) tokenises the same way and batches the
same way; only the forward pass differs, so it is passed in as `forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.text.tokenizer import encode_texts, pad_batch

Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, mask) -> probs [B, C]


def probs_by_length(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_len: int,
    pad_id: int,
    n_classes: int,
    forward: Forward,
    batch_size: int = 64,
    error: type[LmforgeError] = LmforgeError,
) -> np.ndarray:
    """float32 [N, C] probabilities, rows in the order of `texts`.

    Texts of similar token length share a batch, so less compute goes to padding; each row is
    written back at its text's place. Bad arguments raise `error` (the caller's own type).
    """
    if isinstance(texts, str):
        raise error("predict takes a list of texts, not one string; wrap it")
    if batch_size < 1:
        raise error(f"batch_size={batch_size}: use at least 1")
    n = len(texts)
    out = np.zeros((n, n_classes), dtype=np.float32)
    if n == 0:
        return out
    ids = encode_texts(tokenizer, texts, max_len)
    order = sorted(range(n), key=lambda i: len(ids[i]))
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in rows], pad_id)
        out[rows] = forward(input_ids, mask)
    return out


def prediction_rows(labels: Sequence[str], probs: np.ndarray) -> list[dict[str, Any]]:
    """One `{"label": str, "probs": {label: float}}` per row, plain Python types."""
    return [
        {
            "label": labels[int(row.argmax())],
            "probs": {label: float(p) for label, p in zip(labels, row, strict=True)},
        }
        for row in probs
    ]
