"""Promote and roll back under load: how fast the server switches, and what fails meanwhile.

    python bench/serve_rollback.py                       # capacity search, then 50 % of it
    python bench/serve_rollback.py --rate 100 --phase-s 10
    python bench/serve_rollback.py --quick --rate 20     # a smoke run

One `lmforge serve` child process (prediction cache off) on a registry copy holding v1
(production) and v2 (a second random init of the same shape). Open-loop Poisson load runs at
--rate (default: --load-fraction x the capacity found first, p99 <= --p99-ms) for 5 phases of
--phase-s seconds (back-to-back open-loop runs of one phase each); at each phase boundary one
command moves the production alias:

    t = 1 x phase   promote v2   `lmforge registry promote NAME 2` (CLI, a child process)
    t = 2 x phase   roll back    `lmforge registry rollback NAME` (CLI)
    t = 3 x phase   promote v2   POST /v1/admin/models/NAME/promote (admin API key)
    t = 4 x phase   roll back    POST /v1/admin/models/NAME/rollback

A command that would start less than half a phase after the previous one finished waits (a
CLI command can take seconds on a busy machine), and the load goes on until half a phase after
the last one. The CLI writes the registry and the server notices on its next poll
(serve.refresh_s); the admin API refreshes the server at once. The first promote loads v2
(cold); later switches find their target still loaded (the pool keeps recent versions warm).

The load generator does not read answers, so a probe runs beside it: every --probe-interval-ms
it POSTs one text (on a free connection of its own; a tick with none free is skipped) and
records when the answer came and which version it names. Its requests (1000 /
--probe-interval-ms per second at most) come on top of --rate. Per command:

- switch_s: the first probe answer from the target version minus the moment the alias changed
  (its `changed_at` in the registry history): how long the server kept serving the old one.
  `from_command_s` is the same from when the command was issued (for the CLI, that includes
  starting Python); the probe spacing bounds the resolution.
- last_old_s: the last answer from the old version after the change (requests in flight at
  the swap finish on the version that took them); stale_after_switch counts probes *sent*
  after the first new answer that still got the old version (0 when the swap is clean).
- p50/p99/failures of the load requests scheduled within --window-s of the change.

Failed requests (load + probe) should be zero. Prints one JSON object on stdout; progress goes
to stderr. The load generator, the probe and the CLI commands share the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

import lmforge
from lmforge.bench.capacity import stderr_log as log
from lmforge.bench.openloop import OpenLoopResult, run_on_fast_loop, run_open_loop
from lmforge.bench.server_process import ServerProcess
from lmforge.bench.serving_setup import (
    START_WARMUP_S,
    add_load_rate_args,
    add_model_args,
    add_second_version,
    latency_stats,
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
from lmforge.registry import ModelRegistry
from lmforge.serve.auth import KeyStore

PHASES = 5  # 4 commands, one per inner phase boundary
CLI_TIMEOUT_S = 120.0
ADMIN_TIMEOUT_S = 60.0
MAX_HEAD_BYTES = 64 * 1024
QUICK = {"phase_s": 4.0, "window_s": 1.0, "trial_s": 1.5, "max_trials": 5}


# -- the probe ---------------------------------------------------------------------------------
@dataclass
class ProbeAnswer:
    sent: float  # wall clock (time.time()), comparable with the registry's changed_at
    answered: float
    status: int | str
    version: int | None


class JsonConnection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and returns (status, parsed body).

    Deliberately tiny: it shares the event loop with the load generator, and a general client
    (httpx builds an SSL context per client, imports its transports on first use) can stall
    that loop for long enough to show up as latency of the load's requests.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        reused = self.writer is not None
        try:
            return await self._exchange(path, body)
        except asyncio.IncompleteReadError as exc:
            if not reused or exc.partial:
                raise
            # The server dropped an idle keep-alive connection: one retry on a fresh one.
            return await self._exchange(path, body)

    async def _exchange(self, path: str, body: bytes) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode("ascii") + body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
            if len(raw) > MAX_HEAD_BYTES:
                raise ValueError("response head larger than 64 KiB")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            if "content-length" not in headers:  # uvicorn sends a length for JSON bodies
                raise ValueError("response without Content-Length")
            payload = await self.reader.readexactly(int(headers["content-length"]))
            if headers.get("connection", "").lower() == "close":
                self.close()
        except BaseException:
            self.close()  # a half-read answer leaves the connection unusable
            raise
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, None

    def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()


async def run_probe(
    host: str,
    port: int,
    texts: list[str],
    stop: asyncio.Event,
    max_s: float,
    interval_s: float,
    connections: int,
    timeout_s: float,
) -> tuple[list[ProbeAnswer], int]:
    """POST one text every `interval_s` until `stop` (at most `max_s`); answers, skipped ticks."""
    free: asyncio.Queue[JsonConnection] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(JsonConnection(host, port))
    bodies = [json.dumps({"texts": [t]}, ensure_ascii=False).encode() for t in texts[:64]]
    answers: list[ProbeAnswer] = []
    tasks: set[asyncio.Task[None]] = set()
    skipped = 0

    async def probe_one(conn: JsonConnection, body: bytes) -> None:
        sent = time.time()
        status: int | str
        version = None
        try:
            status, payload = await asyncio.wait_for(conn.post("/v1/predict", body), timeout_s)
            if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
                version = payload["model"].get("version")
        except Exception as exc:  # a failed probe is a result (counted), not a crash
            conn.close()
            status = type(exc).__name__
        answers.append(ProbeAnswer(sent, time.time(), status, version))
        free.put_nowait(conn)

    loop = asyncio.get_running_loop()
    start = loop.time()
    for tick in range(max(1, int(max_s / interval_s))):
        if stop.is_set():
            break
        delay = start + tick * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            conn = free.get_nowait()
        except asyncio.QueueEmpty:
            skipped += 1  # every probe connection is waiting: the server is slow right now
            continue
        task = asyncio.create_task(probe_one(conn, bodies[tick % len(bodies)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)
    while not free.empty():
        free.get_nowait().close()
    return answers, skipped


# -- the commands ------------------------------------------------------------------------------
@dataclass
class Command:
    label: str
    via: str  # "cli" or "api"
    at_s: float  # planned offset from the load's start
    target: int
    run: Callable[[], Awaitable[str]]
    issued: float = 0.0  # wall clock
    done: float = 0.0
    changed_at: float | None = None  # the registry's record of the alias move
    from_version: int | None = None
    output: str = ""
    error: str | None = None


def child_env() -> dict[str, str]:
    """The CLI child imports the same lmforge as this process, installed or not."""
    src = str(Path(lmforge.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def cli_command(registry_dir: Path, *words: str) -> Callable[[], Awaitable[str]]:
    cmd = [sys.executable, "-m", "lmforge", "registry", *words, "--registry", str(registry_dir)]

    async def run() -> str:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(),
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        finally:
            if proc.returncode is None:  # timed out or cancelled: never leave it running
                proc.kill()
                await proc.wait()
        text = out.decode("utf-8", errors="replace").strip()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:])} exited with {proc.returncode}: {text}")
        return text

    return run


def api_command(
    url: str, key: str, path: str, body: dict[str, Any]
) -> Callable[[], Awaitable[str]]:
    parts = urlsplit(url)
    assert parts.hostname is not None

    async def run() -> str:
        conn = JsonConnection(parts.hostname, parts.port or 80, {"Authorization": f"Bearer {key}"})
        try:
            status, payload = await asyncio.wait_for(
                conn.post(path, json.dumps(body).encode()), ADMIN_TIMEOUT_S
            )
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"POST {path} answered {status}: {payload}")
        return json.dumps(payload)

    return run


async def run_commands(
    commands: list[Command], registry: ModelRegistry, name: str, start: float, min_gap_s: float
) -> None:
    """Issue each command at its time, or `min_gap_s` after the one before finished if later.

    A CLI command on a busy machine can take longer than a phase; the gap keeps some steady
    load between one switch and the next, so their effects do not overlap.
    """
    previous_done = -math.inf
    for command in commands:
        delay = max(start + command.at_s, previous_done + min_gap_s) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        before = len(await asyncio.to_thread(registry.history, name, "production"))
        command.issued = time.time()
        try:
            command.output = await command.run()
        except Exception as exc:  # report it, keep the load (and the other commands) going
            command.error = f"{type(exc).__name__}: {exc}"
        command.done = previous_done = time.time()
        history = await asyncio.to_thread(registry.history, name, "production")
        if len(history) > before:
            change = history[-1]
            command.changed_at, command.from_version = change.changed_at, change.old_version
        log(
            f"  {command.label} via {command.via}: took {command.done - command.issued:.2f} s"
            + (f", error {command.error}" if command.error else "")
        )


# -- analysis ----------------------------------------------------------------------------------
def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def next_change(commands: list[Command], i: int) -> float:
    """When the alias moved again after command i (infinity: it did not)."""
    return min(
        (c.changed_at for c in commands[i + 1 :] if c.changed_at is not None), default=math.inf
    )


def analyse_command(
    command: Command,
    answers: list[ProbeAnswer],
    loads: list[tuple[float, int | str, float]],
    window_s: float,
    until: float,
) -> dict[str, Any]:
    """Switch time from the probe; latency and failures of the load around the change.

    Only probe answers between this change and `until` (the next command's change) count.
    """
    out: dict[str, Any] = {
        "command": command.label,
        "via": command.via,
        "from_version": command.from_version,
        "to_version": command.target,
        "command_s": round(command.done - command.issued, 4),
        "output": command.output[-300:],
        "error": command.error,
    }
    changed = command.changed_at
    if changed is None:
        out["error"] = command.error or "the registry recorded no alias change"
        return out
    after = [a for a in answers if changed <= a.answered < until]
    first_new = min((a.answered for a in after if a.version == command.target), default=None)
    last_old = max((a.answered for a in after if a.version == command.from_version), default=None)
    stale = (
        0
        if first_new is None
        else sum(1 for a in after if a.sent > first_new and a.version == command.from_version)
    )
    window = [(s, lat) for s, st, lat in loads if abs(s - changed) <= window_s and st == 200]
    failed = [st for s, st, _ in loads if abs(s - changed) <= window_s and st != 200]
    out.update(
        {
            "changed_after_issue_s": round(changed - command.issued, 4),
            "switch_s": rounded(None if first_new is None else first_new - changed),
            "from_command_s": rounded(None if first_new is None else first_new - command.issued),
            "last_old_s": rounded(None if last_old is None else last_old - changed),
            "stale_after_switch": stale,
            "window": {
                "seconds": [-window_s, window_s],
                "ok": len(window),
                "failed": len(failed),
                "failures": {str(k): failed.count(k) for k in sorted(set(map(str, failed)))},
                **latency_stats([lat for _, lat in window]),
            },
        }
    )
    return out


# -- the run -----------------------------------------------------------------------------------
async def drive(
    url: str,
    texts: list[str],
    rate: float,
    commands: list[Command],
    registry: ModelRegistry,
    name: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Load in back-to-back segments of one phase until every command is done and followed
    by half a phase of load; the probe and the commands run beside it."""
    loads: list[tuple[float, int | str, float]] = []  # (scheduled wall time, status, latency)
    segments: list[OpenLoopResult] = []
    wall_minus_perf = time.time() - time.perf_counter()

    def recorder() -> Callable[[float, int | str, float], None]:
        t0: list[float] = []  # this segment's start on the wall clock, from its first result

        def on_result(offset: float, status: int | str, latency: float) -> None:
            if not t0:  # settled now = t0 + offset + latency, so t0 follows
                t0.append(time.perf_counter() + wall_minus_perf - latency - offset)
            loads.append((t0[0] + offset, status, latency))

        return on_result

    parts = urlsplit(url)
    assert parts.hostname is not None
    stop_probe = asyncio.Event()
    longest = PHASES * args.phase_s + len(commands) * (CLI_TIMEOUT_S + args.phase_s)
    probe_task = asyncio.create_task(
        run_probe(
            parts.hostname,
            parts.port or 80,
            texts,
            stop_probe,
            longest + args.phase_s,
            args.probe_interval_ms / 1000.0,
            args.probe_connections,
            args.timeout_s,
        )
    )
    start = time.time()
    commands_task = asyncio.create_task(
        run_commands(commands, registry, name, start, args.phase_s / 2)
    )
    try:
        for segment in range(math.ceil(longest / args.phase_s)):
            if commands_task.done() and time.time() >= commands[-1].done + args.phase_s / 2:
                break
            segments.append(
                await run_open_loop(
                    url,
                    rate,
                    args.phase_s,
                    texts,
                    **open_loop_options(
                        args,
                        seed=args.seed + segment,  # a fresh Poisson draw per segment
                        on_result=recorder(),
                    ),
                )
            )
        await commands_task
    finally:
        stop_probe.set()
        commands_task.cancel()  # a no-op when done; on an error it stops a running CLI child
        await asyncio.gather(commands_task, return_exceptions=True)
    probe = await probe_task
    answers, skipped = probe
    results = [
        analyse_command(c, answers, loads, args.window_s, next_change(commands, i))
        for i, c in enumerate(commands)
    ]
    near = [
        (s, lat)
        for s, st, lat in loads
        if st == 200
        and all(c.changed_at is None or abs(s - c.changed_at) > args.window_s for c in commands)
    ]
    probe_failed = [a.status for a in answers if a.status != 200]
    summary = merge_open_loop(segments).summary()
    return {
        "load": {
            **{k: summary[k] for k in ("rate", "offered_rate", "achieved_rate", "duration_s")},
            **{k: summary[k] for k in ("scheduled", "ok", "failed", "success", "failures")},
            **{k: summary[k] for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "late_sends")},
            "away_from_switches": {"ok": len(near), **latency_stats([lat for _, lat in near])},
        },
        "probe": {
            "interval_ms": args.probe_interval_ms,
            "max_rate": round(1000.0 / args.probe_interval_ms, 1),
            "connections": args.probe_connections,
            "sent": len(answers),
            "ok": len(answers) - len(probe_failed),
            "failed": len(probe_failed),
            "skipped_ticks": skipped,
            "versions": {  # answers per version over the run
                str(v): sum(1 for a in answers if a.version == v)
                for v in sorted({a.version for a in answers if a.version is not None})
            },
        },
        "commands": results,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)  # --registry is copied: the run moves its production alias
    add_load_rate_args(parser, load_fraction=0.5, timeout_s=5.0)
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds between commands")
    parser.add_argument("--window-s", type=float, default=2.0, help="'around a switch': +-")
    parser.add_argument("--probe-interval-ms", type=float, default=20.0)
    parser.add_argument("--probe-connections", type=int, default=4)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 s phases, 1.5 s search trials (explicit options win)",
    )
    args = parse_with_quick(parser, argv, QUICK)
    if not (args.phase_s > 0 and args.probe_interval_ms > 0 and args.probe_connections >= 1):
        parser.error("--phase-s, --probe-interval-ms and --probe-connections must be positive")
    return args  # --rate and --load-fraction are checked by their types


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    texts, texts_from = request_texts(args.eval)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-rollback-") as tmp_name:
        tmp = Path(tmp_name)
        registry_dir, name, model_info = prepare_registry_copy(args, tmp, texts)
        candidate = add_second_version(registry_dir, name)
        registry = ModelRegistry(registry_dir, create=False)
        baseline = registry.resolve(name, "production").version
        _, admin_key = KeyStore(registry_dir).create("bench-rollback", role="admin")
        config_path = write_serve_config(tmp / "serve.yaml")
        log(f"starting the server (production v{baseline}, candidate v{candidate}) ...")
        with ServerProcess(registry_dir, model=name, config_path=config_path) as server:
            url = server.url
            warm_up(url, texts, START_WARMUP_S)  # first calls count in no measurement
            capacity, rate = load_rate(url, texts, args, log=log)
            admin = f"/v1/admin/models/{name}"
            commands = [
                Command(
                    "promote",
                    "cli",
                    args.phase_s,
                    candidate,
                    cli_command(registry_dir, "promote", name, str(candidate)),
                ),
                Command(
                    "rollback",
                    "cli",
                    2 * args.phase_s,
                    baseline,
                    cli_command(registry_dir, "rollback", name),
                ),
                Command(
                    "promote",
                    "api",
                    3 * args.phase_s,
                    candidate,
                    api_command(url, admin_key, f"{admin}/promote", {"version": candidate}),
                ),
                Command(
                    "rollback",
                    "api",
                    4 * args.phase_s,
                    baseline,
                    api_command(url, admin_key, f"{admin}/rollback", {"alias": "production"}),
                ),
            ]
            log(f"load at {rate:.1f} req/s, a command every {args.phase_s:.0f} s ...")
            load_before = load_average()
            measured = run_on_fast_loop(drive(url, texts, rate, commands, registry, name, args))
            with httpx.Client(timeout=10.0, trust_env=False) as client:
                final = client.get(url + "/readyz").json().get("model", {}).get("version")
    failed = measured["load"]["failed"] + measured["probe"]["failed"]
    switches = [c["switch_s"] for c in measured["commands"]]
    report = {
        "benchmark": "serve_rollback",
        "model": {**model_info, "name": name, "baseline": baseline, "candidate": candidate},
        "texts": {"source": texts_from, "count": len(texts)},
        "cpus": os.cpu_count(),
        "capacity": capacity,
        "load_fraction": None if args.rate is not None else args.load_fraction,
        "rate": round(rate, 1),
        "phase_s": args.phase_s,
        "connections": args.connections,
        **measured,
        "max_switch_s": max((s for s in switches if s is not None), default=None),
        "all_switched": all(s is not None for s in switches),
        "final_production_version": final,
        "failed_requests": failed,
        "target_failed_requests": 0,
        "meets_target": failed == 0 and all(s is not None for s in switches),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
