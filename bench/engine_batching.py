"""Dynamic batching inside the training engine vs a fixed batch, on real variable-length text.

Both arms train the encoder classifier with the engine (`lmforge.train.engine.Engine`, one
process) on the same data with the same global batch (examples per optimizer step):

- fixed:   global batches drawn at random, each padded to its longest text, one micro-batch;
- dynamic: `data.length_bucketing` (texts of similar length share a global batch) and
  `train.dynamic_batch` (the run-time controller splits each step into micro-batches, each
  cut to its own longest text, and resizes them from measured memory and throughput).

Reported per dataset and arm: real (non-padding) tokens per second of training time, padding
share of the token slots the model computed on, examples per second, and the gain. The two
arms alternate in rounds so that load from other processes hits both. Prints one JSON object.

    python bench/engine_batching.py                     # SST-2 and waimai_10k from ../shared/data
    python bench/engine_batching.py --steps 60 --datasets waimai
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.train.engine import Engine, RankContext
from lmforge.train.run_config import TrainRunConfig
from lmforge.train.tasks import prepare_data

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "sst2": {"source": DATA / "sst2" / "train.tsv", "text_field": "sentence"},
    "waimai": {"source": DATA / "chinese" / "waimai_10k.csv", "text_field": "review"},
}


def config(name: str, dynamic: bool, args: argparse.Namespace) -> dict[str, Any]:
    ds = DATASETS[name]
    return {
        "model": {"arch": "encoder", "preset": "tiny", "overrides": {"n_layers": args.layers}},
        "data": {
            "source": str(ds["source"]),
            "text_field": ds["text_field"],
            "label_field": "label",
            "seq_len": args.max_len,
            "vocab_size": 6000,
            "max_docs": args.max_docs,
            "length_bucketing": dynamic,
        },
        "train": {
            "global_batch_size": args.batch_size,
            "max_steps": args.warmup + args.steps,
            "checkpoint_every": 0,
            "eval_every": 0,
            "export": False,
            "threads": args.threads,
            "dynamic_batch": {"enabled": dynamic, "patience": 2},
        },
    }


def padding_share(engine: Engine, steps: range) -> float:
    """Padding slots / all slots over the micro-batches the engine computes for `steps`."""
    real = slots = 0
    for step in steps:
        for mb in engine._micro_batches(engine.task.batch(step, 0, 1)):
            slots += mb.inputs[0].numel()
            real += mb.tokens
    return 1.0 - real / max(slots, 1)


def run_arm(name: str, dynamic: bool, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    raw = config(name, dynamic, args)
    cfg = TrainRunConfig.model_validate(raw)
    out = work / f"{name}-{'dynamic' if dynamic else 'fixed'}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    (out / "data").symlink_to(work / f"data-{name}", target_is_directory=True)
    engine = Engine(cfg, out, RankContext(0, 1, 0, torch.device("cpu"), False), Console(quiet=True))
    engine.fit()
    rows = [r for r in engine.rows if r.get("kind") == "train"][args.warmup :]
    seconds = sum(r["tokens"] / r["tokens_per_second"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    return {
        "tokens_per_second": tokens / seconds,
        "examples_per_second": len(rows) * args.batch_size / seconds,
        "padding_share": padding_share(engine, range(args.warmup, args.warmup + args.steps)),
        "micro_batch_sizes": sorted({r["micro_batch_size"] for r in rows}),
        "final_loss": rows[-1]["loss"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--steps", type=int, default=60, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="examples per optimizer step")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-docs", type=int, default=None, help="read only the first N rows")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    missing = [n for n in args.datasets if not DATASETS[n]["source"].is_file()]
    if missing:
        print(json.dumps({"error": f"data for {missing} not found under {DATA}"}))
        return 2
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"config": vars(args), "target_gain": 0.18, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="engine-batching-") as tmp:
        work = Path(tmp)
        for name in args.datasets:
            prepare_data(
                TrainRunConfig.model_validate(config(name, False, args)), work / f"data-{name}"
            )
            arms: dict[str, list[dict[str, Any]]] = {"fixed": [], "dynamic": []}
            for r in range(args.rounds):
                order = ("fixed", "dynamic") if r % 2 == 0 else ("dynamic", "fixed")
                for arm in order:
                    print(
                        f"[engine_batching] {name} {arm} round {r + 1}", file=sys.stderr, flush=True
                    )
                    arms[arm].append(run_arm(name, arm == "dynamic", args, work))
            summary = {
                arm: {
                    "tokens_per_second": round(
                        statistics.median(x["tokens_per_second"] for x in runs), 1
                    ),
                    "examples_per_second": round(
                        statistics.median(x["examples_per_second"] for x in runs), 2
                    ),
                    "padding_share": round(runs[0]["padding_share"], 4),
                    "micro_batch_sizes": runs[-1]["micro_batch_sizes"],
                    "final_loss": round(runs[-1]["final_loss"], 4),
                }
                for arm, runs in arms.items()
            }
            gain = (
                summary["dynamic"]["tokens_per_second"] / summary["fixed"]["tokens_per_second"] - 1
            )
            summary["tokens_per_second_gain"] = round(gain, 4)
            summary["meets_target"] = gain >= 0.18
            result["datasets"][name] = summary
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
