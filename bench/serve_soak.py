"""Soak: a long steady load at 70 % of capacity; does the server's memory grow, does it fail?

    python bench/serve_soak.py                        # capacity search, 1 min warm-up, 10 min
    python bench/serve_soak.py --rate 150 --duration-s 3600
    python bench/serve_soak.py --quick --rate 20      # a smoke run of under a minute

One `lmforge serve` child process (prediction cache off, so every request reaches the model)
on a copy of --registry or a built demo-shaped model. Unless --rate is given, a capacity
search finds the highest open-loop rate with p99 <= --p99-ms (success >= 99.9 %, the server
keeping up); the soak then runs one uninterrupted open-loop Poisson load at --load-fraction of
it (70 %) for --warmup-s + --duration-s seconds, latency measured from each request's
scheduled send time.

Memory: the resident set of the server process and its descendants (`/proc`, see
`lmforge.bench.procstats`) is sampled every --rss-interval-s seconds. The baseline ("start")
is the median of the samples in the last `min(30 s, warm-up / 2)` of the warm-up: by then the
allocator pools, batch buffers and caches that any load creates exist, and the median ignores
a single sample caught mid-batch. "end" is the median over a window of the same length at the
end of the run, and growth = end / start - 1 (target <= 10 %). Also reported: the maximum
after the warm-up, its growth, and the least-squares slope (MiB per minute) after the warm-up.

Latency: p50/p99/max, successes and failures per --bucket-s (a minute) of scheduled time, the
warm-up bucket(s) marked as such. Prints one JSON object on stdout; progress goes to stderr.
The load generator runs in this process and shares the cores with the server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmforge.bench.capacity import stderr_log as log
from lmforge.bench.openloop import run_open_loop_sync
from lmforge.bench.procstats import RssSampler
from lmforge.bench.server_process import ServerProcess
from lmforge.bench.serving_setup import (
    START_WARMUP_S,
    add_load_rate_args,
    add_model_args,
    latency_stats,
    load_average,
    load_rate,
    open_loop_options,
    parse_with_quick,
    prepare_registry_copy,
    request_texts,
    warm_up,
    write_serve_config,
)

TARGET_GROWTH_PCT = 10.0
MIB = 1024 * 1024
BASELINE_WINDOW_S = 30.0
QUICK = {
    "duration_s": 20.0,
    "warmup_s": 6.0,
    "bucket_s": 5.0,
    "rss_interval_s": 1.0,
    "trial_s": 1.5,
    "max_trials": 5,
}


class Buckets:
    """Latencies and failures per `bucket_s` of scheduled time (an `on_result` callback)."""

    def __init__(self, bucket_s: float) -> None:
        self.bucket_s = bucket_s
        self.latencies: dict[int, list[float]] = {}
        self.failures: dict[int, dict[str, int]] = {}
        self.t0_monotonic: float | None = None  # the load's start, on time.monotonic()

    def __call__(self, offset: float, status: int | str, latency: float) -> None:
        if self.t0_monotonic is None:  # settled now = t0 + offset + latency
            self.t0_monotonic = time.monotonic() - latency - offset
        index = int(offset // self.bucket_s)
        if isinstance(status, int) and 200 <= status < 300:
            self.latencies.setdefault(index, []).append(latency)
        else:
            failed = self.failures.setdefault(index, {})
            failed[str(status)] = failed.get(str(status), 0) + 1

    def rows(self, warmup_s: float, rss: list[tuple[float, int]]) -> list[dict[str, Any]]:
        """One row per bucket, with the median RSS sampled in it."""
        rows = []
        for index in sorted(set(self.latencies) | set(self.failures)):
            start, end = index * self.bucket_s, (index + 1) * self.bucket_s
            lat = self.latencies.get(index, [])
            in_bucket = [b for t, b in rss if start <= t < end]
            failures = self.failures.get(index, {})
            rows.append(
                {
                    "from_s": round(start, 1),
                    "phase": "warmup" if start < warmup_s else "soak",
                    "ok": len(lat),
                    "failed": sum(failures.values()),
                    "failures": dict(sorted(failures.items())),
                    **latency_stats(lat),
                    "rss_mib": round(statistics.median(in_bucket) / MIB, 1) if in_bucket else None,
                }
            )
        return rows


def memory_report(
    rss: list[tuple[float, int]], warmup_s: float, end_s: float, interval_s: float
) -> dict[str, Any]:
    """Baseline, max, end, growth and slope from (load offset s, bytes) samples."""
    window = max(min(BASELINE_WINDOW_S, warmup_s / 2), interval_s)
    base = [b for t, b in rss if warmup_s - window <= t <= warmup_s]
    tail = [b for t, b in rss if end_s - window <= t <= end_s]
    soak = [(t, b) for t, b in rss if warmup_s <= t <= end_s]
    if not base or not tail or len(soak) < 2:
        return {"error": "too few RSS samples: lengthen the run or lower --rss-interval-s"}
    start, end = statistics.median(base), statistics.median(tail)
    peak = max(b for _, b in soak)
    # Least squares over the soak: a leak shows as a steady slope even under GC noise.
    mean_t = sum(t for t, _ in soak) / len(soak)
    mean_b = sum(b for _, b in soak) / len(soak)
    var_t = sum((t - mean_t) ** 2 for t, _ in soak)
    slope = sum((t - mean_t) * (b - mean_b) for t, b in soak) / var_t if var_t > 0 else 0.0
    growth = (end - start) / start * 100.0
    return {
        "baseline": (
            f"median of the samples in the last {window:.0f} s of the {warmup_s:.0f} s warm-up"
        ),
        "samples": len(rss),
        "interval_s": interval_s,
        "start_mib": round(start / MIB, 2),
        "max_mib": round(peak / MIB, 2),
        "end_mib": round(end / MIB, 2),
        "growth_pct": round(growth, 2),
        "max_growth_pct": round((peak - start) / start * 100.0, 2),
        "slope_mib_per_min": round(slope * 60.0 / MIB, 3),
        "series": [[round(t, 1), round(b / MIB, 1)] for t, b in rss],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)  # --registry is copied: the server writes its serving store there
    add_load_rate_args(parser, load_fraction=0.7)
    parser.add_argument("--duration-s", type=float, default=600.0, help="soak after warm-up")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="load before the baseline")
    parser.add_argument("--rss-interval-s", type=float, default=5.0)
    parser.add_argument("--bucket-s", type=float, default=60.0, help="latency per this many s")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 6 s warm-up + 20 s soak, 5 s buckets (explicit options still win)",
    )
    args = parse_with_quick(parser, argv, QUICK)
    positive = (args.duration_s, args.warmup_s, args.rss_interval_s, args.bucket_s)
    if not all(math.isfinite(v) and v > 0 for v in positive):
        parser.error("--duration-s, --warmup-s, --rss-interval-s and --bucket-s must be > 0")
    return args  # --rate and --load-fraction are checked by their types


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    texts, texts_from = request_texts(args.eval)
    total_s = args.warmup_s + args.duration_s
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-soak-") as tmp_name:
        tmp = Path(tmp_name)
        registry_dir, name, model_info = prepare_registry_copy(args, tmp, texts)
        config_path = write_serve_config(tmp / "serve.yaml")
        log("starting the server ...")
        with ServerProcess(registry_dir, model=name, config_path=config_path) as server:
            assert server.proc is not None
            warm_up(server.url, texts, START_WARMUP_S)  # first calls count in no measurement
            capacity, rate = load_rate(server.url, texts, args, log=log)
            log(
                f"soak at {rate:.1f} req/s: {args.warmup_s:.0f} s warm-up + "
                f"{args.duration_s:.0f} s, RSS every {args.rss_interval_s:g} s ..."
            )
            buckets = Buckets(args.bucket_s)
            load_before = load_average()
            sampler_t0 = time.monotonic()  # the sampler's clock starts (a few µs) after this
            with RssSampler(server.proc.pid, args.rss_interval_s, include_children=True) as rss:
                result = run_open_loop_sync(
                    server.url,
                    rate,
                    total_s,
                    texts,
                    **open_loop_options(args, on_result=buckets),
                )
            server_alive = server.proc.poll() is None
    # Sampler times -> seconds since the load's first scheduled send.
    shift = sampler_t0 - (buckets.t0_monotonic or sampler_t0)
    samples = [(t + shift, b) for t, b in rss.samples]
    memory = memory_report(samples, args.warmup_s, total_s, args.rss_interval_s)
    rows = buckets.rows(args.warmup_s, samples)
    soak_lat = [
        lat
        for i, lats in buckets.latencies.items()
        if i * args.bucket_s >= args.warmup_s
        for lat in lats
    ]
    summary = result.summary()
    growth = memory.get("growth_pct")
    report = {
        "benchmark": "serve_soak",
        "model": {**model_info, "name": name},
        "texts": {"source": texts_from, "count": len(texts)},
        "cpus": os.cpu_count(),
        "capacity": capacity,
        "load_fraction": None if args.rate is not None else args.load_fraction,
        "rate": round(rate, 1),
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "connections": args.connections,
        "load": {
            k: summary[k]
            for k in (
                *("offered_rate", "achieved_rate", "scheduled", "ok", "failed", "success"),
                *("failures", "p50_ms", "p99_ms", "p999_ms", "max_ms", "late_sends"),
            )
        },
        "soak_latency": {
            "ok": len(soak_lat),
            **{k: v for k, v in latency_stats(soak_lat).items() if k != "max_ms"},
        },
        "per_bucket": {"bucket_s": args.bucket_s, "rows": rows},
        "memory": memory,
        "failures_total": result.failed,
        "server_alive_at_end": server_alive,
        "target_growth_pct": TARGET_GROWTH_PCT,
        "meets_growth_target": growth is not None and growth <= TARGET_GROWTH_PCT,
        "meets_target": growth is not None and growth <= TARGET_GROWTH_PCT and result.failed == 0,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
