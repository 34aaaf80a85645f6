"""Dynamic batching on vs off: the highest sustained request rate with p99 <= 100 ms.

    python bench/serve_batching.py                          # builds a demo-shaped model
    python bench/serve_batching.py --registry runs/demo/registry --trial-s 5
    python bench/serve_batching.py --preset small --p99-ms 200

Same model, same machine, one run. For each arm `lmforge serve` starts as a child process with
a temp YAML config (the prediction cache is off, so every request reaches the model):

- on:  serve.batching.max_batch_size = --batch-size (32), max_queue_delay_ms = --queue-delay-ms;
- off: serve.batching.max_batch_size = 1 (one text per model call).

Each arm runs a capacity search (`lmforge.bench.capacity.find_capacity`): open-loop Poisson
load (`lmforge.bench.openloop`), latency measured from each request's scheduled send time,
a trial of --trial-s seconds per rate (longer at low rates, to hold --min-requests requests),
doubling from --start-rate until a trial misses the objective (p99 <= --p99-ms, success
>= 99.9 %, achieved >= 95 % of the offered rate), then bisecting to within 10 %. A failed
trial is rerun once (--confirm-failures) since on a shared machine one stall can sink a short
trial. Prints one JSON object on stdout: both capacities and their ratio (target >= 3x);
progress goes to stderr.

Model: --registry serves that registry's production model. Without it, the script builds one
in a temp folder in a few seconds: a WordPiece tokenizer trained on the request texts and an
`EncoderClassifier` with the shape of `lmforge demo`'s model (--preset tiny: d_model 128,
2 layers, 4 heads, d_ff 256, max_len 128; --preset small: the all-MiniLM-L6 shape), random
weights: serving cost depends on the shape and the token counts, not on what was learned.

Request texts: --eval PARQUET (a `text` column), else real reviews from ../shared/data when
present (SST-2 dev and waimai_10k, English and Chinese interleaved), else the built-in
`default_texts()`. The load generator runs in this process and shares the machine's cores
with the server: its CPU time per trial is reported (`client_cpu_s`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from lmforge.bench.capacity import find_capacity, open_loop_measure, stderr_log
from lmforge.bench.loadgen import default_texts, load_eval_texts
from lmforge.bench.openloop import run_open_loop_sync
from lmforge.bench.server_process import ServerProcess

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET_RATIO = 3.0
REAL_TEXTS_PER_SET = 1000


def log(message: str) -> None:
    stderr_log(message)


def request_texts(eval_path: Path | None) -> tuple[list[str], str]:
    """The texts requests carry, and where they came from."""
    if eval_path is not None:
        return load_eval_texts(eval_path), str(eval_path)
    sst2 = SHARED / "sst2" / "dev.tsv"
    waimai = SHARED / "chinese" / "waimai_10k.csv"
    if sst2.is_file() and waimai.is_file():
        with sst2.open(encoding="utf-8") as f:
            english = [row["content"] for row in csv.DictReader(f, delimiter="\t")]
        with waimai.open(encoding="utf-8") as f:
            chinese = [row["review"] for row in csv.DictReader(f)]
        english = [t for t in english if t.strip()][:REAL_TEXTS_PER_SET]
        chinese = [t for t in chinese if t.strip()][:REAL_TEXTS_PER_SET]
        mixed = [t for pair in zip(english, chinese, strict=False) for t in pair]
        return mixed, "shared/data: sst2/dev.tsv + chinese/waimai_10k.csv"
    return default_texts(), "lmforge.bench.loadgen.default_texts()"


def build_demo_registry(root: Path, texts: list[str], preset: str) -> dict[str, Any]:
    """Register a demo-shaped, randomly initialised classifier as `demo` (production)."""
    import torch

    from lmforge.demo.reviews import LABELS
    from lmforge.models.encoder import EncoderClassifier, encoder_config
    from lmforge.models.export import save_model_dir
    from lmforge.registry import ModelRegistry
    from lmforge.text.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=8000, min_frequency=1)
    torch.manual_seed(0)
    cfg = encoder_config(preset, tokenizer.get_vocab_size(), len(LABELS))
    model = EncoderClassifier(cfg).eval()
    model_dir = save_model_dir(root / "model", model, tokenizer, list(LABELS))
    ModelRegistry(root / "registry").register("demo", model_dir, metrics={}, alias="production")
    return {
        "kind": "built",
        "preset": preset,
        "weights": "random init (seed 0)",
        "vocab_size": tokenizer.get_vocab_size(),
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "d_ff": cfg.d_ff,
        "max_len": cfg.max_len,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def serve_config(batch_size: int, queue_delay_ms: float, extra: dict[str, Any]) -> dict[str, Any]:
    """The `serve` section for one arm; the cache is off so every request runs the model."""
    serve: dict[str, Any] = {
        "batching": {"max_batch_size": batch_size, "max_queue_delay_ms": queue_delay_ms},
        "cache": {"kind": "none"},
    }
    for key, value in extra.items():
        serve[key] = value
    return {"serve": serve}


def write_config(folder: Path, name: str, cfg: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def warm_up(url: str, texts: list[str], seconds: float, connections: int) -> None:
    """A short low-rate run, not recorded: connections, first-call allocations."""
    if seconds > 0:
        run_open_loop_sync(url, 20.0, seconds, texts, connections=connections, timeout_s=5.0)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def add_search_args(parser: argparse.ArgumentParser, p99_ms: float) -> None:
    """Options shared with serve_mean_latency.py."""
    parser.add_argument("--registry", type=Path, help="serve this registry's production model")
    parser.add_argument("--model", help="model name in --registry (default: the only one)")
    parser.add_argument(
        "--preset", default="tiny", choices=["tiny", "small"], help="shape of the built model"
    )
    parser.add_argument("--eval", type=Path, help="parquet with a `text` column to send")
    parser.add_argument("--p99-ms", type=float, default=p99_ms, help="latency objective")
    parser.add_argument("--trial-s", type=float, default=4.0, help="seconds per search trial")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="unrecorded load first")
    parser.add_argument("--start-rate", type=float, default=20.0)
    parser.add_argument("--max-rate", type=float, default=20000.0)
    parser.add_argument("--rel-tolerance", type=float, default=0.1)
    parser.add_argument("--max-trials", type=int, default=12)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per-request timeout")
    parser.add_argument("--seed", type=int, default=0, help="Poisson arrivals seed")
    parser.add_argument(
        "--min-requests",
        type=int,
        default=300,
        help="lengthen low-rate trials to hold this many requests (up to 3x --trial-s)",
    )


def prepare_model(args: argparse.Namespace, tmp: Path, texts: list[str]) -> tuple[Path, dict]:
    if args.registry is not None:
        return args.registry, {"kind": "registry", "registry": str(args.registry)}
    log(f"building a demo-shaped model (preset {args.preset}) ...")
    began = time.perf_counter()
    info = build_demo_registry(tmp, texts, args.preset)
    log(f"  built in {time.perf_counter() - began:.1f} s: {info}")
    return tmp / "registry", info


def search_arm(
    name: str,
    registry: Path,
    config_path: Path,
    args: argparse.Namespace,
    texts: list[str],
) -> dict[str, Any]:
    """Start the server with `config_path`, find its capacity, stop it."""
    log(f"[{name}] starting the server ({config_path.name}) ...")
    with ServerProcess(registry, model=args.model, config_path=config_path) as server:
        warm_up(server.url, texts, args.warmup_s, args.connections)
        measure = open_loop_measure(
            server.url,
            texts,
            args.trial_s,
            min_requests=args.min_requests,
            log=log,
            texts_per_request=args.texts_per_request,
            connections=args.connections,
            timeout_s=args.timeout_s,
            arrival="poisson",
            seed=args.seed,
        )
        load_before = load_average()
        began = time.perf_counter()
        found = find_capacity(
            measure,
            p99_limit_s=args.p99_ms / 1000.0,
            start_rate=args.start_rate,
            max_rate=args.max_rate,
            rel_tolerance=args.rel_tolerance,
            max_trials=args.max_trials,
            confirm_failures=args.confirm_failures,
        )
        log(f"[{name}] capacity {found.rate:.1f} req/s (first failing rate {found.lowest_fail})")
        return {
            "requests_per_s": round(found.rate, 1),
            "texts_per_s": round(found.rate * args.texts_per_request, 1),
            **{k: v for k, v in found.summary().items() if k != "rate"},
            "search_s": round(time.perf_counter() - began, 1),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_search_args(parser, p99_ms=100.0)
    parser.add_argument("--batch-size", type=int, default=32, help="max_batch_size when on")
    parser.add_argument("--queue-delay-ms", type=float, default=2.0, help="when batching is on")
    parser.add_argument("--confirm-failures", type=int, default=1, help="reruns of a failure")
    args = parser.parse_args()

    texts, texts_from = request_texts(args.eval)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-batching-") as tmp_name:
        tmp = Path(tmp_name)
        registry, model_info = prepare_model(args, tmp, texts)
        arms = {
            "batching_on": serve_config(args.batch_size, args.queue_delay_ms, {}),
            "batching_off": serve_config(1, 0.0, {}),
        }
        results = {}
        for name, cfg in arms.items():
            results[name] = search_arm(name, registry, write_config(tmp, name, cfg), args, texts)
            results[name]["serve_config"] = cfg["serve"]
    on = results["batching_on"]["requests_per_s"]
    off = results["batching_off"]["requests_per_s"]
    ratio = round(on / off, 2) if off > 0 else None
    print(
        json.dumps(
            {
                "benchmark": "serve_batching",
                "objective": {"p99_ms": args.p99_ms, "min_success": 0.999},
                "model": model_info,
                "texts": {"source": texts_from, "count": len(texts)},
                "texts_per_request": args.texts_per_request,
                "trial_s": args.trial_s,
                "connections": args.connections,
                "cpus": os.cpu_count(),
                "batching_on": results["batching_on"],
                "batching_off": results["batching_off"],
                "ratio_on_over_off": ratio,
                "target_ratio": TARGET_RATIO,
                "meets_target": ratio is not None and ratio >= TARGET_RATIO,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
