"""Benchmark the cleaning line on a generated demo corpus with planted, labelled noise.

    python bench/data_clean.py --docs 100000 --workers 2

Generates a corpus in a temp folder (not timed), runs `clean_sources` on it with the
default DataConfig and prints ONE JSON object: residual noise in kept documents, clean
documents lost, a recall table per noise kind, the learned filters' precision/recall,
throughput (wall, and per core from the steps' CPU time) and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from lmforge.config import CorpusConfig, DataConfig
from lmforge.data.clean import clean_sources
from lmforge.demo import corpus_sources, generate_corpus


def _peak_mb(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents to generate")
    parser.add_argument("--noise-rate", type=float, default=0.37)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="0: all cores")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--workdir", type=Path, help="keep corpus and output here")
    args = parser.parse_args(argv)

    root = args.workdir or Path(tempfile.mkdtemp(prefix="lmforge-data-bench-"))
    try:
        corpus = root / "corpus"
        if not (corpus / "ground_truth.jsonl").is_file():
            generate_corpus(
                corpus, CorpusConfig(docs=args.docs, noise_rate=args.noise_rate, seed=args.seed)
            )
        started = time.perf_counter()
        stats = clean_sources(
            corpus_sources(corpus),
            root / "data",
            DataConfig(workers=args.workers, executor=args.executor),
            Console(quiet=True),
            ground_truth=corpus / "ground_truth.jsonl",
        )
        seconds = time.perf_counter() - started
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    cpu_seconds = sum(step["seconds"] for step in stats["funnel"])
    kinds = stats.get("noise_kinds", {})
    result = {
        "docs": args.docs,
        "seed": args.seed,
        "docs_in": stats["docs_in"],
        "docs_out": stats["docs_out"],
        "noise_rate_before": stats["noise_rate_before"],
        "noise_rate_after": stats["noise_rate_after"],
        "clean_docs_lost_rate": stats["clean_docs_lost_rate"],
        "clean_docs_lost_by": stats.get("clean_docs_lost_by"),
        "recall_by_kind": {k: v["handled_rate"] for k, v in kinds.items()},
        "left_by_kind": {k: v["left"] for k, v in kinds.items()},
        "model_filters": stats.get("model_filters"),
        "executor": stats["executor"],
        "seconds": round(seconds, 2),
        "phase_seconds": stats["phase_seconds"],
        "docs_per_second_wall": round(stats["docs_in"] / seconds, 1),
        "docs_per_second_per_core": round(stats["docs_in"] / cpu_seconds, 1),
        "step_docs_per_second_per_core": {f["step"]: f["docs_per_second"] for f in stats["funnel"]},
        "peak_rss_mb_driver": _peak_mb(resource.RUSAGE_SELF),
        "peak_rss_mb_largest_worker": _peak_mb(resource.RUSAGE_CHILDREN),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
