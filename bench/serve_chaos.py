"""Chaos under load: SIGKILL a worker every 10 s while 2 workers serve 50 % of capacity.

    python bench/serve_chaos.py                        # capacity search, then 60 s of chaos
    python bench/serve_chaos.py --rate 100 --duration-s 120 --kill-interval-s 5
    python bench/serve_chaos.py --quick --rate 20      # a smoke run: 12 s of load, one kill
    python bench/serve_chaos.py --no-spare             # every kill is a cold restart

The server is the supervisor of `lmforge serve --workers 2` (`python -m
lmforge.serve.supervisor`, the same `run_supervised`; this entry point takes --log-dir, so the
workers' logs stay in the run's temp folder, and --no-spare): a gateway front on a free
127.0.0.1 port, 2 workers (`backend.threads` = cores / 2 each) and a warm spare, prediction
cache off, on a copy of --registry or a built demo-shaped model. Unless --rate is given, a
capacity search through the front finds the highest open-loop rate with p99 <= --p99-ms
(success >= 99.9 %, the server keeping up); the chaos run is one open-loop Poisson load at
--load-fraction of it (50 %) for --duration-s seconds, latency measured from each request's
scheduled send time (the client gives up --timeout-s after sending).

Meanwhile a killer thread SIGKILLs one worker's process group at --first-kill-s and then every
--kill-interval-s of load time (worker 0, 1, 0, ...; a worker not ready at its turn is passed
over for a ready one), the pid taken from the front's GET /gateway/healthz and checked to
belong to the supervisor's session. After each kill it polls /gateway/healthz every --poll-s
until the slot holds a new pid in state "ready" and the front's upstream for it is up at the
new port: `in_rotation_s` is kill -> that answer (an upper bound by one poll and one healthz
round trip). Also per kill: the supervisor's own death noticed -> ready time
(`last_restart_s`), the same read from the lmforge_worker_restart_seconds histogram on
/gateway/metrics (its sum grows by exactly that restart), whether the warm spare took over or
the worker was started again ("spare" / "respawn"), the gateway's retries, how long until a new
spare was ready, and the load requests scheduled in the --window-s after the kill: p50/p99,
failures, and failures per second from 2 s before to 5 s after.

Target: success (2xx / scheduled) >= 99.95 % (aim: 100 %: predictions are idempotent, so the
front retries requests a dying worker dropped). Prints one JSON object on stdout; progress goes
to stderr. The load generator runs in this process and shares the cores with the server.
Every process of the server's session (supervisor, fork server, workers, spare) is killed at
the end, also after a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import lmforge
from lmforge.bench.capacity import stderr_log as log
from lmforge.bench.openloop import run_open_loop_sync
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
    positive_number,
    prepare_registry_copy,
    request_texts,
    serve_section,
    warm_up,
)

TARGET_SUCCESS = 0.9995
AROUND_KILL_S = (-2, 5)  # failures per second from 2 s before a kill to 5 s after it
SPARE_POLL_S = 0.1  # waiting for a new spare needs no finer resolution
HEALTHZ_TIMEOUT_S = 1.0
T0_WAIT_S = 10.0  # the load's first answer must come within this, else the killer guesses t0
STOP_GRACE_S = 35.0  # the supervisor drains (10 s) then stops its workers (up to 15 s)
# After the supervisor exits, the multiprocessing fork server notices and exits on its own
# (about a second, torch's teardown): only what outlives this is killed and reported.
SESSION_EXIT_S = 5.0
QUICK = {"duration_s": 12.0, "first_kill_s": 4.0, "trial_s": 1.5, "max_trials": 5}


# --- the server and its processes --------------------------------------------------------------


def session_members(sid: int) -> list[tuple[int, int]]:
    """(pid, process group) of every live (non-zombie) process in session `sid` (Linux /proc).

    A session id stays taken while any process is in the session, so this never names a
    stranger that reused the number.
    """
    members = []
    with contextlib.suppress(OSError):
        entries = os.listdir("/proc")
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # exited meanwhile
                continue
            # The command name may hold spaces and parentheses: fields start after the last ")".
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
                members.append((int(entry), int(fields[2])))
    return members


def kill_session(sid: int, rounds: int = 20, pause_s: float = 0.1) -> int:
    """SIGKILL every process group of session `sid` until none is left; how many were seen.

    The workers run in process groups of their own inside the supervisor's session, so
    killing the supervisor's group alone would miss them.
    """
    if sid == os.getsid(0):
        raise ValueError(f"session {sid} is this process's own; refusing to kill it")
    seen: set[int] = set()
    for _ in range(rounds):  # a fork in progress may add a member after a round
        members = session_members(sid)
        if not members:
            break
        for pid, pgid in members:
            seen.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(pause_s)
    return len(seen)


def in_session(pid: int, sid: int) -> bool:
    return any(p == pid for p, _ in session_members(sid))


class SupervisedServer(ServerProcess):
    """`python -m lmforge.serve.supervisor` as a child in a session of its own.

    `ServerProcess` waits for the front's /readyz and stops the supervisor with SIGTERM; on top
    of that, `stop` kills whatever is left of every session it started (workers included).
    """

    def __init__(
        self,
        registry_dir: Path,
        serve_cfg: dict[str, Any],
        log_dir: Path,
        spare: bool,
        startup_timeout_s: float,
    ) -> None:
        super().__init__(
            registry_dir, startup_timeout_s=startup_timeout_s, stop_grace_s=STOP_GRACE_S
        )
        self.serve_cfg = serve_cfg
        self.log_dir = log_dir
        self.spare = spare
        self.sessions: list[int] = []
        self.left_behind = 0  # processes killed: still alive SESSION_EXIT_S after the stop

    def command(self) -> list[str]:
        assert self.port is not None
        cmd = [sys.executable, "-m", "lmforge.serve.supervisor"]
        cmd += ["--registry", str(self.registry_dir), "--host", self.host]
        cmd += ["--port", str(self.port), "--log-dir", str(self.log_dir)]
        cmd += ["--config-json", json.dumps(self.serve_cfg)]
        return cmd + ([] if self.spare else ["--no-spare"])

    def _spawn(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The child imports the same lmforge as this process, installed or not.
        src = str(Path(lmforge.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            env=env,
            start_new_session=True,
        )
        self.sessions.append(self.proc.pid)

    def stop(self) -> int | None:
        try:
            return super().stop()
        finally:
            deadline = time.monotonic() + SESSION_EXIT_S
            for sid in self.sessions:
                while session_members(sid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.left_behind += kill_session(sid)
            self.sessions.clear()


# --- the front's status and metrics ------------------------------------------------------------


def get_health(client: httpx.Client, url: str) -> dict[str, Any] | None:
    """GET /gateway/healthz as JSON; None when it did not answer 200 in time."""
    try:
        resp = client.get(url + "/gateway/healthz", timeout=HEALTHZ_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    data: dict[str, Any] = resp.json()
    return data


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{k="v",...}': value}, labels sorted, for before/after deltas."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def get_metrics(client: httpx.Client, url: str) -> dict[str, float] | None:
    try:
        resp = client.get(url + "/gateway/metrics", timeout=HEALTHZ_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return parse_metrics(resp.text) if resp.status_code == 200 else None


def metric_delta(
    before: dict[str, float] | None, after: dict[str, float] | None, name: str
) -> float | None:
    if before is None or after is None or name not in after:
        return None
    return after[name] - before.get(name, 0.0)


def restart_histogram(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, Any] | None:
    """lmforge_worker_restart_seconds observed between two snapshots: count, sum, buckets."""
    if before is None or after is None:
        return None
    prefix = "lmforge_worker_restart_seconds"
    count = metric_delta(before, after, f"{prefix}_count") or 0.0
    total = metric_delta(before, after, f"{prefix}_sum") or 0.0
    buckets = {
        key.split('le="')[1].rstrip('"}'): int(after[key] - before.get(key, 0.0))
        for key in after
        if key.startswith(f"{prefix}_bucket{{")
    }
    return {
        "count": int(count),
        "sum_s": round(total, 4),
        "mean_s": round(total / count, 4) if count else None,
        "cumulative_buckets": buckets,
    }


def wait_for_spare(client: httpx.Client, url: str, timeout_s: float) -> bool:
    """Until /gateway/healthz shows a ready spare (or `timeout_s`); whether it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = get_health(client, url)
        spare = None if status is None else status.get("spare")
        if spare is not None and spare.get("ready"):
            return True
        time.sleep(SPARE_POLL_S)
    return False


