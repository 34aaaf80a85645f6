"""The supervisor: worker processes behind a gateway, replaced when they die or hang, drained on
SIGTERM; and two supervised zones behind one more gateway.

Everything here runs real processes on 127.0.0.1: the supervisor is started as
`python -m lmforge.serve.supervisor`, workers are killed with real signals, and load comes from
real HTTP clients. The helpers at the top (process start/stop, bounded waits, a load generator
that counts failures and latencies) are imported by test_gateway.py too.

The tests marked `timeout(...)` below the helpers are the slow ones (each starts one or more
supervisors, which import torch once: 10-40 s on a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest

import lmforge
from lmforge.config import ServeConfig
from lmforge.serve.server import ServeError
from lmforge.serve.supervisor import backoff_delay, exit_reason, run_supervised
from lmforge.serve.worker import default_threads, parse_config_json, worker_config

T = TypeVar("T")

STARTUP_S = 150.0  # a supervisor's first start imports torch: slow when the machine is busy
PREDICT = {"texts": ["The delivery was late and the box was damaged."]}


# --- helpers: processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment for a child: the same lmforge as this process, one torch thread."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    src = str(Path(lmforge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def process_start_ticks(pid: int) -> int | None:
    """The start time of `pid` (from /proc), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int) -> bool:
    return process_start_ticks(pid) is not None


class Proc:
    """A child in a session (and process group) of its own, its output in a temp file.

    `close()` stops it for sure: SIGTERM, then SIGKILL to the whole group; use it as a
    context manager so that happens even when the test fails.
    """

    def __init__(self, args: Sequence[str], name: str) -> None:
        self.args = list(args)
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self) -> Proc:
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        if self._out is None or self._out.closed:
            return ""
        self._out.flush()
        self._out.seek(0)
        return self._out.read().decode("utf-8", errors="replace")

    def check_running(self) -> None:
        if not self.running():
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"{self.name} exited with {code}; output:\n{self.output()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the whole process group (as a crash of the machine's zone would)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def close(self, grace_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.proc.wait(timeout=10)
        self.kill_group()  # anything left in its group
        return self.proc.returncode

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
        if self._out is not None:
            self._out.close()


