"""Framework overhead: lmforge's server vs the bare model call, a minimal FastAPI app, Ray Serve.

    python bench/serve_overhead.py                  # full run, about 5 minutes
    python bench/serve_overhead.py --quick          # smoke run, about 1-2 minutes
    python bench/serve_overhead.py --trial-s 8 --threads 1 --preset small

Same model (one folder, loaded by every arm), same request texts, same load generator, same
machine, one run. Four ways to answer a single-text classification request:

- bare:      `backend.predict([text])` called in this process: the model's own time;
- lmforge:   `lmforge serve` (child process) with lmforge's default serve config (dynamic
             batching on: max_batch_size 32, max_queue_delay_ms 2; tracing at its default
             sample ratio) except the prediction cache, which is off so every request
             reaches the model, and serve.backend.threads = --threads;
- fastapi:   a minimal FastAPI app written below (one POST /v1/predict, pydantic body, the
             backend's predict run in FastAPI's threadpool, no batching), on uvicorn with the
             options lmforge uses (httptools + uvloop, 1 process), in a child process;
- floor:     the least any HTTP server with a model thread can add, written below: a bare ASGI
             callable (no framework, no validation, no metrics) on the same uvicorn options,
             json.loads the body, runs `backend.predict` on one model thread, json.dumps the
             answer. It is measured in the latency phase only: lmforge's added p50 minus the
             floor's is what lmforge's own code costs;
- ray_serve: a Ray Serve deployment written below, 1 replica, `@serve.batch(max_batch_size=32,
             batch_wait_timeout_s=0.002)` calling the model on each batch (in a thread, so the
             replica's event loop keeps accepting requests, as lmforge's engine does), under
             `ray.init(num_cpus=2, include_dashboard=False)` in a child process, Ray's HTTP
             proxy on 127.0.0.1.

Every server gets --threads torch intra-op threads (default: half the cores, so the other half
runs the load generator and the HTTP layers) and the same thread-pool caps (OMP/MKL/Rayon), see
`lmforge.bench.serving_setup.bench_env`. All three servers are started first and stay up for
the whole run, so an idle one costs every arm the same.

Phases:

1. Latency (sequential): single-text requests one after another over one keep-alive HTTP/1.1
   connection per server (`lmforge.bench.http1`), timed in this process. Arms are alternated
   in --rounds rounds (rotating order), every arm sending the same texts in the same order, so
   noise from other work on the machine hits all arms alike. Reported: p50/p99 per arm and
   **added p50 = lmforge p50 - bare p50 (target <= 1 ms)**. Breakdown (unless --no-breakdown):
   lmforge's ASGI app called in-process (no socket, no HTTP parsing) with the same config (and,
   when that config sets a batch timer, again with max_queue_delay_ms = 0) separates the HTTP
   layer, the batch timer and the rest of the app; the floor arm separates what any server
   with a model thread pays from what lmforge's own code adds.
2. Capacity (unless --no-capacity): `lmforge.bench.capacity.find_capacity` per server, the
   highest Poisson open-loop rate with p99 <= --p99-ms and success >= 99.9 % (--trial-s per
   trial). Searches run one server after another (a search cannot be interleaved).
3. Saturation: open-loop load offered well above every server's capacity (--saturation-rate,
   default 2.5 x the highest capacity found) over --connections keep-alive connections, in
   --saturation-rounds rounds of one --trial-s trial per server (rotating order). Throughput is
   answered requests / seconds from the first send to the last answer; requests that waited in
   the client longer than --timeout-s are dropped unsent, so success is reported over sent ones.

Prints one JSON object on stdout (per-arm requests/s, p50/p99, success ratios, and the ratios
lmforge / Ray Serve, target >= 2x); progress goes to stderr. The load generator shares the
machine with the servers; its CPU time per trial is logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from lmforge.bench.capacity import stderr_log
from lmforge.bench.http1 import Http1Connection
from lmforge.bench.openloop import OpenLoopResult, run_on_fast_loop, run_open_loop_sync
from lmforge.bench.server_process import ServerProcess, ServerStartError, free_port
from lmforge.bench.serving_setup import (
    add_capacity_args,
    add_model_args,
    bench_env,
    capacity_search,
    load_average,
    open_loop_options,
    prepare_model,
    production_model_dir,
    request_texts,
    warm_up,
    write_serve_config,
)
from lmforge.bench.stats import percentile

ADDED_P50_TARGET_MS = 1.0
RATIO_TARGET_VS_RAY = 2.0
PATH = "/v1/predict"
RAY_BATCH_SIZE = 32
RAY_BATCH_WAIT_S = 0.002
CHILD_MAX_LIFE_S = 6 * 3600  # a child outliving this was orphaned: it stops by itself
READY_POLL_S = 0.2
SETTLE_S = 1.0  # between load trials: a backlog from an overloaded trial drains first
SANITY_TEXTS = 8
PROB_TOLERANCE = 1e-4
ARMS_HTTP = ("lmforge", "fastapi", "ray_serve")


def log(message: str) -> None:
    stderr_log(f"[{time.strftime('%H:%M:%S')}] {message}")


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


# --- the minimal FastAPI app (fastapi arm) ------------------------------------------------------


class PredictBody(BaseModel):
    texts: list[str]


def minimal_fastapi_app(model_dir: Path, threads: int) -> Any:
    """One POST endpoint that runs the backend's predict in FastAPI's threadpool: no batching,
    no queue bounds, no metrics; what a first FastAPI wrapper around a model looks like."""
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from lmforge.serve.backends import load_backend

    backend = load_backend(model_dir, "torch", threads)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(PATH)
    async def predict(body: PredictBody) -> dict[str, Any]:
        return {"predictions": await run_in_threadpool(backend.predict, body.texts)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


# --- the floor: a bare ASGI callable with one model thread (floor arm) -------------------------


def floor_asgi_app(model_dir: Path, threads: int) -> Any:
    """POST PATH only: parse, predict on one model thread, answer. Nothing else."""
    from concurrent.futures import ThreadPoolExecutor

    from lmforge.serve.backends import load_backend

    backend = load_backend(model_dir, "torch", threads)
    model_thread = ThreadPoolExecutor(max_workers=1)

    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"] + ".complete"  # startup or shutdown
                await send({"type": kind})
                if message["type"] == "lifespan.shutdown":
                    model_thread.shutdown(wait=False)
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        texts = json.loads(body)["texts"]
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(model_thread, backend.predict, texts)
        data = json.dumps({"predictions": rows}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app


# --- the Ray Serve deployment (ray_serve arm) ---------------------------------------------------


def ray_application(model_dir: Path, threads: int, max_ongoing: int) -> Any:
    """A 1-replica deployment batching single-text requests with @serve.batch."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(
        name="classifier",
        num_replicas=1,
        ray_actor_options={"num_cpus": 1},
        # Ray's default (5 in flight per replica) would cap every batch at 5 texts.
        max_ongoing_requests=max_ongoing,
        logging_config={"enable_access_log": False},
    )
    class Classifier:
        def __init__(self, model_dir: str, threads: int) -> None:
            from lmforge.serve.backends import load_backend

            self.backend = load_backend(Path(model_dir), "torch", threads)

        @serve.batch(max_batch_size=RAY_BATCH_SIZE, batch_wait_timeout_s=RAY_BATCH_WAIT_S)
        async def predict_batch(self, texts: list[str]) -> list[dict[str, Any]]:
            # In a thread: the replica's event loop keeps reading requests during the forward
            # pass (max_concurrent_batches=1 still runs one batch at a time).
            return await asyncio.to_thread(self.backend.predict, texts)

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            rows = await asyncio.gather(*(self.predict_batch(t) for t in body["texts"]))
            return {"predictions": list(rows)}

    return Classifier.bind(str(model_dir), threads)


