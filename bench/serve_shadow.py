"""Shadow traffic overhead: live p99 with a `shadow` alias mirrored vs without, same load.

    python bench/serve_shadow.py                      # builds demo-shaped v1 + v2 models
    python bench/serve_shadow.py --round-s 30 --rounds 3
    python bench/serve_shadow.py --quick              # a smoke run of a minute or so

One `lmforge serve` child process (prediction cache off, so every request reaches the model),
one registry copy holding v1 (production) and v2 (a second random init of the same shape):

1. capacity C: the highest open-loop rate with p99 <= --p99-ms, success >= 99.9 % and the
   server keeping up (`lmforge.bench.capacity.find_capacity`), with no shadow alias;
2. a warm-up with the shadow on (its engine's first calls are not measured);
3. rounds of --round-s seconds at --load-fraction x C (70 %), alternating shadow OFF and ON,
   --rounds of each, in pairs OFF ON | ON OFF | ... so that a slow drift of the machine hits
   both arms alike. Every round sends the same Poisson schedule (same seed) and the same texts.
   The shadow is toggled through the registry (`shadow` alias -> v2, then removed), and a round
   starts only after GET /v1/models shows the server picked the change up.

Latency is measured from each request's scheduled send time (open loop, no coordinated
omission). Per arm the rounds are pooled: p50/p99 of all their requests. The p99 of a short
round at 70 % load swings a lot on a small shared machine, so the report also gives an A/A
figure: the off rounds split in two interleaved halves (1st, 3rd, ... vs 2nd, 4th, ...) and
compared with each other as the arms are. An on-vs-off increase inside that spread is noise.

--sample sets serve.shadow.sample (the share of requests mirrored); --in-process runs the
shadow model on a thread of the server (serve.shadow.isolate: false) instead of in its own
idle-priority process. Prints one JSON
object on stdout: the capacity, both arms, the p99 increase (target <= 5 %), and the shadow's
compared / dropped / failed copies (deltas of `lmforge_shadow_total` on GET /metrics);
progress goes to stderr. The load generator runs in this process and shares the cores with
the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from lmforge.bench.capacity import stderr_log as log
from lmforge.bench.openloop import OpenLoopResult, run_open_loop_sync
from lmforge.bench.server_process import ServerProcess
from lmforge.bench.serving_setup import (
    START_WARMUP_S,
    add_load_rate_args,
    add_model_args,
    add_second_version,
    fraction,
    load_average,
    load_rate,
    merge_open_loop,
    open_loop_options,
    parse_with_quick,
    prepare_registry_copy,
    request_texts,
    warm_up,
    write_serve_config,
)
from lmforge.config import ServeConfig
from lmforge.registry import ModelRegistry, RegistryError

TARGET_P99_INCREASE_PCT = 5.0
PICKUP_TIMEOUT_S = 60.0  # first shadow enable loads v2: seconds on a busy machine
DRAIN_TIMEOUT_S = 15.0
POLL_S = 0.05
SHADOW_METRIC = re.compile(
    r'^lmforge_shadow_total\{(?=[^}]*model="(?P<model>[^"]*)")(?=[^}]*outcome="(?P<outcome>[^"]*)")'
    r"[^}]*\}\s+(?P<value>\S+)$"
)
OUTCOMES = ("compared", "dropped", "failed")
QUICK = {"round_s": 3.0, "trial_s": 1.5, "warmup_s": 1.0, "settle_s": 0.5, "max_trials": 5}


# -- server state ------------------------------------------------------------------------------
def served_shadow(client: httpx.Client, url: str, name: str) -> int | None:
    """The version the server mirrors to right now (None: no shadow)."""
    for model in client.get(url + "/v1/models").json()["models"]:
        if model["name"] == name:
            return model.get("shadow")
    raise RegistryError(f"the server does not serve {name!r}")


def set_shadow(
    client: httpx.Client, url: str, registry: ModelRegistry, name: str, version: int | None
) -> float:
    """Point (or remove) the shadow alias; wait until the server shows it; seconds it took."""
    began = time.perf_counter()
    if version is None:
        with contextlib.suppress(RegistryError):  # already off
            registry.remove_alias(name, "shadow")
    else:
        registry.set_alias(name, "shadow", version)
    deadline = began + PICKUP_TIMEOUT_S
    while served_shadow(client, url, name) != version:  # bounded by the deadline below
        if time.perf_counter() > deadline:
            raise TimeoutError(
                f"the server did not pick up shadow -> {version} within {PICKUP_TIMEOUT_S:.0f} s"
            )
        time.sleep(POLL_S)
    return time.perf_counter() - began


def shadow_counts(client: httpx.Client, url: str, name: str) -> dict[str, float]:
    """`lmforge_shadow_total{model=name}` by outcome, from GET /metrics (0 when absent)."""
    counts = dict.fromkeys(OUTCOMES, 0.0)
    for line in client.get(url + "/metrics").text.splitlines():
        match = SHADOW_METRIC.match(line)
        if match and match["model"] == name and match["outcome"] in counts:
            counts[match["outcome"]] = float(match["value"])
    return counts


def wait_shadow_drained(
    client: httpx.Client, url: str, name: str, before: dict[str, float], copies: int
) -> dict[str, int]:
    """Wait until every mirrored copy of the round is accounted for; the round's deltas.

    Each successful live request submits exactly one copy (sample 1.0), which ends compared,
    dropped or failed; the queue may still hold some when the round's load stops.
    """
    deadline = time.perf_counter() + DRAIN_TIMEOUT_S
    while True:  # bounded by the deadline
        now = shadow_counts(client, url, name)
        delta = {k: round(now[k] - before[k]) for k in OUTCOMES}
        if sum(delta.values()) >= copies or time.perf_counter() > deadline:
            return delta
        time.sleep(POLL_S * 4)


# -- rounds ------------------------------------------------------------------------------------
def round_order(rounds: int) -> list[str]:
    """OFF ON | ON OFF | OFF ON ...: alternating, each arm first in half of the pairs."""
    return [arm for i in range(rounds) for arm in (("off", "on") if i % 2 == 0 else ("on", "off"))]


def increase_pct(on: float | None, off: float | None) -> float | None:
    if on is None or off is None or not off > 0 or math.isnan(on) or math.isnan(off):
        return None
    return round((on - off) / off * 100.0, 2)


def run_rounds(
    url: str,
    texts: list[str],
    registry: ModelRegistry,
    name: str,
    candidate: int,
    rate: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    load_kw = open_loop_options(args)  # every round: the same Poisson schedule and texts
    arms: dict[str, list[OpenLoopResult]] = {"off": [], "on": []}
    rounds: list[dict[str, Any]] = []
    shadow_total = dict.fromkeys(OUTCOMES, 0)
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        if args.warmup_s > 0:  # the shadow engine's first calls (allocations) are not measured
            took = set_shadow(client, url, registry, name, candidate)
            log(f"shadow on (picked up in {took:.2f} s); warm-up {args.warmup_s:.0f} s ...")
            run_open_loop_sync(url, rate, args.warmup_s, texts, **load_kw)
        state: int | None = -1  # unknown: the first round sets it
        for i, arm in enumerate(round_order(args.rounds)):
            wanted = candidate if arm == "on" else None
            pickup = None
            if wanted != state:
                pickup = set_shadow(client, url, registry, name, wanted)
                state = wanted
            time.sleep(args.settle_s)  # let the previous round's shadow backlog clear
            before = shadow_counts(client, url, name)
            result = run_open_loop_sync(url, rate, args.round_s, texts, **load_kw)
            arms[arm].append(result)
            copies = wait_shadow_drained(client, url, name, before, result.ok if wanted else 0)
            for key in OUTCOMES:
                shadow_total[key] += copies[key] if arm == "on" else 0
            s = result.summary()
            log(
                f"  round {i + 1} shadow {arm:3s}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
                f"ok {s['ok']}/{s['scheduled']}, failures {s['failures']}, shadow {copies}"
            )
            rounds.append(
                {
                    "round": i + 1,
                    "shadow": arm,
                    "pickup_s": None if pickup is None else round(pickup, 3),
                    **{k: s[k] for k in ("scheduled", "ok", "failed", "success", "failures")},
                    **{k: s[k] for k in ("p50_ms", "p99_ms", "max_ms", "late_sends")},
                    "shadow_copies": copies,
                }
            )
        set_shadow(client, url, registry, name, None)
    summaries = {arm: merge_open_loop(results).summary() for arm, results in arms.items()}
    for arm, results in arms.items():
        per_round = sorted(r.summary()["p99_ms"] for r in results)
        summaries[arm]["round_p99_ms"] = per_round
    mirrored = summaries["on"]["ok"]
    summaries["on"]["shadow"] = {
        **shadow_total,
        "mirrored_requests": mirrored,
        "compared_share": round(shadow_total["compared"] / mirrored, 4) if mirrored else None,
    }
    return {"arms": summaries, "rounds": rounds, "arm_results": arms}


def aa_spread(off_rounds: list[OpenLoopResult]) -> dict[str, Any] | None:
    """The off rounds against each other: two interleaved halves, pooled like the arms."""
    if len(off_rounds) < 2:
        return None
    first = merge_open_loop(off_rounds[0::2]).summary()
    second = merge_open_loop(off_rounds[1::2]).summary()
    return {
        "p99_ms": [first["p99_ms"], second["p99_ms"]],
        "p99_change_pct": increase_pct(second["p99_ms"], first["p99_ms"]),
        "p50_change_pct": increase_pct(second["p50_ms"], first["p50_ms"]),
        "note": "shadow off in both halves: how far p99 moves with no change at all",
    }


# -- command line ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)  # --registry is copied: the run moves its shadow alias
    add_load_rate_args(parser, load_fraction=0.7)
    parser.add_argument("--round-s", type=float, default=15.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per arm (>= 2)")
    parser.add_argument("--settle-s", type=float, default=1.0, help="pause before each round")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="shadow-on warm-up load")
    parser.add_argument("--queue-size", type=int, help="serve.shadow.queue_size (default 256)")
    parser.add_argument(
        "--sample", type=fraction, help="serve.shadow.sample: share of requests mirrored (1.0)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="the shadow model on a server thread (serve.shadow.isolate: false)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s rounds, 1.5 s trials, 5 trials at most (explicit options win)",
    )
    args = parse_with_quick(parser, argv, QUICK)
    if args.rounds < 1 or args.round_s <= 0:  # --load-fraction is checked by its type
        parser.error("--rounds >= 1 and --round-s > 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    texts, texts_from = request_texts(args.eval)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-shadow-") as tmp_name:
        tmp = Path(tmp_name)
        registry_dir, name, model_info = prepare_registry_copy(args, tmp, texts)
        candidate = add_second_version(registry_dir, name)
        registry = ModelRegistry(registry_dir, create=False)
        baseline = registry.resolve(name, "production").version
        shadow: dict[str, Any] = {"isolate": not args.in_process}
        if args.queue_size is not None:
            shadow["queue_size"] = args.queue_size
        if args.sample is not None:
            shadow["sample"] = args.sample
        overrides: dict[str, Any] = {"shadow": shadow}
        config_path = write_serve_config(tmp / "serve.yaml", **overrides)
        log(f"starting the server (live v{baseline}, shadow candidate v{candidate}) ...")
        with ServerProcess(registry_dir, model=name, config_path=config_path) as server:
            if args.rate is None:  # the search's first trial must not pay for first calls
                warm_up(server.url, texts, START_WARMUP_S)
            began = time.perf_counter()
            capacity, rate = load_rate(server.url, texts, args, log=log)
            if capacity is not None:  # this report's format: no second "rate", the search's time
                search_s = round(time.perf_counter() - began, 1)
                capacity = {k: v for k, v in capacity.items() if k != "rate"}
                capacity["search_s"] = search_s
            log(f"rounds at {rate:.1f} req/s, {args.round_s:.0f} s each ...")
            load_before = load_average()
            measured = run_rounds(server.url, texts, registry, name, candidate, rate, args)
    off, on = measured["arms"]["off"], measured["arms"]["on"]
    p99_increase = increase_pct(on["p99_ms"], off["p99_ms"])
    noise = aa_spread(measured["arm_results"]["off"])
    ok = off["ok"] + on["ok"]
    scheduled = off["scheduled"] + on["scheduled"]
    report = {
        "benchmark": "serve_shadow",
        "objective": {"p99_ms": args.p99_ms, "min_success": 0.999},
        "model": {**model_info, "name": name, "live": baseline, "shadow": candidate},
        "texts": {"source": texts_from, "count": len(texts)},
        "cpus": os.cpu_count(),
        "capacity": capacity,
        "load_fraction": None if args.rate is not None else args.load_fraction,
        "rate": round(rate, 1),
        "round_s": args.round_s,
        "rounds_per_arm": args.rounds,
        "connections": args.connections,
        "shadow_queue_size": args.queue_size or ServeConfig().shadow.queue_size,
        "shadow_sample": ServeConfig().shadow.sample if args.sample is None else args.sample,
        "shadow_model": "thread in the server" if args.in_process else "own process, idle priority",
        "shadow_off": off,
        "shadow_on": on,
        "rounds": measured["rounds"],
        "p50_increase_pct": increase_pct(on["p50_ms"], off["p50_ms"]),
        "p99_increase_pct": p99_increase,
        # Robust to the odd round with a stall: the median round's p99 per arm.
        "median_round_p99_ms": {
            "off": statistics.median(off["round_p99_ms"]),
            "on": statistics.median(on["round_p99_ms"]),
        },
        "median_round_p99_increase_pct": increase_pct(
            statistics.median(on["round_p99_ms"]), statistics.median(off["round_p99_ms"])
        ),
        "aa_noise": noise,
        "target_p99_increase_pct": TARGET_P99_INCREASE_PCT,
        "meets_target": p99_increase is not None and p99_increase <= TARGET_P99_INCREASE_PCT,
        "success": round(ok / scheduled, 6) if scheduled else None,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
