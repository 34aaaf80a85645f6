"""Benchmark the data stage's cleaning line on a generated demo corpus.

    python bench/data_clean.py --docs 20000

Generates a corpus in a temp folder (not timed), runs `clean_sources` on it with the default
DataConfig and prints ONE JSON object: throughput, the noise metrics against the ground
truth, and the per-step docs/s of the funnel.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents to generate")
    parser.add_argument("--noise-rate", type=float, default=0.37)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="lmforge-data-bench-"))
    try:
        corpus = root / "corpus"
        generate_corpus(
            corpus, CorpusConfig(docs=args.docs, noise_rate=args.noise_rate, seed=args.seed)
        )
        started = time.perf_counter()
        stats = clean_sources(
            corpus_sources(corpus),
            root / "data",
            DataConfig(),
            Console(quiet=True),
            ground_truth=corpus / "ground_truth.jsonl",
        )
        seconds = time.perf_counter() - started
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        peak_kb //= 1024  # bytes there
    result = {
        "docs": args.docs,
        "docs_in": stats["docs_in"],
        "docs_out": stats["docs_out"],
        "seconds": round(seconds, 2),
        "docs_per_second": round(stats["docs_in"] / seconds, 1),
        "noise_rate_before": stats["noise_rate_before"],
        "noise_rate_after": stats["noise_rate_after"],
        "clean_docs_lost_rate": stats["clean_docs_lost_rate"],
        "step_docs_per_second": {f["step"]: f["docs_per_second"] for f in stats["funnel"]},
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