def get_json(url: str, timeout_s: float = 2.0) -> Any:
    """GET `url` and its JSON, or None when it does not answer 200 (yet)."""
    try:
        resp = httpx.get(url, timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


class Supervised(Proc):
    """`python -m lmforge.serve.supervisor` on a free (or given) port, waited on until ready.

    Every worker pid it reports is remembered, and `close()` SIGKILLs any of them still alive
    (checked by start time, so a recycled pid is never hit).
    """

    def __init__(
        self,
        registry: Path,
        workers: int = 2,
        port: int | None = None,
        name: str = "supervisor",
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        if log_dir is not None:  # else a temp folder, kept when a worker failed
            extra_args = [*extra_args, "--log-dir", str(log_dir)]
        super().__init__(
            [
                sys.executable,
                "-m",
                "lmforge.serve.supervisor",
                "--registry",
                str(registry),
                "--workers",
                str(workers),
                "--port",
                str(self.port),
                *extra_args,
            ],
            name,
        )
        self.workers = workers
        self.seen_workers: dict[int, int] = {}  # pid -> start ticks

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any] | None:
        status = get_json(self.url + "/gateway/healthz")
        for worker in (status or {}).get("workers", []):
            pid = worker.get("pid")
            if pid and pid not in self.seen_workers:
                ticks = process_start_ticks(pid)
                if ticks is not None:
                    self.seen_workers[pid] = ticks
        return status

    def wait_ready(self, timeout_s: float = STARTUP_S) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            self.check_running()
            status = self.status()
            if not status or any(w["state"] != "ready" for w in status["workers"]):
                return None
            spare = status.get("spare")
            return status if spare is None or spare["ready"] else None

        return wait_until(ready, timeout_s, f"{self.name} on {self.url} to be ready", 0.2)

    def worker_pids(self) -> list[int]:
        status = self.status()
        assert status is not None, f"{self.name} does not answer; output:\n{self.output()}"
        return [w["pid"] for w in status["workers"]]

    def close(self, grace_s: float = 30.0) -> int | None:
        with contextlib.suppress(Exception):
            self.status()  # remember the current workers before stopping
        code = super().close(grace_s)
        for pid, ticks in self.seen_workers.items():
            if process_start_ticks(pid) == ticks:  # still that very worker: a leak
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.killpg(pid, signal.SIGKILL)
        return code


class GatewayProc(Proc):
    """`python -m lmforge.serve.gateway` in front of `upstreams`, waited on until it answers."""

    def __init__(
        self,
        upstreams: Sequence[str],
        port: int | None = None,
        max_body_bytes: int | None = None,
        name: str = "gateway",
    ) -> None:
        self.port = port or free_port()
        args = [sys.executable, "-m", "lmforge.serve.gateway", "--port", str(self.port)]
        for url in upstreams:
            args += ["--upstream", url]
        if max_body_bytes is not None:
            args += ["--max-body-bytes", str(max_body_bytes)]
        super().__init__(args, name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        status = get_json(self.url + "/gateway/healthz")
        assert status is not None, f"{self.name} does not answer; output:\n{self.output()}"
        return status

    def start(self) -> GatewayProc:
        super().start()

        def answers() -> bool:
            self.check_running()
            return get_json(self.url + "/gateway/healthz") is not None

        wait_until(answers, 60.0, f"{self.name} on {self.url} to answer")
        return self

    def wait_up(self, up: Sequence[int], down: Sequence[int] = (), timeout_s: float = 30.0) -> None:
        def settled() -> bool:
            self.check_running()
            ups = self.status()["upstreams"]
            return all(ups[i]["up"] for i in up) and not any(ups[i]["up"] for i in down)

        wait_until(settled, timeout_s, f"upstreams {list(up)} up and {list(down)} down")

    def __enter__(self) -> GatewayProc:
        return self.start()


# --- helpers: load ------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a load run saw: every failure (status or exception) and every latency."""

    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = lat[len(lat) // 2]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        head = "; ".join(self.failures[:5])
        return (
            f"{self.sent} sent, {self.ok} ok, {len(self.failures)} failed "
            f"(p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms)"
            + (f"; first failures: {head}" if head else "")
        )


async def run_load(
    url: str,
    duration_s: float,
    concurrency: int = 8,
    body: Any = PREDICT,
    timeout_s: float = 30.0,
) -> LoadReport:
    """`concurrency` clients POSTing `body` to `url` back to back for `duration_s`."""
    import aiohttp

    report = LoadReport()
    stop_at = time.monotonic() + duration_s
    # Client keep-alive below the server's 5 s, so the client never reuses a closing connection.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s), trust_env=False
    ) as session:

        async def client() -> None:
            while time.monotonic() < stop_at:  # bounded by the duration
                started = time.monotonic()
                report.sent += 1
                try:
                    async with session.post(url, json=body) as resp:
                        data = await resp.read()
                        if resp.status == 200:
                            report.ok += 1
                        else:
                            report.failures.append(f"{resp.status} {data[:200]!r}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    report.failures.append(repr(exc))
                report.latencies.append(time.monotonic() - started)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return report


async def poll_async(
    check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """`wait_until` for async code: `check` runs in a thread so the load keeps going."""
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


# --- fast tests: no worker processes ------------------------------------------------------------


def test_backoff_grows_and_is_capped():
    assert [backoff_delay(n) for n in range(1, 8)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff_delay(50) == 10.0


def test_exit_reason_names_signals():
    assert exit_reason(-9) == "was killed by SIGKILL"
    assert exit_reason(3) == "exited with code 3"


def test_worker_threads_default_to_cores_per_worker():
    cores = os.cpu_count() or 1
    cfg = worker_config(ServeConfig(workers=2, port=1234), 4321)
    assert (cfg.host, cfg.port) == ("127.0.0.1", 4321)
    assert cfg.backend.threads == max(1, cores // 2) == default_threads(2)
    pinned = ServeConfig.model_validate({"workers": 2, "backend": {"threads": 3}})
    assert worker_config(pinned, 1).backend.threads == 3  # the user's choice wins


def test_bad_config_json_is_a_clear_error():
    with pytest.raises(Exception, match=r"--config-json: serve\.workers"):
        parse_config_json('{"workers": 0}')
    with pytest.raises(Exception, match="not valid JSON"):
        parse_config_json("{workers")


def test_busy_port_fails_before_any_worker_starts(tiny_registry):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServeError, match=f"port {port} on 127.0.0.1 is already in use"):
            run_supervised(tiny_registry, ServeConfig(port=port, workers=2))
        assert time.monotonic() - started < 2.0


def test_missing_registry_is_reported(tmp_path):
    with pytest.raises(ServeError, match="no model registry"):
        run_supervised(tmp_path / "nowhere", ServeConfig(port=0, workers=2))


# --- slow tests: real supervisors ---------------------------------------------------------------


@pytest.mark.timeout(180)
def test_kill9_worker_under_load_loses_no_request_and_restarts_fast(tiny_registry, tmp_path):
    with Supervised(tiny_registry, workers=2, log_dir=tmp_path / "logs") as sup:
        before = sup.wait_ready()
        victim = before["workers"][0]["pid"]
        other = before["workers"][1]["pid"]

        def replaced() -> dict[str, Any] | None:
            status = sup.status()
            if not status:
                return None
            w0, up0 = status["workers"][0], status["upstreams"][0]
            return status if w0["pid"] != victim and w0["state"] == "ready" and up0["up"] else None

        async def scenario() -> tuple[LoadReport, float, dict[str, Any]]:
            load = asyncio.create_task(run_load(sup.url + "/v1/predict", duration_s=8.0))
            await asyncio.sleep(2.0)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            status = await poll_async(replaced, 15.0, "worker 0 to be replaced", 0.02)
            back_s = time.monotonic() - killed_at
            return await load, back_s, status

        report, back_s, status = asyncio.run(scenario())
        assert report.failures == [], report.summary()
        assert report.ok > 50, report.summary()
        assert back_s < 3.0, f"worker 0 took {back_s:.2f} s to be back after kill -9 (< 3 s)"
        w0 = status["workers"][0]
        assert w0["restarts"] == 1 and "SIGKILL" in w0["last_exit"]
        assert w0["last_restart_s"] < 3.0, f"supervisor measured {w0['last_restart_s']} s"
        assert status["workers"][1]["pid"] == other  # the other worker was left alone
        print(
            f"\nkill -9: back in {back_s:.2f} s (supervisor: {w0['last_restart_s']:.2f} s); "
            f"load: {report.summary()}"
        )

        own = httpx.get(sup.url + "/gateway/metrics", timeout=5).text
        assert "lmforge_worker_restarts_total 1.0" in own
        assert "lmforge_worker_restart_seconds_count 1.0" in own
        merged = httpx.get(sup.url + "/metrics", timeout=5).text
        types = [line for line in merged.splitlines() if line.startswith("# TYPE ")]
        assert len(types) == len(set(types)), "a metric family is declared twice"
        assert 'worker="0"' in merged and 'worker="1"' in merged
        assert "lmforge_gateway_requests_total" in merged
        assert w0["last_restart_via"] == "spare"
        assert f"worker 0 is back as pid {w0['pid']}" in sup.output()
        assert "took over by the warm spare in" in sup.output()
        # The spare that took over is replaced by a new one, ready for the next failure.
        spare = wait_until(lambda: (sup.status() or {}).get("spare"), 60.0, "a new spare", 0.2)
        wait_until(lambda: (sup.status() or {})["spare"]["ready"], 60.0, "the new spare ready")
        assert spare["pid"] not in (victim, other, w0["pid"])


@pytest.mark.timeout(180)
def test_hung_worker_is_detected_and_replaced_without_failed_requests(tiny_registry, tmp_path):
    with Supervised(tiny_registry, workers=2, log_dir=tmp_path / "logs") as sup:
        before = sup.wait_ready()
        victim = before["workers"][1]["pid"]

        def replaced() -> dict[str, Any] | None:
            status = sup.status()
            w1 = (status or {}).get("workers", [{}, {}])[1]
            return status if w1.get("pid") != victim and w1.get("state") == "ready" else None

        async def scenario() -> tuple[LoadReport, float, dict[str, Any]]:
            load = asyncio.create_task(run_load(sup.url + "/v1/predict", duration_s=9.0))
            await asyncio.sleep(1.5)
            stopped_at = time.monotonic()
            os.kill(victim, signal.SIGSTOP)
            status = await poll_async(replaced, 20.0, "the hung worker to be replaced")
            replaced_s = time.monotonic() - stopped_at
            return await load, replaced_s, status

        try:
            report, replaced_s, status = asyncio.run(scenario())
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)  # if it was not killed, let close() stop it
        assert report.failures == [], report.summary()
        w1 = status["workers"][1]
        assert "hung" in w1["last_exit"], w1
        assert not alive(victim)
        # Two 1 s health timeouts, then the spare takes over.
        assert replaced_s < 6.0, f"the hung worker was replaced only after {replaced_s:.1f} s"
        print(f"\nSIGSTOP: replaced after {replaced_s:.2f} s; load: {report.summary()}")


@pytest.mark.timeout(180)
def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_registry, tmp_path):
    import aiohttp

    with Supervised(tiny_registry, workers=2, log_dir=tmp_path / "logs") as sup:
        sup.wait_ready()
        pids = sup.worker_pids()
        n = 12

        def port_closed() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", sup.port), timeout=0.5):
                    return False
            except OSError:
                return True

        def in_flight() -> bool:
            status = get_json(sup.url + "/gateway/healthz")
            return bool(status) and status["in_flight"] >= n

        async def scenario() -> list[tuple[int, bytes]]:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30), trust_env=False
            ) as session:

                async def one() -> tuple[int, bytes]:
                    async with session.post(sup.url + "/v1/predict", json=PREDICT) as resp:
                        return resp.status, await resp.read()

                # Frozen workers hold every request in flight until we let them go.
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    tasks = [asyncio.create_task(one()) for _ in range(n)]
                    await poll_async(in_flight, 5.0, f"{n} requests in flight", 0.02)
                    sup.signal(signal.SIGTERM)
                    await poll_async(port_closed, 5.0, "the public port to stop accepting", 0.02)
                finally:
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)
                return await asyncio.gather(*tasks)

        results = asyncio.run(scenario())
        assert [status for status, _ in results] == [200] * n, results
        code = sup.wait(30.0)
        assert code == 0, sup.output()
        assert "supervisor stopped" in sup.output()
        wait_until(lambda: not any(alive(pid) for pid in pids), 5.0, "the workers to be gone")


