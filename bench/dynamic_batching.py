"""Fixed-size vs token-budget bucketed batches when training the encoder on real reviews.

    python bench/dynamic_batching.py [--steps 150] [--batch-size 32] [--datasets sst2 waimai]
                                     [--max-len 128] [--threads 2]

Reads ../shared/data (SST-2 train/dev, waimai_10k) with the project's own source reader,
trains a WordPiece tokenizer on each training split, then trains `EncoderClassifier` for the
same number of optimizer steps with two batching arms at the SAME effective batch:

- fixed:   B random examples per step, padded to the longest of them;
- dynamic: `TokenBudgetBatcher` micro-batches (sorted by length within shuffled windows,
           padded tokens <= max_tokens), regrouped by `ExampleSteps` into steps of exactly
           B examples; each micro-batch's summed loss is divided by B, so the gradient is
           that of the mean loss over the step's B examples, as in the fixed arm.

Defaults for the dynamic arm: max_tokens = B x max_len, the padded size of the fixed arm's
worst batch, so it never needs more activation memory than the fixed arm may; and at most B
examples per micro-batch, so a micro-batch never spans more than one step and consecutive
steps are not cut from one long run of similar-length examples. Bucketing windows hold
`--bucket-size` batches' worth of examples. `--max-tokens` / `--max-examples 0` give a
budget that binds (more micro-batches per step for long examples).

The arms alternate step by step in one process, so load from other processes on a shared
machine slows both alike; warmup steps run but are not timed. tokens/s counts real
(non-pad) tokens. Prints ONE JSON object on stdout (with the load average at start and
end, to judge the timing); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import SourceConfig
from lmforge.data.document import Document
from lmforge.data.sources import SourceReader
from lmforge.models import EncoderClassifier, EncoderConfig
from lmforge.text.tokenizer import encode_texts, train_tokenizer
from lmforge.train.batching import ExampleSteps, TokenBudgetBatcher, fixed_size_batches
from lmforge.train.classify import predict_classes
from lmforge.train.data import LabelledDocs, fixed_batches, split_stratified

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET_GAIN = 0.18  # tokens/s at the same effective batch


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_labelled(path: Path, text_field: str) -> LabelledDocs:
    """(id, text, label) of every well-formed record, via the data stage's reader."""
    docs = LabelledDocs([], [], [])
    for rec in SourceReader(SourceConfig(path=str(path), text_field=text_field)):
        if isinstance(rec, Document) and rec.label is not None and rec.text.strip():
            docs.ids.append(rec.id)
            docs.texts.append(rec.text)
            docs.labels.append(str(rec.label).strip())
    return docs


def load_dataset(name: str) -> tuple[LabelledDocs, LabelledDocs]:
    """(train, eval): SST-2 ships a dev split; waimai gets a seeded 10% stratified hold-out."""
    if name == "sst2":
        return (
            read_labelled(DATA / "sst2" / "train.tsv", "sentence"),
            read_labelled(DATA / "sst2" / "dev.tsv", "content"),
        )
    if name == "waimai":
        return split_stratified(
            read_labelled(DATA / "chinese" / "waimai_10k.csv", "review"), 0.1, seed=0
        )
    raise SystemExit(f"unknown dataset {name!r}; use sst2 or waimai")


