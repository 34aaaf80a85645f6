"""Serving benchmark: start `lmforge serve` on a registry, drive closed-loop load, print JSON.

    python bench/serve_load.py --registry runs/demo/registry --concurrency 1 8 --duration 10

Prints one JSON object: per concurrency level, requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from lmforge.bench.loadgen import default_texts, drive_load, load_eval_texts
from lmforge.bench.server_process import ServerProcess
from lmforge.config import BenchConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, required=True, help="WORKDIR/registry")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--eval", type=Path, help="parquet of texts (default: WORKDIR/train)")
    args = parser.parse_args()
    eval_path = args.eval or args.registry.parent / "train" / "eval.parquet"
    texts = load_eval_texts(eval_path) if eval_path.is_file() else default_texts()
    levels = {}
    with ServerProcess(args.registry, host="127.0.0.1") as server:
        for concurrency in args.concurrency:
            cfg = BenchConfig(
                duration_s=args.duration,
                concurrency=concurrency,
                texts_per_request=args.texts_per_request,
            )
            levels[str(concurrency)] = asyncio.run(drive_load(server.url, cfg, texts)).summary()
    print(
        json.dumps(
            {
                "benchmark": "serve_load",
                "registry": str(args.registry),
                "cpus": os.cpu_count(),
                "duration_s": args.duration,
                "texts_per_request": args.texts_per_request,
                "by_concurrency": levels,
            }
        )
    )


if __name__ == "__main__":
    main()