# --- the killer ---------------------------------------------------------------------------------


@dataclass
class KillRecord:
    """One kill and what the front showed afterwards; times in seconds (offsets: of the load)."""

    index: int
    planned_s: float
    at_s: float | None = None
    worker: int | None = None
    pid: int | None = None
    port: int | None = None
    spare_ready_at_kill: bool | None = None
    new_pid: int | None = None
    new_port: int | None = None
    via: str | None = None
    last_exit: str | None = None
    noticed_s: float | None = None  # kill -> the first healthz showing the worker gone
    in_rotation_s: float | None = None  # kill -> new pid ready and its upstream up
    supervisor_restart_s: float | None = None  # death noticed -> ready, as the supervisor saw it
    metrics_restart_s: float | None = None  # the same, from the restart histogram's sum
    spare_ready_again_s: float | None = None  # kill -> a new spare ready
    retries: float | None = None  # gateway retries from just before the kill to back in rotation
    polls: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 4)
        return out


@dataclass
class Recorder:
    """The load's `on_result`: every (scheduled offset, status, latency), and the load's t0."""

    rows: list[tuple[float, int | str, float]] = field(default_factory=list)
    t0: float | None = None  # the load's first scheduled send, on time.perf_counter()
    started: threading.Event = field(default_factory=threading.Event)

    def __call__(self, offset: float, status: int | str, latency: float) -> None:
        if self.t0 is None:  # called as the answer settles: now = t0 + offset + latency
            self.t0 = time.perf_counter() - latency - offset
            self.started.set()
        self.rows.append((offset, status, latency))