@pytest.mark.timeout(180)
def test_crash_loop_backs_off_and_is_reported(tiny_registry, tmp_path):
    # Without a spare, every replacement is a new worker started on the same port.
    with Supervised(
        tiny_registry, workers=1, extra_args=["--no-spare"], log_dir=tmp_path / "logs"
    ) as sup:
        port = sup.wait_ready()["workers"][0]["port"]
        for round_ in range(3):  # three deaths in a row, each soon after the last start
            pid = sup.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)

            def back(pid: int = pid) -> dict[str, Any] | None:
                status = sup.status()
                w = (status or {}).get("workers", [{}])[0]
                return w if w.get("pid") not in (None, pid) and w.get("state") == "ready" else None

            worker = wait_until(back, 30.0, f"restart {round_ + 1}")
        assert worker["crash_streak"] == 3
        assert worker["restarts"] == 3
        assert worker["port"] == port and worker["last_restart_via"] == "respawn"
        # The third restart waited out a 1 s backoff (0 s, then 0.5 s, then 1 s).
        assert worker["last_restart_s"] >= 1.0, worker
        out = sup.output()
        assert "is crash-looping (3 deaths" in out and "next restart in 1 s" in out, out


@pytest.mark.timeout(180)
def test_kills_in_quick_succession_are_served_by_spares_without_backoff(tiny_registry, tmp_path):
    # Killing from outside looks like a crash loop to the streak counter, but a ready spare
    # needs no process start, so it takes over at once instead of waiting out a backoff.
    with Supervised(tiny_registry, workers=1, log_dir=tmp_path / "logs") as sup:
        sup.wait_ready()
        for round_ in range(3):
            wait_until(
                lambda: ((sup.status() or {}).get("spare") or {}).get("ready") is True,
                60.0,
                f"spare ready before kill {round_ + 1}",
            )
            pid = sup.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)

            def back(pid: int = pid) -> dict[str, Any] | None:
                w = ((sup.status() or {}).get("workers") or [{}])[0]
                return w if w.get("pid") not in (None, pid) and w.get("state") == "ready" else None

            worker = wait_until(back, 30.0, f"replacement {round_ + 1}")
            assert worker["last_restart_via"] == "spare", worker
            assert worker["last_restart_s"] < 0.5, worker
        assert worker["crash_streak"] == 3  # counted, but it did not slow the takeover


