"""The classification task as the generic trainer sees it: a loss function and an evaluator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def classification_loss(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, int]:
    """Cross-entropy over the batch; tokens counted are the real (unpadded) ones."""
    logits = model(batch["input_ids"], batch["attention_mask"])  # (B, C)
    loss = F.cross_entropy(logits.float(), batch["labels"])
    return loss, int(batch["attention_mask"].sum())


@torch.no_grad()
def predict_classes(
    model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(predicted class ids, true class ids, mean loss) over fixed batches, in eval mode."""
    was_training = model.training
    model.eval()
    preds, golds, loss_sum, n = [], [], 0.0, 0
    try:
        for batch in batches:
            logits = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, C)
            loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            n += len(batch["labels"])
            preds.append(logits.argmax(-1))
            golds.append(batch["labels"])
    finally:
        model.train(was_training)
    return torch.cat(preds), torch.cat(golds), loss_sum / max(n, 1)


def make_evaluator(
    batches: Sequence[dict[str, torch.Tensor]],
) -> Callable[[nn.Module], dict[str, float]]:
    """An `evaluate(model) -> {"eval_loss", "eval_accuracy"}` callback for the trainer."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        pred, gold, loss = predict_classes(model, batches)
        return {"eval_loss": loss, "eval_accuracy": float((pred == gold).float().mean())}

    return evaluate


def class_report(pred: torch.Tensor, gold: torch.Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, majority baseline, and per-label accuracy (recall), precision, F1, support."""
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for c, label in enumerate(labels):
        tp = int(((pred == c) & (gold == c)).sum())
        support = int((gold == c).sum())
        predicted = int((pred == c).sum())
        recall = tp / support if support else 0.0
        precision = tp / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "accuracy": recall,
            "precision": precision,
            "f1": f1,
            "support": support,
        }
        if support:
            f1s.append(f1)
    counts = torch.bincount(gold, minlength=len(labels))
    n = max(len(gold), 1)
    return {
        "eval_accuracy": float((pred == gold).float().mean()) if len(gold) else 0.0,
        "majority_class_accuracy": float(counts.max()) / n,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "per_class": per_class,
    }
