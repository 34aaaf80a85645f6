"""Load a model directory and classify texts: the one object the server, compress and bench use.

Prediction holds no mutable state (eval mode, `torch.inference_mode`, a tokenizer that is
only read), so one `TextClassifier` can serve calls from a worker thread or several.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Tokenizer

from lmforge.errors import LmforgeError
from lmforge.models.encoder import EncoderClassifier
from lmforge.models.export import load_model_dir
from lmforge.text.length_batches import prediction_rows, probs_by_length
from lmforge.text.tokenizer import encode_texts, pad_batch


class TextClassifier:
    """A trained classifier: `predict_proba(texts) -> [N, C]`, `predict(texts) -> dicts`."""

    def __init__(
        self, model: EncoderClassifier, tokenizer: Tokenizer, config: dict[str, Any]
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.labels: list[str] = list(config["labels"])
        self.max_len: int = int(config["model"]["max_len"])
        self.pad_id: int = int(config["pad_id"])

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        quantization: str | Literal["config"] | None = "config",
        threads: int | None = None,
    ) -> TextClassifier:
        """Load a model folder; `quantization="config"` applies what config.json names.

        `threads` sets torch's intra-op thread count for the whole process.
        """
        if threads is not None:
            if threads < 1:
                raise LmforgeError(f"threads={threads}: use a positive count or None")
            torch.set_num_threads(threads)
        model, tokenizer, config = load_model_dir(model_dir, quantization=quantization)
        if quantization != "config":  # record what is applied, not what the folder holds
            config = {**config, "quantization": quantization}
        return cls(model, tokenizer, config)

    @property
    def quantization(self) -> str | None:
        return self.config.get("quantization")

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), int64 [B, T], padded to the longest text in the batch."""
        ids, mask = pad_batch(encode_texts(self.tokenizer, texts, self.max_len), self.pad_id)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, float32 [N, C], rows in the order of `texts`."""

        def forward(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            logits = self.model(torch.from_numpy(input_ids), torch.from_numpy(mask))
            return torch.softmax(logits.float(), dim=-1).numpy()

        with torch.inference_mode():
            return probs_by_length(
                self.tokenizer,
                texts,
                max_len=self.max_len,
                pad_id=self.pad_id,
                n_classes=len(self.labels),
                forward=forward,
                batch_size=batch_size,
            )

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """One `{"label": str, "probs": {label: float}}` per text."""
        return prediction_rows(self.labels, self.predict_proba(texts, batch_size=batch_size))
