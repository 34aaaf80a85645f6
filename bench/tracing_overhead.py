"""Cost of tracing per request: disabled vs sampled at 1 % (the default) vs every request.

Prints ONE JSON object on stdout (progress goes to stderr):

    python bench/tracing_overhead.py                    # --mode server, a few minutes
    python bench/tracing_overhead.py --quick            # smoke run, about a minute
    python bench/tracing_overhead.py --mode pipeline    # the in-process ASGI pipeline only
    python bench/tracing_overhead.py --mode both --rate 150   # + an open-loop arm at 150 req/s

The issue's target: tracing at the default 1 % sampling adds <= 5 % per request.

--mode server (default): the real `lmforge serve`
-------------------------------------------------

Three `lmforge serve` child processes on the same model (a demo-shaped random-init model built
in a temp folder, or --registry's production model) and the same serve config except for
`serve.tracing` (written by `lmforge.bench.serving_setup.write_serve_config`: prediction cache
off so every request reaches the model, batching and the rest at lmforge's defaults,
serve.backend.threads = --threads and the same thread-pool caps in every server):

- disabled:   tracing.enabled false
- ratio_0.01: enabled, sample_ratio 0.01, exporter none (lmforge's default)
- ratio_1.0:  enabled, sample_ratio 1.0, exporter none (every request traced: the full price)

All three are up for the whole run, so an idle one costs every arm alike. The latency phase
runs --server-rounds rounds; in each, every arm (in an order rotated per round) gets
--server-requests sequential single-text POST /v1/predict requests over one keep-alive
connection (`lmforge.bench.http1.Http1Connection`, a lean client), the same texts in the same
order for every arm of a round. Per arm: p50/p90/p99/mean latency (µs, timed in this process)
and the server's CPU time per request: utime + stime from /proc/PID/stat of the server (and any
child it has) read just before and after each of its blocks, summed over the rounds. On a
shared, noisy machine CPU time per request is the most robust estimator (wall time mostly
measures the neighbours); `cpu_us_per_request_whole_phase` also counts the server's idle work
while the other arms ran.

`overhead_0.01_vs_disabled` and `overhead_1.0_vs_disabled` give the ratios and absolute
differences (µs) of p50, mean and CPU per request, the median of per-request differences
paired by round and text, and the median (and quartiles) of the per-round p50 ratios: the
spread of those is the noise floor a small ratio must be read against. At 1 % the expected
cost is far below that floor, so `estimated_0.01_from_1.0` also derives it from the 1.0 arm:
1 + 0.01 x (ratio_1.0 - 1), assuming an unsampled request costs what a disabled one does
(--mode pipeline's micro test: ~0.5 µs). A sampled request among 99 unsampled ones runs with
colder caches than in the 1.0 arm, so this is a lower bound, not a measurement.

With --rate R, a throughput phase follows: open-loop Poisson load at R req/s (pick ~60 % of
the server's capacity, e.g. from bench/serve_load.py) for --rate-s seconds per arm per round,
--rate-rounds rounds, order rotated; per arm p50/p99, achieved rate and server CPU per answered
request.

--mode pipeline: a minimal in-process ASGI pipeline
---------------------------------------------------

The pipeline is a minimal Starlette app behind a plain ASGI middleware, the shape the real
server has: the middleware wraps each request in `Tracing.request_span` (attributes passed as a
callable, W3C headers scanned) and puts the status on the span; the endpoint reads and parses
a small JSON body and opens two child spans ("queue_wait", "model_call") around trivial work.
Requests are driven in-process: the ASGI app is awaited directly with a prepared scope and
receive/send callables, so no sockets or HTTP parsing dilute (or add noise to) the difference.

Arms, each its own app and `Tracing` (exporter "none": spans are made and recorded, but no
exporter thread adds unrelated work):

- bare: no middleware and no span calls at all (the floor)
- disabled: `TracingConfig(enabled=False)`; every call is made and returns the no-op
- ratio_0.01: enabled, sample_ratio 0.01 (the default)
- ratio_1.0: enabled, every request traced

Each round runs every arm for `--requests` requests, in an order rotated per round, so the
drift of a shared machine's load hits all arms alike; `--warmup` untimed requests per arm come
first. Reported per arm: the median over rounds of wall µs/request and of process-CPU
µs/request, the best (lowest) round's CPU µs/request, and the share of requests sampled.
`overhead_0.01_vs_disabled` gives the ratio of the medians (wall and CPU), the median of
per-round wall ratios and the ratio of the best rounds' CPU.
On a busy shared machine wall time mostly measures the neighbours: trust CPU, best rounds.

`per_request` runs the disabled and 0.01 arms again, timing each request on its own, and
reports the median µs of disabled requests and of the 0.01 arm's unsampled and sampled
requests; from those, overhead = share x (sampled - disabled) + (1 - share) x (unsampled -
disabled), over disabled. Medians per class are robust where totals drown in a shared
machine's noise, and they show where the cost sits: a sampled request pays the SDK's full
span cost, made worse by running rarely (cold caches), an unsampled one almost nothing.

`micro` times the span calls alone (no ASGI), best of 5 runs: `request_span` + two `span`
with tracing disabled, the same unsampled (what a 99 % request pays), and, for comparison,
the same three spans made by the SDK's tracer with a non-recording sampler (what the fast
path avoids).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lmforge.bench.capacity import stderr_log
from lmforge.bench.http1 import Http1Connection
from lmforge.bench.openloop import OpenLoopResult, run_on_fast_loop, run_open_loop_sync
from lmforge.bench.procstats import descendants
from lmforge.bench.server_process import ServerProcess
from lmforge.bench.serving_setup import (
    add_model_args,
    bench_env,
    latency_stats,
    load_average,
    merge_open_loop,
    prepare_model,
    request_texts,
    write_serve_config,
)
from lmforge.bench.stats import percentile
from lmforge.config import TracingConfig
from lmforge.serve.tracing import Tracing, mark_http_status

TARGET_RATIO = 1.05  # the target: tracing at 1 % adds <= 5 % per request
PREDICT_PATH = "/v1/predict"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# serve.tracing of each server arm; everything else in the config is the same.
SERVER_ARMS: dict[str, dict[str, Any]] = {
    "disabled": {"enabled": False},
    "ratio_0.01": {"enabled": True, "sample_ratio": 0.01, "exporter": "none"},
    "ratio_1.0": {"enabled": True, "sample_ratio": 1.0, "exporter": "none"},
}

BODY = json.dumps({"texts": ["The delivery was late.", "Great phone."]}).encode()
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"user-agent", b"bench"),
]
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/predict",
    "raw_path": b"/v1/predict",
    "root_path": "",
    "query_string": b"",
    "headers": HEADERS,
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def log(message: str) -> None:
    stderr_log(f"[{time.strftime('%H:%M:%S')}] {message}")


# --- --mode pipeline ---------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.requests = 0
        self.sampled = 0


class TracingMiddleware:
    """The request span around the app, as the real middleware would place it."""

    def __init__(self, app: Any, tracing: Tracing, counter: Counter) -> None:
        self.app = app
        self.tracing = tracing
        self.counter = counter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        def attributes() -> dict[str, Any]:
            return {"http.request.method": scope["method"], "url.path": scope["path"]}

        name = f"{scope['method']} {scope['path']}"
        with self.tracing.request_span(name, scope["headers"], attributes) as span:
            await self.app(scope, receive, send_status)
            mark_http_status(span, status)
            self.counter.requests += 1
            if span.is_recording():
                self.counter.sampled += 1


def build_app(tracing: Tracing | None, counter: Counter) -> Any:
    async def predict(request: Request) -> JSONResponse:
        texts = json.loads(await request.body())["texts"]
        if tracing is None:
            labels = [len(t) % 3 for t in texts]
        else:
            with tracing.span("queue_wait", lambda: {"texts": len(texts)}):
                pass
            with tracing.span("model_call"):
                labels = [len(t) % 3 for t in texts]
        return JSONResponse({"predictions": labels})

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])
    if tracing is None:
        return app
    return TracingMiddleware(app, tracing, counter)


async def drive(app: Any, n: int) -> None:
    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        pass

    for _ in range(n):
        await app(dict(SCOPE), receive, send)


def make_arms() -> dict[str, tuple[Any, Counter, Tracing | None]]:
    arms: dict[str, tuple[Any, Counter, Tracing | None]] = {}
    configs = {
        "bare": None,
        "disabled": TracingConfig(enabled=False),
        "ratio_0.01": TracingConfig(sample_ratio=0.01, exporter="none"),
        "ratio_1.0": TracingConfig(sample_ratio=1.0, exporter="none"),
    }
    for name, cfg in configs.items():
        counter = Counter()
        tracing = Tracing(cfg) if cfg is not None else None
        arms[name] = (build_app(tracing, counter), counter, tracing)
    return arms


async def run_rounds(args: argparse.Namespace) -> dict[str, Any]:
    arms = make_arms()
    names = list(arms)
    for name in names:
        await drive(arms[name][0], args.warmup)
        arms[name][1].requests = arms[name][1].sampled = 0
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            w0, c0 = time.perf_counter(), time.process_time()
            await drive(arms[name][0], args.requests)
            w1, c1 = time.perf_counter(), time.process_time()
            wall[name].append((w1 - w0) / args.requests * 1e6)
            cpu[name].append((c1 - c0) / args.requests * 1e6)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {wall[n][-1]:.1f} µs" for n in names),
            file=sys.stderr,
        )
    per_round = [a / b for a, b in zip(wall["ratio_0.01"], wall["disabled"], strict=True)]
    result: dict[str, Any] = {
        "arms": {
            n: {
                "wall_us_per_request": round(statistics.median(wall[n]), 2),
                "cpu_us_per_request": round(statistics.median(cpu[n]), 2),
                "cpu_us_best_round": round(min(cpu[n]), 2),
                "wall_us_rounds": [round(x, 2) for x in wall[n]],
                "sampled_share": (
                    round(arms[n][1].sampled / arms[n][1].requests, 4)
                    if arms[n][1].requests
                    else None
                ),
            }
            for n in names
        },
        "overhead_0.01_vs_disabled": {
            "wall_ratio_of_medians": round(
                statistics.median(wall["ratio_0.01"]) / statistics.median(wall["disabled"]), 4
            ),
            "cpu_ratio_of_medians": round(
                statistics.median(cpu["ratio_0.01"]) / statistics.median(cpu["disabled"]), 4
            ),
            "median_of_round_ratios": round(statistics.median(per_round), 4),
            "cpu_ratio_of_best_rounds": round(min(cpu["ratio_0.01"]) / min(cpu["disabled"]), 4),
        },
        "overhead_1.0_vs_disabled_wall": round(
            statistics.median(wall["ratio_1.0"]) / statistics.median(wall["disabled"]), 4
        ),
    }
    for _, _, tracing in arms.values():
        if tracing is not None:
            tracing.shutdown()
    return result


async def per_request(args: argparse.Namespace) -> dict[str, Any]:
    """Times every request of the disabled and 0.01 arms on its own and splits the 0.01 arm
    into its sampled and unsampled requests: medians per class resist a busy machine's noise
    far better than totals, and show where the overhead comes from."""
    arms = make_arms()
    apps = {n: arms[n] for n in ("disabled", "ratio_0.01")}
    times: dict[str, list[float]] = {"disabled": [], "unsampled": [], "sampled": []}

    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        pass

    clock = time.perf_counter
    for r in range(args.rounds):
        order = list(apps) if r % 2 == 0 else list(reversed(apps))
        for name in order:
            app, counter, _ = apps[name]
            for _ in range(args.requests):
                before = counter.sampled
                t0 = clock()
                await app(dict(SCOPE), receive, send)
                us = (clock() - t0) * 1e6
                if name == "disabled":
                    times["disabled"].append(us)
                else:
                    times["sampled" if counter.sampled > before else "unsampled"].append(us)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    share = len(times["sampled"]) / (len(times["sampled"]) + len(times["unsampled"]))
    extra = share * (med.get("sampled", med["disabled"]) - med["disabled"]) + (1 - share) * (
        med["unsampled"] - med["disabled"]
    )
    for _, _, tracing in arms.values():
        if tracing is not None:
            tracing.shutdown()
    return {
        "median_us": {k: round(v, 2) for k, v in med.items()},
        "requests": {k: len(v) for k, v in times.items()},
        "sampled_share": round(share, 4),
        "overhead_ratio_0.01_vs_disabled": round(1 + extra / med["disabled"], 4),
        "unsampled_overhead_ratio": round(med["unsampled"] / med["disabled"], 4),
    }


def micro(n: int) -> dict[str, float]:
    """µs for request_span + two spans, unsampled, vs the SDK's own non-recording spans."""
    ours = Tracing(TracingConfig(sample_ratio=0.0, exporter="none"))
    off = Tracing(TracingConfig(enabled=False))
    headers = HEADERS

    def spans(tracing: Tracing) -> None:
        with tracing.request_span("POST /v1/predict", headers, None):
            with tracing.span("queue_wait"):
                pass
            with tracing.span("model_call"):
                pass

    def fast() -> None:
        spans(ours)

    def disabled() -> None:
        spans(off)

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)), shutdown_on_exit=False)
    tracer = provider.get_tracer("bench")

    def sdk() -> None:
        with tracer.start_as_current_span("POST /v1/predict", attributes={"a": 1}):
            with tracer.start_as_current_span("queue_wait"):
                pass
            with tracer.start_as_current_span("model_call"):
                pass

    out = {}
    arms = (
        ("disabled_us", disabled),
        ("unsampled_fast_path_us", fast),
        ("sdk_nonrecording_us", sdk),
    )
    for name, fn in arms:
        best = float("inf")
        for _ in range(5):  # best of 5: the least disturbed by other load
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        out[name] = round(best, 3)
    ours.shutdown()
    provider.shutdown()
    return out


