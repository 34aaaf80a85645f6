"""Mean latency at 80 % of capacity: the latency users see on a busy but healthy server.

    python bench/serve_mean_latency.py                        # builds a demo-shaped model
    python bench/serve_mean_latency.py --registry runs/demo/registry --duration 60
    python bench/serve_mean_latency.py --rate 150             # skip the search

Starts `lmforge serve` once (child process, temp YAML config: dynamic batching on with
--batch-size / --queue-delay-ms, prediction cache off), then

1. finds its capacity: the highest open-loop Poisson rate whose trials keep p99 <= --p99-ms
   (a loose limit, default 500 ms, so the search ends near saturation rather than at the
   latency objective); see bench/serve_batching.py for the search and the trial rules;
2. runs --fraction (0.8) of that rate for --duration seconds (default 30) and reports the
   mean, p50, p90, p99 and max latency, each measured from the request's scheduled send time.

Target: mean < 120 ms on 2 cores. Model and request texts as in bench/serve_batching.py
(--registry, else a demo-shaped random-init model built in seconds; real reviews from
../shared/data when present), both set up by `lmforge.bench.serving_setup`. Prints one JSON
object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lmforge.bench.capacity import stderr_log
from lmforge.bench.openloop import run_open_loop_sync
from lmforge.bench.server_process import ServerProcess
from lmforge.bench.serving_setup import (
    add_search_args,
    capacity_search,
    load_average,
    open_loop_options,
    prepare_model,
    request_texts,
    serve_section,
    warm_up,
    write_serve_config,
)

TARGET_MEAN_MS = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_search_args(parser, p99_ms=500.0)
    parser.add_argument("--batch-size", type=int, default=32, help="serve.batching.max_batch_size")
    parser.add_argument("--queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds at the load")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of capacity to run")
    parser.add_argument("--rate", type=float, help="run at this rate; no capacity search")
    parser.add_argument("--confirm-failures", type=int, default=1, help="reruns of a failure")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1.5:
        parser.error(f"--fraction {args.fraction}: use a share of capacity such as 0.8")

    texts, texts_from = request_texts(args.eval)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-latency-") as tmp_name:
        tmp = Path(tmp_name)
        registry, model_info = prepare_model(args, tmp, texts)
        section = serve_section(
            batching={"max_batch_size": args.batch_size, "max_queue_delay_ms": args.queue_delay_ms}
        )
        config_path = write_serve_config(tmp / "serve.yaml", **section)
        stderr_log(f"starting the server with {section} ...")
        with ServerProcess(registry, model=args.model, config_path=config_path) as server:
            warm_up(server.url, texts, args.warmup_s, connections=args.connections)
            capacity = None
            if args.rate is None:
                stderr_log(f"capacity search (p99 <= {args.p99_ms} ms) ...")
                found = capacity_search(server.url, texts, args)
                capacity = found.summary()
                rate = found.rate * args.fraction
                if rate <= 0:
                    stderr_log("no trial met the objective: nothing to run at; see the trials")
            else:
                rate = args.rate
            steady = None
            if rate > 0:
                stderr_log(f"running {rate:.1f} req/s for {args.duration:.0f} s ...")
                time.sleep(1.0)  # let a backlog from the search drain
                load_before = load_average()
                # Another seed than the search's: the run is not a replay of a trial.
                load = open_loop_options(args, seed=args.seed + 1)
                result = run_open_loop_sync(server.url, rate, args.duration, texts, **load)
                steady = {
                    **result.summary(),
                    "load_average_before": load_before,
                    "load_average_after": load_average(),
                }
                stderr_log(
                    f"mean {steady['mean_ms']} ms, p50 {steady['p50_ms']} ms, "
                    f"p99 {steady['p99_ms']} ms, failures {steady['failures']}"
                )
    mean_ms = steady["mean_ms"] if steady else None
    print(
        json.dumps(
            {
                "benchmark": "serve_mean_latency",
                "model": model_info,
                "texts": {"source": texts_from, "count": len(texts)},
                "serve_config": section,
                "cpus": os.cpu_count(),
                "search_objective": {"p99_ms": args.p99_ms, "min_success": 0.999},
                "capacity": capacity,
                "fraction": args.fraction if args.rate is None else None,
                "rate": round(rate, 2),
                "duration_s": args.duration,
                "steady": steady,
                "mean_ms": mean_ms,
                "target_mean_ms": TARGET_MEAN_MS,
                "meets_target": mean_ms is not None and mean_ms < TARGET_MEAN_MS,
            }
        )
    )


if __name__ == "__main__":
    main()
