"""Benchmark the demo corpus generator: throughput, bytes written and peak memory.

    python bench/corpus_generation.py --docs 200000

Prints one JSON object. Peak RSS should stay flat as --docs grows (the generator streams).
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

from lmforge.config import CorpusConfig
from lmforge.demo import generate_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000, help="documents to generate")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a temp dir)"
    )
    parser.add_argument("--noise-rate", type=float, default=0.37)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep a temp output folder")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="lmforge-corpus-bench-"))
    cfg = CorpusConfig(docs=args.docs, noise_rate=args.noise_rate, seed=args.seed)
    started = time.perf_counter()
    stats = generate_corpus(out, cfg)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if sys.platform == "darwin":
        peak_kb //= 1024  # bytes on macOS
    result = {
        "docs": stats["docs"],
        "seconds": round(seconds, 2),
        "docs_per_second": round(stats["docs"] / seconds, 1),
        "bytes": stats["bytes"]["total"],
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "noise_rate": stats["noise_rate"],
        "out": str(out),
    }
    if args.out is None and not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