class Killer(threading.Thread):
    """SIGKILLs one worker at each planned load offset and times its replacement."""

    def __init__(
        self,
        url: str,
        sid: int,
        plan_s: list[float],
        duration_s: float,
        recorder: Recorder,
        poll_s: float,
        restart_timeout_s: float,
        spare: bool,
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.url = url
        self.sid = sid
        self.plan_s = plan_s
        self.duration_s = duration_s
        self.recorder = recorder
        self.poll_s = poll_s
        self.restart_timeout_s = restart_timeout_s
        self.spare = spare
        self.stop = threading.Event()  # the load ended: no more kills
        self.abort = threading.Event()  # the run failed: stop measuring too
        self.kills: list[KillRecord] = [KillRecord(i, p) for i, p in enumerate(plan_s)]
        self.error: str | None = None

    def run(self) -> None:
        try:
            with httpx.Client(trust_env=False) as client:
                self._run(client)
        except Exception as exc:  # reported in the JSON; the load goes on regardless
            self.error = f"{type(exc).__name__}: {exc}"

    def _run(self, client: httpx.Client) -> None:
        fallback = time.perf_counter()
        self.recorder.started.wait(T0_WAIT_S)
        t0 = self.recorder.t0 if self.recorder.t0 is not None else fallback
        for k, record in enumerate(self.kills):
            if self.stop.wait(max(t0 + record.planned_s - time.perf_counter(), 0.0)):
                record.error = "not done: the load ended first"
                continue
            next_due = t0 + (self.plan_s[k + 1] if k + 1 < len(self.plan_s) else self.duration_s)
            self._kill_one(client, record, k, t0, next_due)
            log(self._describe(record))

    def _kill_one(
        self, client: httpx.Client, record: KillRecord, k: int, t0: float, next_due: float
    ) -> None:
        status = get_health(client, self.url)
        if status is None:
            record.error = "GET /gateway/healthz failed before the kill"
            return
        workers = status["workers"]
        order = [(k + i) % len(workers) for i in range(len(workers))]  # 0, 1, 0 ...
        ready = [
            w
            for w in (workers[i] for i in order)
            if w["state"] == "ready" and w["pid"] and in_session(w["pid"], self.sid)
        ]
        if not ready:
            record.error = f"no ready worker to kill: {[w['state'] for w in workers]}"
            return
        victim = ready[0]
        index, old_pid = int(victim["index"]), int(victim["pid"])
        spare = status.get("spare")
        record.worker, record.pid, record.port = index, old_pid, victim["port"]
        record.spare_ready_at_kill = bool(spare and spare.get("ready"))
        before = get_metrics(client, self.url)
        killed_at = time.perf_counter()
        try:
            os.killpg(old_pid, signal.SIGKILL)  # the worker leads its own group
        except ProcessLookupError:
            record.error = f"pid {old_pid} was gone before the kill"
            return
        record.at_s = killed_at - t0
        deadline = killed_at + self.restart_timeout_s
        slot: dict[str, Any] = victim
        # A kill near the load's end is still timed to its end (bounded by the deadline).
        while time.perf_counter() < deadline and not self.abort.is_set():
            status = get_health(client, self.url)
            seen_at = time.perf_counter()
            record.polls += 1
            if status is not None:
                slot = status["workers"][index]
                upstream = status["upstreams"][index]
                gone = slot["pid"] != old_pid or slot["state"] != "ready"
                if gone and record.noticed_s is None:
                    record.noticed_s = seen_at - killed_at
                if (
                    slot["pid"] not in (None, old_pid)
                    and slot["state"] == "ready"
                    and upstream["up"]
                    and upstream["url"].endswith(f":{slot['port']}")
                ):
                    record.in_rotation_s = seen_at - killed_at
                    break
            time.sleep(self.poll_s)
        record.new_pid, record.new_port = slot.get("pid"), slot.get("port")
        record.via, record.last_exit = slot.get("last_restart_via"), slot.get("last_exit")
        record.supervisor_restart_s = slot.get("last_restart_s")
        if record.in_rotation_s is None:
            record.error = f"not back in rotation within {self.restart_timeout_s:g} s"
            return
        after = get_metrics(client, self.url)
        record.retries = metric_delta(before, after, "lmforge_gateway_retries_total")
        count = metric_delta(before, after, "lmforge_worker_restart_seconds_count")
        if count == 1:  # exactly this restart was observed between the snapshots
            record.metrics_restart_s = metric_delta(
                before, after, "lmforge_worker_restart_seconds_sum"
            )
        # A new spare must be ready before the next kill for that one to be a takeover too.
        if self.spare and wait_for_spare(
            client, self.url, max(next_due - time.perf_counter(), 0.0)
        ):
            record.spare_ready_again_s = time.perf_counter() - killed_at

    @staticmethod
    def _describe(r: KillRecord) -> str:
        if r.at_s is None:
            return f"kill {r.index + 1} (planned at {r.planned_s:.1f} s): {r.error}"
        back = "NOT back" if r.in_rotation_s is None else f"back after {r.in_rotation_s:.3f} s"
        return (
            f"kill {r.index + 1} at {r.at_s:.2f} s: worker {r.worker} pid {r.pid} -> "
            f"pid {r.new_pid} via {r.via}; {back} (supervisor {r.supervisor_restart_s} s, "
            f"retries {r.retries}"
            + (
                f", new spare ready {r.spare_ready_again_s:.2f} s after the kill)"
                if r.spare_ready_again_s is not None
                else ")"
            )
            + (f"; {r.error}" if r.error else "")
        )


def kill_plan(first_s: float, interval_s: float, duration_s: float) -> list[float]:
    """Load offsets of the kills: first_s, first_s + interval_s, ... while < duration_s."""
    if first_s >= duration_s:
        return []
    return [first_s + i * interval_s for i in range(math.ceil((duration_s - first_s) / interval_s))]


# --- analysis -----------------------------------------------------------------------------------


def ok_status(status: int | str) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def window_stats(
    rows: list[tuple[float, int | str, float]], start_s: float, length_s: float
) -> dict[str, Any]:
    """Requests scheduled in [start_s, start_s + length_s): counts, failures, p50/p99/max."""
    inside = [r for r in rows if start_s <= r[0] < start_s + length_s]
    lat = [latency for _, status, latency in inside if ok_status(status)]
    failures: dict[str, int] = {}
    for _, status, _ in inside:
        if not ok_status(status):
            failures[str(status)] = failures.get(str(status), 0) + 1
    return {
        "from_s": round(start_s, 3),
        "seconds": length_s,
        "scheduled": len(inside),
        "ok": len(lat),
        "failed": len(inside) - len(lat),
        "failures": dict(sorted(failures.items())),
        **latency_stats(lat),
    }


def per_second(rows: list[tuple[float, int | str, float]], duration_s: float) -> dict[str, list]:
    """ok and failed requests per second of scheduled time."""
    n = max(math.ceil(duration_s), 1)
    ok, failed = [0] * n, [0] * n
    for offset, status, _ in rows:
        i = min(max(int(offset), 0), n - 1)
        if ok_status(status):
            ok[i] += 1
        else:
            failed[i] += 1
    return {"ok": ok, "failed": failed}


def failures_around(rows: list[tuple[float, int | str, float]], at_s: float) -> dict[str, Any]:
    """Failed requests per second of scheduled time, from AROUND_KILL_S[0] to [1] of `at_s`."""
    lo, hi = AROUND_KILL_S
    counts = [0] * (hi - lo)
    for offset, status, _ in rows:
        rel = offset - at_s
        if lo <= rel < hi and not ok_status(status):
            counts[math.floor(rel) - lo] += 1
    return {"from_s": lo, "failed": counts}


def outside_windows(
    rows: list[tuple[float, int | str, float]], kills_at: list[float], window_s: float
) -> list[float]:
    """Latencies of 2xx requests scheduled outside every [kill, kill + window_s)."""
    return [
        latency
        for offset, status, latency in rows
        if ok_status(status) and not any(at <= offset < at + window_s for at in kills_at)
    ]


def summarise_kills(kills: list[KillRecord]) -> dict[str, Any]:
    done = [k for k in kills if k.at_s is not None]
    back = sorted(k.in_rotation_s for k in done if k.in_rotation_s is not None)
    via: dict[str, int] = {}
    for k in done:
        key = k.via or "none"
        via[key] = via.get(key, 0) + 1
    supervisor = [k.supervisor_restart_s for k in done if k.supervisor_restart_s is not None]
    return {
        "kills_planned": len(kills),
        "kills_done": len(done),
        "back_in_rotation": len(back),
        "in_rotation_s": {
            "min": round(back[0], 4) if back else None,
            "median": round(back[len(back) // 2], 4) if back else None,
            "max": round(back[-1], 4) if back else None,
        },
        "supervisor_restart_s_max": max(supervisor) if supervisor else None,
        "via": dict(sorted(via.items())),
    }


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)  # --registry is copied: the workers write their serving store there
    add_load_rate_args(parser, load_fraction=0.5)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (>= 2)")
    parser.add_argument("--no-spare", action="store_true", help="no warm spare: cold restarts")
    parser.add_argument("--duration-s", type=positive_number, default=60.0, help="seconds of load")
    parser.add_argument("--kill-interval-s", type=positive_number, default=10.0)
    parser.add_argument(
        "--first-kill-s", type=positive_number, default=None, help="default: --kill-interval-s"
    )
    parser.add_argument("--window-s", type=positive_number, default=2.0, help="latency window")
    parser.add_argument("--poll-s", type=positive_number, default=0.01, help="healthz poll, s")
    parser.add_argument("--restart-timeout-s", type=positive_number, default=60.0)
    parser.add_argument("--startup-timeout-s", type=positive_number, default=180.0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 12 s of load, one kill at 4 s, short search trials (options still win)",
    )
    args = parse_with_quick(parser, argv, QUICK)
    if args.workers < 2:
        parser.error("--workers must be at least 2: killing the only worker measures nothing")
    if args.first_kill_s is None:
        args.first_kill_s = args.kill_interval_s
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    texts, texts_from = request_texts(args.eval)
    plan = kill_plan(args.first_kill_s, args.kill_interval_s, args.duration_s)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-chaos-") as tmp_name:
        tmp = Path(tmp_name)
        registry_dir, name, model_info = prepare_registry_copy(args, tmp, texts)
        serve_cfg = serve_section(model=name, workers=args.workers)
        server = SupervisedServer(
            registry_dir, serve_cfg, tmp / "worker-logs", not args.no_spare, args.startup_timeout_s
        )
        log(f"starting the supervisor ({args.workers} workers) ...")
        began = time.perf_counter()
        client = httpx.Client(trust_env=False)
        try:
            server.start()
            assert server.proc is not None
            sid = server.proc.pid
            started_s = time.perf_counter() - began
            warm_up(server.url, texts, START_WARMUP_S)  # first calls count in no measurement
            capacity, rate = load_rate(server.url, texts, args, log=log)
            spare_ok = None  # a kill is a takeover only if the spare is ready by then
            if not args.no_spare:
                spare_ok = wait_for_spare(client, server.url, args.startup_timeout_s)
            health_before = get_health(client, server.url)
            metrics_before = get_metrics(client, server.url)
            log(
                f"chaos at {rate:.1f} req/s for {args.duration_s:g} s; SIGKILL at "
                f"{[round(p, 1) for p in plan]} s ..."
            )
            recorder = Recorder()
            killer = Killer(
                server.url,
                sid,
                plan,
                args.duration_s,
                recorder,
                args.poll_s,
                args.restart_timeout_s,
                not args.no_spare,
            )
            load_before = load_average()
            killer.start()
            try:
                result = run_open_loop_sync(
                    server.url,
                    rate,
                    args.duration_s,
                    texts,
                    **open_loop_options(args, on_result=recorder),
                )
            except BaseException:  # Ctrl-C or a failed load: do not wait for a restart
                killer.abort.set()
                raise
            finally:
                killer.stop.set()
                killer.join(args.restart_timeout_s + 2 * HEALTHZ_TIMEOUT_S)
            load_after = load_average()
            health_after = get_health(client, server.url)
            metrics_after = get_metrics(client, server.url)
            server_alive = server.proc.poll() is None
        finally:
            client.close()
            exit_code = server.stop()  # also kills whatever is left of its session
        if result.failed or killer.error or any(k.error for k in killer.kills):
            log(f"supervisor output (tail):\n{server.last_output}")
    rows = recorder.rows
    kills_at = [k.at_s for k in killer.kills if k.at_s is not None]
    summary = result.summary()
    kills = []
    for k in killer.kills:
        entry = k.as_dict()
        if k.at_s is not None:
            entry["window"] = window_stats(rows, k.at_s, args.window_s)
            entry["failures_per_s_around"] = failures_around(rows, k.at_s)
        kills.append(entry)
    after_kills = [
        latency
        for offset, status, latency in rows
        if ok_status(status) and any(at <= offset < at + args.window_s for at in kills_at)
    ]
    kill_summary = summarise_kills(killer.kills)
    success = result.success
    all_back = kill_summary["back_in_rotation"] == len(plan) == kill_summary["kills_done"]
    report = {
        "benchmark": "serve_chaos",
        "model": {**model_info, "name": name},
        "texts": {"source": texts_from, "count": len(texts)},
        "cpus": os.cpu_count(),
        "server": {
            "command": "python -m lmforge.serve.supervisor (lmforge serve --workers N)",
            "workers": args.workers,
            "spare": not args.no_spare,
            "spare_ready_before_load": spare_ok,
            "started_s": round(started_s, 2),
            "alive_at_end": server_alive,
            "exit_code": exit_code,
            "processes_left_after_stop": server.left_behind,
        },
        "capacity": capacity,
        "load_fraction": None if args.rate is not None else args.load_fraction,
        "rate": round(rate, 1),
        "duration_s": args.duration_s,
        "connections": args.connections,
        "timeout_s": args.timeout_s,
        "kill_plan_s": plan,
        "load": {
            k: summary[k]
            for k in (
                *("offered_rate", "achieved_rate", "scheduled", "sent", "ok", "failed"),
                *("success", "failures", "p50_ms", "p99_ms", "p999_ms", "max_ms", "late_sends"),
            )
        },
        "success_ratio": round(success, 6),
        "target_success": TARGET_SUCCESS,
        "kills": kills,
        "restarts": kill_summary,
        "latency_after_kills": {
            "window_s": args.window_s,
            "ok": len(after_kills),
            **latency_stats(after_kills),
        },
        "latency_outside_windows": latency_stats(outside_windows(rows, kills_at, args.window_s)),
        "per_second": per_second(rows, args.duration_s),
        "gateway": {
            "retries": metric_delta(metrics_before, metrics_after, "lmforge_gateway_retries_total"),
            "worker_restarts": metric_delta(
                metrics_before, metrics_after, "lmforge_worker_restarts_total"
            ),
            "restart_seconds": restart_histogram(metrics_before, metrics_after),
        },
        "workers_before": None if health_before is None else health_before.get("workers"),
        "workers_after": None if health_after is None else health_after.get("workers"),
        "killer_error": killer.error,
        "all_back_in_rotation": all_back,
        "meets_target": success >= TARGET_SUCCESS and all_back,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    print(json.dumps(report))
    return report


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: the server's session is killed


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    main(sys.argv[1:])