# --- --mode server -----------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (all their threads), from /proc/PID/stat; a gone pid adds 0."""
    ticks = 0
    for pid in pids:
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # The command name (field 2) may hold spaces: fields after the last ')' start at 3.
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return ticks / CLOCK_TICKS


def server_pids(server: ServerProcess) -> list[int]:
    """The server process and its children (a supervisor's workers, should it have any)."""
    assert server.proc is not None
    return [server.proc.pid, *descendants(server.proc.pid)]


def rotate(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def request_body(text: str) -> bytes:
    # Encoded as the open-loop generator encodes it, so both phases send the same bytes.
    return json.dumps({"texts": [text]}, ensure_ascii=False).encode()


async def sequential_rounds(
    urls: dict[str, str],
    pids: dict[str, list[int]],
    bodies: list[bytes],
    args: argparse.Namespace,
) -> tuple[dict[str, list[list[float]]], dict[str, list[float]], dict[str, float]]:
    """Per arm: latencies (s) and server CPU (s) of each round's block, CPU of the phase."""
    perf = time.perf_counter
    names = list(urls)
    conns = {n: Http1Connection(url + PREDICT_PATH, timeout_s=30.0) for n, url in urls.items()}

    async def post(name: str, body: bytes) -> float:
        began = perf()
        status = await conns[name].post_json(body)
        took = perf() - began
        if status != 200:
            raise RuntimeError(f"{name}: status {status} for a sequential request")
        return took

    try:
        for name in names:  # first calls: allocations, connections, code paths
            for i in range(args.server_warmup):
                await post(name, bodies[i % len(bodies)])
        samples: dict[str, list[list[float]]] = {n: [] for n in names}
        block_cpu: dict[str, list[float]] = {n: [] for n in names}
        phase_start = {n: cpu_seconds(pids[n]) for n in names}
        per_round = args.server_requests
        for r in range(args.server_rounds):
            block = [bodies[(r * per_round + j) % len(bodies)] for j in range(per_round)]
            for name in rotate(names, r):
                # Unrecorded: reopens a connection the server closed while the others ran.
                await post(name, block[0])
                c0 = cpu_seconds(pids[name])
                samples[name].append([await post(name, body) for body in block])
                block_cpu[name].append(cpu_seconds(pids[name]) - c0)
            log(
                f"  round {r + 1}/{args.server_rounds}: "
                + ", ".join(f"{n} {statistics.median(samples[n][-1]) * 1e6:.0f}" for n in names)
                + " µs (p50)"
            )
        phase_cpu = {n: cpu_seconds(pids[n]) - phase_start[n] for n in names}
    finally:
        for conn in conns.values():
            await conn.close()
    return samples, block_cpu, phase_cpu


def latency_us(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "n": len(ordered),
        "p50_us": round(percentile(ordered, 50) * 1e6, 1),
        "p90_us": round(percentile(ordered, 90) * 1e6, 1),
        "p99_us": round(percentile(ordered, 99) * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
    }


def compare(
    arm: str,
    base: str,
    samples: dict[str, list[list[float]]],
    block_cpu: dict[str, list[float]],
    arms: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """`arm` against `base`: ratios and µs differences of p50, mean and CPU per request."""
    a, b = arms[arm], arms[base]
    # Same round, same text: a paired difference cancels the text mix and slow drift.
    pairs = [
        x - y
        for ra, rb in zip(samples[arm], samples[base], strict=True)
        for x, y in zip(ra, rb, strict=True)
    ]
    round_ratios = sorted(
        statistics.median(ra) / statistics.median(rb)
        for ra, rb in zip(samples[arm], samples[base], strict=True)
    )
    cpu_a, cpu_b = a["cpu_us_per_request"], b["cpu_us_per_request"]
    # Same round, same texts, equal request counts: the ratio of the blocks' CPU times.
    cpu_ratios = sorted(
        x / y for x, y in zip(block_cpu[arm], block_cpu[base], strict=True) if y > 0
    )
    return {
        "p50_ratio": round(a["latency"]["p50_us"] / b["latency"]["p50_us"], 4),
        "p50_diff_us": round(a["latency"]["p50_us"] - b["latency"]["p50_us"], 1),
        "mean_ratio": round(a["latency"]["mean_us"] / b["latency"]["mean_us"], 4),
        "mean_diff_us": round(a["latency"]["mean_us"] - b["latency"]["mean_us"], 1),
        "paired_median_diff_us": round(statistics.median(pairs) * 1e6, 1),
        "median_of_round_p50_ratios": round(statistics.median(round_ratios), 4),
        "round_p50_ratio_quartiles": [
            round(percentile(round_ratios, 25), 4),
            round(percentile(round_ratios, 75), 4),
        ],
        "cpu_ratio": round(cpu_a / cpu_b, 4) if cpu_b > 0 else None,
        "cpu_diff_us": round(cpu_a - cpu_b, 1),
        "median_of_round_cpu_ratios": (
            round(statistics.median(cpu_ratios), 4) if cpu_ratios else None
        ),
        "round_cpu_ratio_quartiles": (
            [round(percentile(cpu_ratios, 25), 4), round(percentile(cpu_ratios, 75), 4)]
            if cpu_ratios
            else None
        ),
    }


def throughput_rounds(
    urls: dict[str, str],
    pids: dict[str, list[int]],
    texts: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Open-loop Poisson load at --rate per arm, rounds rotated; p50/p99 and CPU/request."""
    names = list(urls)
    runs: dict[str, list[OpenLoopResult]] = {n: [] for n in names}
    cpu = dict.fromkeys(names, 0.0)
    for r in range(args.rate_rounds):
        for name in rotate(names, r):
            c0 = cpu_seconds(pids[name])
            result = run_open_loop_sync(
                urls[name],
                args.rate,
                args.rate_s,
                texts,
                connections=args.connections,
                timeout_s=args.timeout_s,
                arrival="poisson",
                seed=r,  # the same arrivals for every arm of a round
            )
            cpu[name] += cpu_seconds(pids[name]) - c0
            runs[name].append(result)
            log(
                f"  open loop round {r + 1}/{args.rate_rounds} {name}: "
                f"p50 {result.latency_ms(50):.2f} ms, p99 {result.latency_ms(99):.2f} ms, "
                f"{result.ok}/{result.scheduled} ok"
            )
    out: dict[str, Any] = {"rate": args.rate, "seconds_per_arm_per_round": args.rate_s}
    arms: dict[str, Any] = {}
    for name in names:
        merged = merge_open_loop(runs[name])
        arms[name] = {
            "scheduled": merged.scheduled,
            "ok": merged.ok,
            "success": round(merged.success, 6),
            "achieved_rate": round(merged.achieved_rate, 2),
            **latency_stats(merged.latencies_s),
            "cpu_us_per_request": round(cpu[name] / max(merged.ok, 1) * 1e6, 1),
        }
    out["arms"] = arms
    base = arms["disabled"]
    for name in names:
        if name == "disabled":
            continue
        arm = arms[name]
        out[f"overhead_{name.removeprefix('ratio_')}_vs_disabled"] = {
            "p50_ratio": _ratio(arm["p50_ms"], base["p50_ms"]),
            "p99_ratio": _ratio(arm["p99_ms"], base["p99_ms"]),
            "cpu_ratio": _ratio(arm["cpu_us_per_request"], base["cpu_us_per_request"]),
            "cpu_diff_us": round(arm["cpu_us_per_request"] - base["cpu_us_per_request"], 1),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def start_servers(
    registry: Path, configs: dict[str, Path], model: str | None
) -> dict[str, ServerProcess]:
    """Start every arm's server at once (threads: each start mostly waits for its child)."""
    servers = {
        name: ServerProcess(
            registry, host="127.0.0.1", model=model, config_path=path, startup_timeout_s=300
        )
        for name, path in configs.items()
    }
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = {name: pool.submit(server.start) for name, server in servers.items()}
        errors = []
        for name, future in futures.items():
            try:
                future.result()
            except Exception as exc:  # report every failure, stop the rest below
                errors.append(f"{name}: {exc}")
    if errors:
        for server in servers.values():
            server.stop()
        raise RuntimeError("a server did not start:\n" + "\n".join(errors))
    return servers


def run_server(args: argparse.Namespace) -> dict[str, Any]:
    texts, source = request_texts(args.eval)
    bodies = [request_body(t) for t in texts]
    with tempfile.TemporaryDirectory(prefix="lmforge-tracing-bench-") as tmp:
        registry, model_info = prepare_model(args, Path(tmp), texts, log=log)
        configs = {
            name: write_serve_config(
                Path(tmp) / f"serve-{name}.yaml",
                tracing=tracing,
                backend={"threads": args.threads},
            )
            for name, tracing in SERVER_ARMS.items()
        }
        log(f"starting {len(configs)} servers: {', '.join(configs)} ...")
        began = time.perf_counter()
        servers = start_servers(registry, configs, args.model)
        try:
            log(f"  ready in {time.perf_counter() - began:.1f} s")
            urls = {name: s.url for name, s in servers.items()}
            pids = {name: server_pids(s) for name, s in servers.items()}
            load_before = load_average()
            log(
                f"latency: {args.server_rounds} rounds x {args.server_requests} sequential "
                f"requests per arm, {args.server_warmup} warm-up requests first"
            )
            samples, block_cpu, phase_cpu = run_on_fast_loop(
                sequential_rounds(urls, pids, bodies, args)
            )
            arms: dict[str, dict[str, Any]] = {}
            for name in urls:
                flat = [x for block in samples[name] for x in block]
                cpu_total = sum(block_cpu[name])
                arms[name] = {
                    "tracing": SERVER_ARMS[name],
                    "latency": latency_us(flat),
                    "cpu_us_per_request": round(cpu_total / len(flat) * 1e6, 1),
                    "cpu_us_per_request_whole_phase": round(phase_cpu[name] / len(flat) * 1e6, 1),
                    "cpu_s": round(cpu_total, 2),
                    "cpu_us_per_request_rounds": [
                        round(c / args.server_requests * 1e6) for c in block_cpu[name]
                    ],
                }
            throughput = (
                throughput_rounds(urls, pids, texts, args) if args.rate is not None else None
            )
            load_after = load_average()
        finally:
            for server in servers.values():
                server.stop()
    o01 = compare("ratio_0.01", "disabled", samples, block_cpu, arms)
    o10 = compare("ratio_1.0", "disabled", samples, block_cpu, arms)
    estimated = {
        key: round(1 + 0.01 * (o10[key] - 1), 4)
        for key in ("p50_ratio", "mean_ratio", "cpu_ratio")
        if o10[key] is not None
    }
    return {
        "arms": arms,
        "overhead_0.01_vs_disabled": o01,
        "overhead_1.0_vs_disabled": o10,
        "estimated_0.01_from_1.0": estimated,
        "target_ratio": TARGET_RATIO,
        "meets_target": {
            "cpu": o01["cpu_ratio"] is not None and o01["cpu_ratio"] <= TARGET_RATIO,
            "p50": o01["p50_ratio"] <= TARGET_RATIO,
            "mean": o01["mean_ratio"] <= TARGET_RATIO,
        },
        "throughput": throughput,
        "model": model_info,
        "texts": {"source": source, "count": len(texts)},
        "config": {
            "requests_per_arm_per_round": args.server_requests,
            "rounds": args.server_rounds,
            "warmup_per_arm": args.server_warmup,
            "threads": args.threads,
            "serve": {"cache": "none", "backend.threads": args.threads, "rest": "defaults"},
            "clock_ticks_per_s": CLOCK_TICKS,
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "python": sys.version.split()[0],
        },
    }


# --- command line ------------------------------------------------------------------------------

QUICK = {
    "requests": 300,
    "rounds": 4,
    "warmup": 100,
    "micro": 5000,
    "server_requests": 100,
    "server_rounds": 8,
    "server_warmup": 30,
    "rate_s": 2.0,
    "rate_rounds": 2,
}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use a whole number >= 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r}: use a number > 0")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("--mode", choices=["server", "pipeline", "both"], default="server")
    parser.add_argument("--quick", action="store_true", help="short smoke run (~1 minute)")
    server = parser.add_argument_group("--mode server")
    add_model_args(server)
    server.add_argument("--threads", type=positive_int, default=1, help="torch threads/server")
    server.add_argument("--server-requests", type=positive_int, default=250, help="per round")
    server.add_argument("--server-rounds", type=positive_int, default=24)
    server.add_argument("--server-warmup", type=int, default=100, help="requests per arm")
    server.add_argument("--rate", type=positive_float, help="open-loop req/s (default: none)")
    server.add_argument("--rate-s", type=positive_float, default=5.0, help="per arm per round")
    server.add_argument("--rate-rounds", type=positive_int, default=4)
    server.add_argument("--connections", type=positive_int, default=64, help="open loop")
    server.add_argument("--timeout-s", type=positive_float, default=2.0, help="open loop")
    pipeline = parser.add_argument_group("--mode pipeline")
    pipeline.add_argument("--requests", type=positive_int, default=2000, help="per arm per round")
    pipeline.add_argument("--rounds", type=positive_int, default=10)
    pipeline.add_argument("--warmup", type=int, default=300, help="untimed requests per arm")
    pipeline.add_argument("--micro", type=positive_int, default=20000, help="micro iterations")
    args = parser.parse_args(argv)
    if args.quick:  # a second parse over the quick defaults: explicit options keep theirs
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    result = asyncio.run(run_rounds(args))
    result["per_request"] = asyncio.run(per_request(args))
    result["micro"] = micro(args.micro)
    result["config"] = {
        "requests_per_arm_per_round": args.requests,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "python": sys.version.split()[0],
    }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # Before torch is imported (the model build, the servers): pools are sized at import.
    os.environ.update(bench_env(args.threads))
    report: dict[str, Any] = {"mode": args.mode}
    if args.mode in ("server", "both"):
        report["server"] = run_server(args)
    if args.mode in ("pipeline", "both"):
        log("pipeline: in-process ASGI arms ...")
        report["pipeline"] = run_pipeline(args)
    print(json.dumps(report))
    return report


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through the `finally` blocks that stop the servers; the default
    # SIGTERM action would leave them running.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main()
