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
with the server: its CPU time per trial is reported (`client_cpu_s`). The setup shared with the
other serving benchmarks (texts, model, config, the search) is `lmforge.bench.serving_setup`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from lmforge.bench.serving_setup import (
    add_search_args,
    prepare_model,
    request_texts,
    search_arm,
    serve_section,
    write_serve_config,
)

TARGET_RATIO = 3.0


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
            "batching_on": {
                "max_batch_size": args.batch_size,
                "max_queue_delay_ms": args.queue_delay_ms,
            },
            "batching_off": {"max_batch_size": 1, "max_queue_delay_ms": 0.0},
        }
        results: dict[str, dict[str, Any]] = {}
        for name, batching in arms.items():
            section = serve_section(batching=batching)
            config_path = write_serve_config(tmp / f"{name}.yaml", **section)
            results[name] = search_arm(name, registry, config_path, args, texts)
            results[name]["serve_config"] = section
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