@pytest.mark.timeout(180)
def test_worker_that_cannot_start_stops_the_supervisor_with_its_log(tmp_path, tiny_model_dir):
    import shutil

    from lmforge.registry import ModelRegistry

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    registry = tmp_path / "registry"
    ModelRegistry(registry).register("broken", broken, alias="production")
    with Supervised(registry, 1, name="broken supervisor", log_dir=tmp_path / "logs") as sup:
        code = sup.wait(STARTUP_S)
        out = sup.output()
    assert code == 2, out
    assert "worker 0" in out and "before it was ready" in out, out
    assert "log" in out and "ends with" in out, out


@pytest.mark.timeout(180)
def test_worker_cli_serves_and_stops_when_its_parent_is_gone(tiny_registry):
    # A sleeping process stands in for the supervisor that started the worker.
    parent = Proc([sys.executable, "-c", "import time; time.sleep(300)"], "stand-in parent")
    port = free_port()
    cfg = json.dumps(ServeConfig(workers=2).model_dump(mode="json"))
    args = ["--registry", str(tiny_registry), "--port", str(port), "--config-json", cfg]
    with parent:
        args += ["--parent-pid", str(parent.pid)]
        with Proc([sys.executable, "-m", "lmforge.serve.worker", *args], "worker") as worker:

            def ready() -> Any:
                worker.check_running()
                return get_json(f"http://127.0.0.1:{port}/readyz")

            wait_until(ready, STARTUP_S, "the worker to be ready", 0.2)
            parent.kill_group()
            code = worker.wait(30.0)  # it notices within 0.5 s and drains
            out = worker.output()
    assert code == 0, out
    assert f"on http://127.0.0.1:{port}" in out and "server stopped" in out