class Arm:
    """One batching arm: its own model, optimizer, step stream and counters."""

    def __init__(self, steps: Iterator[list[dict[str, torch.Tensor]]], cfg: EncoderConfig):
        torch.manual_seed(0)  # both arms start from the same weights
        self.model = EncoderClassifier(cfg)
        self.model.train()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=1e-3, weight_decay=0.01, foreach=True
        )
        self.steps = steps
        self.seconds = 0.0
        self.real = self.slots = self.examples = self.micro_batches = 0
        self.losses: list[float] = []

    def step(self, timed: bool) -> None:
        started = time.perf_counter()
        step = next(self.steps)  # building the batch counts as training time in both arms
        n = sum(len(mb["labels"]) for mb in step)
        self.opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for mb in step:
            logits = self.model(mb["input_ids"], mb["attention_mask"])
            # Summed over the micro-batch, divided by the step's example count: the gradient
            # of the mean loss over the step, however the step is split.
            loss = F.cross_entropy(logits, mb["labels"], reduction="sum") / n
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        elapsed = time.perf_counter() - started
        if not timed:
            return
        self.seconds += elapsed
        self.losses.append(loss_sum)
        self.examples += n
        self.micro_batches += len(step)
        for mb in step:
            self.real += int(mb["attention_mask"].sum())
            self.slots += mb["attention_mask"].numel()

    def report(self, n_steps: int, eval_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        pred, gold, _ = predict_classes(self.model, eval_batches)
        return {
            "tokens_per_second": round(self.real / self.seconds, 1),
            "examples_per_second": round(self.examples / self.seconds, 1),
            "padding_share": round(1 - self.real / self.slots, 4),
            "mean_step_ms": round(1000 * self.seconds / n_steps, 2),
            "micro_batches_per_step": round(self.micro_batches / n_steps, 2),
            "real_tokens_per_example": round(self.real / self.examples, 2),
            "train_seconds": round(self.seconds, 2),
            "final_train_loss": round(float(np.mean(self.losses[-20:])), 4),
            "eval_accuracy": round(float((pred == gold).float().mean()), 4),
        }


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, object]:
    started = time.perf_counter()
    train, held_out = load_dataset(name)
    labels = sorted(set(train.labels))
    tok = train_tokenizer(train.texts, vocab_size=8000)
    ids = encode_texts(tok, train.texts, args.max_len)
    y = [labels.index(x) for x in train.labels]
    eval_ids = encode_texts(tok, held_out.texts, args.max_len)
    eval_y = [labels.index(x) for x in held_out.labels]
    eval_batches = fixed_batches(eval_ids, eval_y, 128)
    lengths = np.array([len(x) for x in ids])
    log(
        f"{name}: {len(ids)} train / {len(eval_ids)} eval docs, mean length "
        f"{lengths.mean():.1f} tokens, prepared in {time.perf_counter() - started:.1f}s"
    )
    model_cfg = EncoderConfig(
        vocab_size=tok.get_vocab_size(),
        n_classes=len(labels),
        d_model=128,
        n_layers=args.layers,
        n_heads=4,
        d_ff=256,
        max_len=args.max_len,
    )
    B = args.batch_size
    max_tokens = args.max_tokens or B * args.max_len
    max_examples = B if args.max_examples < 0 else (args.max_examples or None)
    fixed = fixed_size_batches(ids, y, batch_size=B, max_len=args.max_len, seed=args.seed)
    budget = TokenBudgetBatcher(
        ids,
        y,
        max_tokens=max_tokens,
        max_len=args.max_len,
        seed=args.seed,
        bucket_size=args.bucket_size,
        max_examples=max_examples,
    )
    arms = {
        "fixed": ([b] for b in fixed.iter_from(0)),
        "dynamic": ExampleSteps(budget, B).iter_from(0),
    }
    out: dict[str, object] = {
        "train_docs": len(ids),
        "eval_docs": len(eval_ids),
        "mean_tokens_per_doc": round(float(lengths.mean()), 2),
        "p90_tokens_per_doc": float(np.percentile(lengths, 90)),
        "max_tokens_per_micro_batch": max_tokens,
        "max_examples_per_micro_batch": max_examples,
    }
    # The arms take turns step by step (first one, then the other, then the other way
    # round), so a machine whose load changes during the run slows both alike.
    runners = {arm: Arm(steps, model_cfg) for arm, steps in arms.items()}
    order = list(runners)
    for k in range(args.warmup + args.steps):
        for arm in order if k % 2 else order[::-1]:
            runners[arm].step(timed=k >= args.warmup)
        done = k - args.warmup + 1
        if done > 0 and done % 50 == 0:
            rates = ", ".join(f"{a} {r.real / r.seconds:,.0f}" for a, r in runners.items())
            log(f"  {name}: step {done}/{args.steps}, tokens/s {rates}")
    for arm, runner in runners.items():
        out[arm] = runner.report(args.steps, eval_batches)
    fx, dy = out["fixed"], out["dynamic"]
    assert isinstance(fx, dict) and isinstance(dy, dict)
    gain = dy["tokens_per_second"] / fx["tokens_per_second"] - 1
    out["tokens_per_second_gain"] = round(gain, 4)
    out["examples_per_second_gain"] = round(
        dy["examples_per_second"] / fx["examples_per_second"] - 1, 4
    )
    out["meets_target"] = gain >= TARGET_GAIN
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="timed optimizer steps per arm")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (B)")
    parser.add_argument("--datasets", nargs="+", default=["sst2", "waimai"])
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=0, help="0: batch size x max len")
    parser.add_argument(
        "--max-examples", type=int, default=-1, help="row cap per micro-batch; -1: batch size"
    )
    parser.add_argument("--bucket-size", type=int, default=32, help="batches per sort window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(json.dumps({"error": f"{DATA} not found: run from a checkout next to shared/"}))
        return 1
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result: dict[str, object] = {
        "config": {
            "steps": args.steps,
            "warmup_steps": args.warmup,
            "batch_size": args.batch_size,
            "max_len": args.max_len,
            "d_model": 128,
            "n_layers": args.layers,
            "threads": args.threads,
            "bucket_size": args.bucket_size,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "target_tokens_per_second_gain": TARGET_GAIN,
    }
    for name in args.datasets:
        result[name] = run_dataset(name, args)
    gains = [
        r["tokens_per_second_gain"]
        for r in result.values()
        if isinstance(r, dict) and "meets_target" in r
    ]
    result["min_tokens_per_second_gain"] = min(gains) if gains else None
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