# --- child processes -------------------------------------------------------------------------


def _write_port(port_file: Path, port: int) -> None:
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port), encoding="utf-8")
    tmp.replace(port_file)  # atomic: the parent never reads half a number


def _watch_parent(on_gone: Callable[[], None]) -> None:
    """Call `on_gone` when the benchmark that started this child dies (or after the max life)."""
    parent = os.getppid()

    def watch() -> None:
        for _ in range(CHILD_MAX_LIFE_S):
            if os.getppid() != parent:
                break
            time.sleep(1.0)
        on_gone()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_fastapi_child(args: argparse.Namespace) -> None:
    """The fastapi or the floor arm (args.child) on uvicorn with lmforge's options."""
    import uvicorn

    from lmforge.serve.server import bind_socket

    if args.child == "floor":
        app = floor_asgi_app(args.model_dir, args.threads)
    else:
        app = minimal_fastapi_app(args.model_dir, args.threads)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            loop="uvloop",
            http="httptools",
        )
    )

    def stop() -> None:
        server.should_exit = True

    _watch_parent(stop)
    _write_port(args.port_file, sock.getsockname()[1])
    try:
        server.run(sockets=[sock])  # uvicorn drains and returns on SIGTERM
    finally:
        sock.close()


def run_ray_child(args: argparse.Namespace) -> None:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray import serve

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    _watch_parent(stop.set)
    temp_dir = str(args.ray_temp_dir or tempfile.mkdtemp(prefix="lmfray-", dir="/tmp"))
    try:
        ray.init(
            num_cpus=args.ray_num_cpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            log_to_driver=False,
        )
        port = free_port("127.0.0.1")
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            ray_application(args.model_dir, args.threads, args.ray_max_ongoing),
            name="overhead",
            route_prefix="/",
        )
        _write_port(args.port_file, port)
        for _ in range(CHILD_MAX_LIFE_S):  # until SIGTERM, the parent's death or max life
            if stop.wait(1.0):
                break
    finally:
        try:
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def child_env(threads: int) -> dict[str, str]:
    import lmforge

    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **bench_env(threads))
    # The child imports the same lmforge as this process, installed or not.
    src = str(Path(lmforge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


class ChildServer:
    """A server this script runs in a child process (`--child KIND`), in its own session.

    Ready when the child has written its port and answers a predict request. Stopped with
    SIGTERM, then SIGKILL to its whole process group (Ray's workers included) after a grace.
    """

    def __init__(
        self,
        kind: str,
        extra_args: list[str],
        workdir: Path,
        threads: int,
        startup_timeout_s: float,
        probe_body: bytes,
        stop_grace_s: float = 20.0,
        cleanup: Path | None = None,
    ) -> None:
        self.kind = kind
        self.port_file = workdir / f"{kind}.port"
        self.cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            kind,
            "--port-file",
            str(self.port_file),
            "--threads",
            str(threads),
            *extra_args,
        ]
        self.env = child_env(threads)
        self.startup_timeout_s = startup_timeout_s
        self.probe_body = probe_body
        self.stop_grace_s = stop_grace_s
        self.cleanup = cleanup  # a folder the child uses, removed even if it was killed
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChildServer:
        self.port_file.unlink(missing_ok=True)
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own group: stop() can reach every process under it
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"the {self.kind} server exited with code {code} before it was ready; "
                    f"output:\n{self.output_tail()}"
                )
            if self.port is None and self.port_file.is_file():
                self.port = int(self.port_file.read_text(encoding="utf-8"))
            if self.port is not None and self._probe():
                return self
            time.sleep(READY_POLL_S)
        raise ServerStartError(
            f"the {self.kind} server was not ready after {self.startup_timeout_s:.0f} s; "
            f"output:\n{self.output_tail()}"
        )

    def _probe(self) -> bool:
        import httpx

        try:
            response = httpx.post(
                self.url + PATH,
                content=self.probe_body,
                headers={"content-type": "application/json"},
                timeout=5.0,
                trust_env=False,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def output_tail(self, max_chars: int = 3000) -> str:
        if self._out is None or self._out.closed:
            return "(no output)"
        self._out.flush()
        self._out.seek(0)
        text = self._out.read().decode("utf-8", errors="replace").strip()
        return text[-max_chars:] if text else "(no output)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    log(f"[{self.kind}] did not stop in {self.stop_grace_s:.0f} s; killing it")
            # Anything left in its session (Ray workers, a hung server) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)


# --- phase 1: sequential latency -------------------------------------------------------------


def _asgi_scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def asgi_post(app: Any, body: bytes) -> int:
    """POST `body` to the app without a socket or an HTTP parser; the response status."""
    sent = False
    finished = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # the client "disconnects" only after the answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    await app(_asgi_scope(body), receive, send)
    return status


def _body(text: str) -> bytes:
    # Encoded as the open-loop generator encodes it, so every phase sends the same bytes.
    return json.dumps({"texts": [text]}, ensure_ascii=False).encode()


def _rotate(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p90_ms": round(percentile(ordered, 90) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def _latency_phase(
    bare: Any,
    apps: dict[str, Any],
    urls: dict[str, str],
    texts: list[str],
    per_round: int,
    rounds: int,
    warmup: int,
) -> dict[str, list[float]]:
    """Per arm, the latency of each sequential single-text request (seconds)."""
    perf = time.perf_counter
    conns = {name: Http1Connection(url + PATH, timeout_s=30.0) for name, url in urls.items()}
    stacks = contextlib.AsyncExitStack()
    async with stacks:
        for app in apps.values():  # startup/shutdown as uvicorn would run them
            await stacks.enter_async_context(app.router.lifespan_context(app))

        def bare_call(body: bytes, text: str) -> Any:
            return bare.predict([text])

        calls: dict[str, Callable[[bytes, str], Any]] = {"bare": bare_call}
        for name, app in apps.items():
            calls[name] = lambda body, text, app=app: asgi_post(app, body)
        for name, conn in conns.items():
            calls[name] = lambda body, text, conn=conn: conn.post_json(body)

        async def one(name: str, text: str) -> float:
            body = _body(text)
            began = perf()
            out = calls[name](body, text)
            if asyncio.iscoroutine(out):
                out = await out
            took = perf() - began
            if isinstance(out, int) and out != 200:
                raise RuntimeError(f"{name}: status {out} for a sequential request")
            return took

        names = list(calls)
        for name in names:  # first calls: allocations, connections, code paths
            for i in range(warmup):
                await one(name, texts[i % len(texts)])
        samples: dict[str, list[float]] = {name: [] for name in names}
        try:
            for r in range(rounds):
                block = [texts[(r * per_round + j) % len(texts)] for j in range(per_round)]
                for name in _rotate(names, r):
                    # One unrecorded request reopens a connection the server closed while idle.
                    await one(name, block[0])
                    samples[name].extend([await one(name, text) for text in block])
                log(
                    f"  latency round {r + 1}/{rounds}: "
                    + ", ".join(
                        f"{n} {percentile(samples[n][-per_round:], 50) * 1000:.2f}" for n in names
                    )
                    + " ms (p50)"
                )
        finally:
            for conn in conns.values():
                await conn.close()
    return samples


def measure_latency(
    args: argparse.Namespace,
    bare: Any,
    registry: Path,
    config_path: Path,
    workdir: Path,
    urls: dict[str, str],
    texts: list[str],
) -> dict[str, Any]:
    apps: dict[str, Any] = {}
    if not args.no_breakdown:
        from lmforge.config import load_config
        from lmforge.serve.app import create_app

        # A copy of the registry: the in-process apps must not share the server's state files.
        serve_cfg = load_config(config_path).serve
        variants = [("app_in_process", serve_cfg)]
        if serve_cfg.batching.max_queue_delay_ms > 0:  # else the same app twice
            no_delay = serve_cfg.model_copy(deep=True)
            no_delay.batching.max_queue_delay_ms = 0.0
            variants.append(("app_in_process_no_delay", no_delay))
        for name, cfg in variants:
            copy = shutil.copytree(registry, workdir / f"registry-{name}")
            apps[name] = create_app(copy, cfg)
    rounds = max(1, args.rounds)
    per_round = max(1, args.latency_requests // rounds)
    log(f"latency: {per_round} x {rounds} sequential requests per arm: bare, {', '.join(urls)}")
    samples = run_on_fast_loop(
        _latency_phase(bare, apps, urls, texts, per_round, rounds, args.latency_warmup)
    )
    out = {name: latency_summary(values) for name, values in samples.items()}
    bare_p50 = out["bare"]["p50_ms"]
    for name, summary in out.items():
        if name != "bare":
            summary["added_p50_ms"] = round(summary["p50_ms"] - bare_p50, 3)
            # Same text, same round: the median per-request difference is less sensitive to
            # the text-length mix and to load drifting between blocks than a difference of p50s.
            pairs = [s - b for s, b in zip(samples[name], samples["bare"], strict=True)]
            summary["paired_added_p50_ms"] = round(statistics.median(pairs) * 1000, 3)
    return out


def overhead_breakdown(latency: dict[str, Any]) -> dict[str, Any] | None:
    """Where lmforge's added p50 goes: HTTP layer, batch timer, the rest of the app."""
    if "app_in_process" not in latency:
        return None
    bare = latency["bare"]["p50_ms"]
    app = latency["app_in_process"]["p50_ms"]
    # With no batch timer configured there is no second app: the timer costs nothing.
    no_delay = latency.get("app_in_process_no_delay", latency["app_in_process"])["p50_ms"]
    server = latency["lmforge"]["p50_ms"]
    floor = latency["floor"]["p50_ms"]
    return {
        "floor_http_and_model_thread_ms": round(floor - bare, 3),
        "lmforge_over_floor_ms": round(server - floor, 3),
        "http_uvicorn_loopback_client_ms": round(server - app, 3),
        "batch_timer_wait_ms": round(app - no_delay, 3),
        "app_without_batch_timer_ms": round(no_delay - bare, 3),
        "note": "differences of p50s: floor server - bare model call, lmforge server - floor "
        "server, lmforge server - app in-process, app - app with max_queue_delay_ms 0, that "
        "app - bare model call",
    }


# --- phases 2 and 3: capacity and saturation ---------------------------------------------------


def _open_loop_kw(args: argparse.Namespace) -> dict[str, Any]:
    return open_loop_options(args, path=PATH)


def search_capacity(name: str, url: str, texts: list[str], args: argparse.Namespace) -> dict:
    log(f"[{name}] capacity search (p99 <= {args.p99_ms:g} ms, {args.trial_s:g} s trials)")
    warm_up(url, texts, args.warmup_s, **_open_loop_kw(args))
    began = time.perf_counter()
    found = capacity_search(url, texts, args, log=log, path=PATH, settle_s=SETTLE_S)
    summary = found.summary()
    at_rate = next((s for rate, s, ok in found.trials if ok and rate == found.rate), None)
    log(f"[{name}] capacity {found.rate:.1f} req/s (first failing rate {found.lowest_fail})")
    return {
        "requests_per_s": round(found.rate, 1),
        "p50_ms": at_rate["p50_ms"] if at_rate else None,
        "p99_ms": at_rate["p99_ms"] if at_rate else None,
        "success": at_rate["success"] if at_rate else None,
        "capped": summary["capped"],
        "lowest_fail": summary["lowest_fail"],
        "trials": summary["trials"],
        "search_s": round(time.perf_counter() - began, 1),
    }


def saturation_trial(url: str, texts: list[str], rate: float, args: argparse.Namespace) -> dict:
    time.sleep(SETTLE_S)
    cpu0 = time.process_time()
    result: OpenLoopResult = run_open_loop_sync(
        url, rate, args.trial_s, texts, **_open_loop_kw(args)
    )
    client_cpu = time.process_time() - cpu0
    s = result.summary()
    unsent = result.failures.get("Timeout", 0)  # waited too long in the client: never sent
    return {
        "requests_per_s": round(result.ok / result.elapsed_s, 1) if result.elapsed_s > 0 else 0.0,
        "sent": result.sent,
        "ok": result.ok,
        "success_of_sent": round(result.ok / result.sent, 6) if result.sent else None,
        "failures_after_send": {k: v for k, v in result.failures.items() if k != "Timeout"},
        "unsent_timeouts": unsent,
        "elapsed_s": s["elapsed_s"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "client_cpu_s": round(client_cpu, 2),
    }


def measure_saturation(
    urls: dict[str, str], texts: list[str], rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    names = list(urls)
    trials: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    log(f"saturation: {rate:.0f} req/s offered, {args.connections} connections")
    for r in range(max(1, args.saturation_rounds)):
        for name in _rotate(names, r):
            t = saturation_trial(urls[name], texts, rate, args)
            trials[name].append(t)
            log(
                f"  [{name}] round {r + 1}: {t['requests_per_s']:.1f} req/s answered, "
                f"success of sent {t['success_of_sent']}, failures {t['failures_after_send']}, "
                f"client cpu {t['client_cpu_s']} s"
            )
    out: dict[str, Any] = {"offered_rate": round(rate, 1), "connections": args.connections}
    for name, runs in trials.items():
        rps = [t["requests_per_s"] for t in runs]
        sent = sum(t["sent"] for t in runs)
        out[name] = {
            "requests_per_s": round(statistics.median(rps), 1),
            "per_round": rps,
            "success_of_sent": round(sum(t["ok"] for t in runs) / sent, 6) if sent else None,
            "p50_ms_from_schedule": statistics.median(t["p50_ms"] or 0.0 for t in runs),
            "p99_ms_from_schedule": statistics.median(t["p99_ms"] or 0.0 for t in runs),
            "trials": runs,
        }
        if max(rps) >= 0.9 * rate:
            out[name]["warning"] = "kept up with the offered rate: raise --saturation-rate"
    return out


# --- the run ---------------------------------------------------------------------------------


def sanity_check(bare: Any, urls: dict[str, str], texts: list[str]) -> dict[str, Any]:
    """Every server answers the same texts with the bare model's labels and probabilities."""
    import httpx

    sample = texts[:SANITY_TEXTS]
    expected = bare.predict(sample)
    mismatches: dict[str, int] = {}
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        for name, url in urls.items():
            bad = 0
            for text, want in zip(sample, expected, strict=True):
                got = client.post(url + PATH, json={"texts": [text]}).json()["predictions"][0]
                same = got["label"] == want["label"] and all(
                    abs(got["probs"][k] - v) <= PROB_TOLERANCE for k, v in want["probs"].items()
                )
                bad += not same
            mismatches[name] = bad
    return {"texts": len(sample), "mismatches": mismatches, "same": not any(mismatches.values())}


@contextlib.contextmanager
def running_servers(
    args: argparse.Namespace,
    registry: Path,
    model_dir: Path,
    config_path: Path,
    workdir: Path,
    probe_body: bytes,
) -> Iterator[dict[str, str]]:
    """Start lmforge, the FastAPI app and Ray Serve; stop them all, whatever happens."""
    stoppers: list[Callable[[], Any]] = []
    try:
        log("starting lmforge serve ...")
        lmforge_server = ServerProcess(
            registry, model=args.model, config_path=config_path, startup_timeout_s=180
        )
        stoppers.append(lmforge_server.stop)
        lmforge_server.start()
        urls = {"lmforge": lmforge_server.url}
        common = ["--model-dir", str(model_dir)]
        # Ray's socket paths must stay under 108 characters: a short folder right under /tmp.
        ray_temp = Path(tempfile.mkdtemp(prefix="lmfray-", dir="/tmp"))
        stoppers.append(lambda: shutil.rmtree(ray_temp, ignore_errors=True))
        ray_args = [
            *common,
            *("--ray-num-cpus", str(args.ray_num_cpus)),
            *("--ray-max-ongoing", str(args.ray_max_ongoing)),
            *("--ray-temp-dir", str(ray_temp)),
        ]
        children = [
            ("fastapi", common, None),
            ("floor", common, None),
            ("ray_serve", ray_args, ray_temp),
        ]
        for kind, extra, cleanup in children:
            log(f"starting {kind} ...")
            began = time.perf_counter()
            child = ChildServer(
                kind, extra, workdir, args.threads, 300.0, probe_body, cleanup=cleanup
            )
            stoppers.append(child.stop)
            child.start()
            urls[kind] = child.url
            log(f"  {kind} ready at {child.url} in {time.perf_counter() - began:.1f} s")
        yield urls
    finally:
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                log(f"stopping a server failed: {exc!r}")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lmforge.serve.backends import load_backend

    texts, texts_from = request_texts(args.eval)
    # 1/5/15-minute load averages as each phase starts: a loaded machine shows up here.
    loads = {"start": load_average()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        registry, model_info = prepare_model(args, tmp, texts, log=log)
        model_dir = production_model_dir(registry, args.model)
        # lmforge's defaults but for the cache (off) and the thread count (shared by all arms).
        config_path = write_serve_config(tmp / "lmforge.yaml", backend={"threads": args.threads})
        lmforge_serve = effective_serve_config(config_path)
        bare = load_backend(model_dir, "torch", args.threads)
        with running_servers(args, registry, model_dir, config_path, tmp, _body(texts[0])) as urls:
            sanity = sanity_check(bare, urls, texts)
            log(f"same predictions everywhere: {sanity['same']} {sanity['mismatches']}")
            loads["latency"] = load_average()
            latency = measure_latency(args, bare, registry, config_path, tmp, urls, texts)
            capacity: dict[str, Any] = {}
            if not args.no_capacity:
                loads["capacity"] = load_average()
                for name in ARMS_HTTP:
                    capacity[name] = search_capacity(name, urls[name], texts, args)
            rate = args.saturation_rate
            if rate is None:
                best = max((c["requests_per_s"] for c in capacity.values()), default=0.0)
                rate = max(2.5 * best, 200.0) if best > 0 else 2000.0
            loads["saturation"] = load_average()
            for name in ARMS_HTTP:
                warm_up(urls[name], texts, args.warmup_s, **_open_loop_kw(args))
            saturation = measure_saturation(urls, texts, rate, args)
    per_arm: dict[str, Any] = {
        "bare": {"sequential": latency["bare"]},
        "floor": {
            "sequential_p50_ms": latency["floor"]["p50_ms"],
            "sequential_p99_ms": latency["floor"]["p99_ms"],
            "added_p50_ms": latency["floor"]["added_p50_ms"],
            "paired_added_p50_ms": latency["floor"]["paired_added_p50_ms"],
        },
    }
    for name in ARMS_HTTP:
        per_arm[name] = {
            "saturation_requests_per_s": saturation[name]["requests_per_s"],
            "saturation_success_of_sent": saturation[name]["success_of_sent"],
            "capacity_requests_per_s": capacity.get(name, {}).get("requests_per_s"),
            "capacity_p50_ms": capacity.get(name, {}).get("p50_ms"),
            "capacity_p99_ms": capacity.get(name, {}).get("p99_ms"),
            "capacity_success": capacity.get(name, {}).get("success"),
            "sequential_p50_ms": latency[name]["p50_ms"],
            "sequential_p99_ms": latency[name]["p99_ms"],
            "added_p50_ms": latency[name]["added_p50_ms"],
            "paired_added_p50_ms": latency[name]["paired_added_p50_ms"],
        }
    sat = {n: saturation[n]["requests_per_s"] for n in ARMS_HTTP}
    cap = {n: capacity.get(n, {}).get("requests_per_s") for n in ARMS_HTTP}
    ratios = {
        "lmforge_over_ray_saturation": ratio(sat["lmforge"], sat["ray_serve"]),
        "lmforge_over_ray_capacity": ratio(cap["lmforge"], cap["ray_serve"]),
        "lmforge_over_fastapi_saturation": ratio(sat["lmforge"], sat["fastapi"]),
        "lmforge_over_fastapi_capacity": ratio(cap["lmforge"], cap["fastapi"]),
    }
    added = latency["lmforge"]["added_p50_ms"]
    # Both measures, where measured, must clear the target.
    vs_ray = [
        r
        for r in (ratios["lmforge_over_ray_saturation"], ratios["lmforge_over_ray_capacity"])
        if r is not None
    ]
    return {
        "benchmark": "serve_overhead",
        "model": model_info,
        "texts": {"source": texts_from, "count": len(texts)},
        "threads": {
            "torch_intra_op": args.threads,
            "env": bench_env(args.threads),
            "note": "every server and the bare call use this many torch threads",
        },
        "servers": {
            "lmforge": {"serve_config": lmforge_serve},
            "fastapi": {
                "uvicorn": "httptools + uvloop, 1 process",
                "batching": None,
                "note": "predicts run concurrently in FastAPI's threadpool, so under load the "
                "model may use several cores at once although each call has --threads threads",
            },
            "ray_serve": {
                "ray_init_num_cpus": args.ray_num_cpus,
                "replicas": 1,
                "max_batch_size": RAY_BATCH_SIZE,
                "batch_wait_timeout_s": RAY_BATCH_WAIT_S,
                "max_ongoing_requests": args.ray_max_ongoing,
            },
        },
        "per_arm": per_arm,
        "ratios": ratios,
        "targets": {
            "added_p50_ms": ADDED_P50_TARGET_MS,
            "meets_added_p50": added <= ADDED_P50_TARGET_MS,
            "lmforge_over_ray": RATIO_TARGET_VS_RAY,
            "meets_ratio_vs_ray": bool(vs_ray) and min(vs_ray) >= RATIO_TARGET_VS_RAY,
        },
        "sanity": sanity,
        "latency": {
            "requests_per_arm": latency["bare"]["n"],
            "rounds": args.rounds,
            **latency,
            "breakdown": overhead_breakdown(latency),
        },
        "capacity": {"p99_ms": args.p99_ms, "min_success": 0.999, **capacity} if capacity else None,
        "saturation": saturation,
        "settings": {
            "trial_s": args.trial_s,
            "connections": args.connections,
            "timeout_s": args.timeout_s,
            "quick": args.quick,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at": {**loads, "end": load_average()},
            "wall_s": round(time.perf_counter() - started, 1),
        },
    }


def effective_serve_config(config_path: Path) -> dict[str, Any]:
    """The serve settings lmforge runs with (file + defaults), the parts that matter here."""
    from lmforge.config import load_config

    serve = load_config(config_path).serve
    return {
        key: getattr(serve, key).model_dump(mode="json")
        for key in ("batching", "cache", "tracing", "backend")
    }


QUICK = {
    "trial_s": 1.5,
    "warmup_s": 1.0,
    "latency_requests": 300,
    "rounds": 6,
    "latency_warmup": 10,
    "max_trials": 6,
    "start_rate": 100.0,
    "saturation_rounds": 1,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("--quick", action="store_true", help="short smoke run (~1-2 minutes)")
    add_model_args(parser)
    parser.add_argument(
        "--threads", type=int, default=default_threads(), help="torch threads, every arm"
    )
    # --trial-s also sets the saturation trials' length.
    add_capacity_args(parser, p99_ms=100.0, start_rate=50.0, max_trials=10)
    parser.add_argument("--latency-requests", type=int, default=2000, help="per arm")
    parser.add_argument("--rounds", type=int, default=40, help="latency rounds (arms rotate)")
    parser.add_argument("--latency-warmup", type=int, default=50, help="requests per arm")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process apps")
    parser.add_argument("--no-capacity", action="store_true", help="skip the capacity searches")
    parser.add_argument("--saturation-rate", type=float, help="default: 2.5 x best capacity")
    parser.add_argument("--saturation-rounds", type=int, default=3)
    parser.add_argument("--ray-num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    parser.add_argument("--ray-max-ongoing", type=int, default=2 * RAY_BATCH_SIZE)
    # Internal: this script re-run as the FastAPI or Ray Serve server.
    parser.add_argument(
        "--child", choices=["fastapi", "floor", "ray_serve"], help=argparse.SUPPRESS
    )
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ray-temp-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        defaults = parser.parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):  # explicit options still win
                setattr(args, key, value)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before torch is imported anywhere in this process: its pools read these at import.
    os.environ.update(bench_env(args.threads))
    if args.child in ("fastapi", "floor"):
        run_fastapi_child(args)
        return 0
    if args.child == "ray_serve":
        run_ray_child(args)
        return 0
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    print(json.dumps(run(args)))
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through the `finally` blocks that stop the servers; the default
    # SIGTERM action would leave them running.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