@pytest.mark.timeout(240)
def test_two_zones_behind_a_gateway_survive_losing_a_zone(tiny_registry, tmp_path):
    # No spares: this is about losing a whole zone, and spares would only slow the start.
    lean = ["--no-spare"]
    zone_a = Supervised(tiny_registry, 1, name="zone a", extra_args=lean, log_dir=tmp_path / "a")
    zone_b = Supervised(tiny_registry, 1, name="zone b", extra_args=lean, log_dir=tmp_path / "b")
    with zone_a, zone_b:
        zone_a.wait_ready()
        zone_b.wait_ready()
        a_workers = zone_a.worker_pids()
        with GatewayProc([zone_a.url, zone_b.url]) as front:
            front.wait_up([0, 1])

            async def scenario() -> LoadReport:
                load = asyncio.create_task(run_load(front.url + "/v1/predict", duration_s=6.0))
                await asyncio.sleep(2.0)
                zone_a.kill_group()  # the supervisor, its fork server: the whole zone
                return await load

            report = asyncio.run(scenario())
            assert report.failures == [], report.summary()
            print(f"\nzone a lost under load: {report.summary()}")
            # Its worker was in a group of its own; it must die with its supervisor anyway.
            wait_until(lambda: not any(alive(p) for p in a_workers), 10.0, "zone a's worker")
            status = front.status()
            assert status["upstreams"][0]["up"] is False

            # Bring zone a back on the same port: the gateway picks it up again.
            again = Supervised(
                tiny_registry,
                1,
                port=zone_a.port,
                name="zone a again",
                extra_args=lean,
                log_dir=tmp_path / "a2",
            )
            with again as a2:
                a2.wait_ready()
                front.wait_up([0, 1])
                report = asyncio.run(run_load(front.url + "/v1/predict", 3.0, concurrency=4))
                assert report.failures == [], report.summary()
                metrics = httpx.get(a2.url + "/gateway/metrics", timeout=5).text
                served = sum(
                    float(line.split()[-1])
                    for line in metrics.splitlines()
                    if line.startswith('lmforge_gateway_requests_total{status="200"}')
                )
                assert served > 0, "the restarted zone got no traffic:\n" + metrics
                merged = httpx.get(front.url + "/metrics", timeout=5).text
                assert 'zone="0"' in merged and 'zone="1"' in merged
                assert json.loads(httpx.get(front.url + "/gateway/healthz").text)["status"] == "ok"
