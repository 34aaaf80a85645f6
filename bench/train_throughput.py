"""Training throughput of the default encoder classifier on synthetic batches.

Runs the real `Trainer` (AdamW, schedule, clipping, metrics, one final checkpoint) for fp32
and bf16, each in a fresh process so peak RSS is per precision, and prints ONE JSON object:

    python bench/train_throughput.py [--steps 100] [--threads 2] [--batch-size 32]

Documents get 16..max_len tokens (uniform) and go through the same length-bucketed batcher
as real training, so `tokens_per_second` counts real (unpadded) tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from rich.console import Console

from lmforge.config import TrainConfig
from lmforge.models import EncoderClassifier, EncoderConfig
from lmforge.train.classify import classification_loss
from lmforge.train.data import ClassificationBatches
from lmforge.train.trainer import Trainer, TrainerSettings


def measure(precision: str, steps: int, threads: int, batch_size: int) -> dict:
    torch.set_num_threads(threads)
    cfg = TrainConfig(batch_size=batch_size, max_steps=steps, precision=precision)
    vocab, n_classes, n_docs = cfg.tokenizer.vocab_size, 4, 4000
    rng = np.random.default_rng(0)
    docs = [
        [2, *rng.integers(5, vocab, int(n) - 2).tolist(), 3]
        for n in rng.integers(16, cfg.model.max_len + 1, n_docs)
    ]
    labels = rng.integers(0, n_classes, n_docs).tolist()
    torch.manual_seed(0)
    model = EncoderClassifier(
        EncoderConfig(vocab_size=vocab, n_classes=n_classes, **cfg.model.model_dump())
    )
    settings = TrainerSettings.from_config(cfg)
    settings.eval_every = settings.checkpoint_every = steps
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model,
            classification_loss,
            ClassificationBatches(docs, labels, cfg.batch_size, seed=0),
            settings,
            out,
            console=Console(file=open("/dev/null", "w")),  # noqa: SIM115
        )
        started = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - started
    return {
        "steps": result.steps,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "steps_per_second": round(result.steps / result.train_seconds, 3),
        "train_seconds": round(result.train_seconds, 2),
        "wall_seconds": round(wall, 2),
        "mean_tokens_per_batch": round(trainer.state.tokens_seen / result.steps, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_loss": round(result.final_loss, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.threads, args.batch_size)))
        return
    cfg = TrainConfig()
    report = {
        "model": {**cfg.model.model_dump(), "vocab_size": cfg.tokenizer.vocab_size},
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    for precision in ("fp32", "bf16"):
        child = [sys.executable, __file__, "--child", precision, "--steps", str(args.steps)]
        child += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        report[precision] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
