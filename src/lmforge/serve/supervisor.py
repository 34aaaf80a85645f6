"""`lmforge serve --workers N`: N worker processes behind one gateway, kept alive.

Layout: this process binds the public port and runs the gateway (`lmforge.serve.gateway`) on
it; each worker is a single-process server (`lmforge.serve.worker`) on its own 127.0.0.1 port,
in its own process group, writing its output to a file under the log folder.

Workers are forked from a fork server that imported torch and the app once at startup, so a
new one starts without paying for those imports again. A monitor loop (every 0.1 s) notices a
worker that exited at once, and a hung one when /healthz fails twice in a row (1 s timeout
each); it kills the old process (SIGKILL to its group) and puts the warm spare (one extra
worker kept started and ready, out of rotation) in its place, or, with no spare ready, starts
a new worker on the same port; how long that took is printed, logged and kept in the metrics.
A worker that keeps dying within seconds of starting is restarted with an exponential backoff
(0.5 s, 1 s, 2 s ... capped at 10 s), and each of those restarts is reported with the tail of
its log.

SIGTERM or Ctrl-C drains: the public port stops accepting, in-flight requests finish (at most
10 s), then the workers get SIGTERM (they drain too) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.config import ServeConfig
from lmforge.errors import LmforgeError
from lmforge.serve.gateway import (
    Gateway,
    GatewayMetrics,
    make_server,
    on_stop_signals,
    run_async,
)
from lmforge.serve.server import GRACEFUL_SHUTDOWN_S, ServeError, bind_socket, check_registry
from lmforge.serve.worker import (
    EXIT_PORT_BUSY,
    PRELOAD_MODULES,
    child_main,
    warm_up,
    worker_config,
)

log = logging.getLogger("lmforge.serve.supervisor")

MONITOR_INTERVAL_S = 0.1
LIVENESS_INTERVAL_S = 0.25
LIVENESS_TIMEOUT_S = 1.0
HUNG_AFTER = 2  # /healthz failures in a row
READY_POLL_S = 0.05
STARTUP_TIMEOUT_S = 180.0  # first start: the fork server imports torch, workers load the model
RESTART_TIMEOUT_S = 60.0
CRASH_WINDOW_S = 10.0  # dying sooner than this after becoming ready counts as a crash loop
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 10.0
WORKER_STOP_S = GRACEFUL_SHUTDOWN_S + 5.0
REAP_S = 5.0
PORT_ATTEMPTS = 3
TAIL_CHARS = 2500


class SupervisorError(ServeError):
    """The workers could not be started (a worker died or was not ready in time)."""


def backoff_delay(crash_streak: int) -> float:
    """Seconds to wait before restart number `crash_streak` of a crash loop (first: none)."""
    if crash_streak <= 1:
        return 0.0
    return min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2.0 ** (crash_streak - 2))


def exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


def free_local_port() -> int:
    """A free 127.0.0.1 port (the OS picks it); the worker binds it a moment later."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, max_chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_chars))
            text = fh.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return "(no output)"
    return text or "(no output)"


@dataclass
class WorkerProcess:
    """One started worker process: where it listens and where its output goes."""

    process: Any  # multiprocessing.Process
    port: int
    log_path: Path
    started_at: float

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exitcode(self) -> int | None:
        return self.process.exitcode


@dataclass
class WorkerSlot:
    """One worker position behind the gateway; the process in it is replaced when it fails."""

    index: int
    worker: WorkerProcess | None = None
    state: str = "starting"  # starting | ready | restarting | backoff | stopped
    ready_at: float | None = None
    restarts: int = 0
    crash_streak: int = 0
    last_exit: str | None = None
    last_restart_s: float | None = None
    last_restart_via: str | None = None  # "spare" or "respawn"

    @property
    def pid(self) -> int | None:
        return None if self.worker is None else self.worker.pid

    @property
    def url(self) -> str:
        assert self.worker is not None
        return self.worker.url

    def describe(self) -> dict[str, Any]:
        w = self.worker
        return {
            "index": self.index,
            "pid": None if w is None else w.pid,
            "port": None if w is None else w.port,
            "state": self.state,
            "restarts": self.restarts,
            "crash_streak": self.crash_streak,
            "last_exit": self.last_exit,
            "last_restart_s": self.last_restart_s,
            "last_restart_via": self.last_restart_via,
            "log": None if w is None else str(w.log_path),
        }


class _Stopped(Exception):
    """Shutdown was asked for while workers were still starting."""


class Supervisor:
    """Starts, watches, replaces and stops the workers; serves the gateway in front of them.

    With `spare` (the default) one extra worker is kept started and ready but out of
    rotation; a failed worker's place is taken by it at once (the restart then costs a health
    check, not a model load) and a new spare is started in the background. Without a ready
    spare, the failed worker is started again on its own port.
    """

    def __init__(
        self,
        registry_dir: Path,
        cfg: ServeConfig,
        console: Console,
        log_dir: Path,
        spare: bool = True,
    ) -> None:
        self.registry_dir = Path(registry_dir)
        self.cfg = cfg
        self.console = console
        self.log_dir = Path(log_dir)
        self.use_spare = spare
        self.metrics = GatewayMetrics()
        self.slots = [WorkerSlot(i) for i in range(cfg.workers)]
        self.spare: WorkerProcess | None = None
        self.spare_ready = False
        self.gateway: Gateway | None = None
        self.server: Any = None
        self.stopping = False
        self.crashed = False  # a worker died or hung: the logs are worth keeping
        self._spares_started = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: Any = None
        methods = multiprocessing.get_all_start_methods()
        # forkserver: each worker is forked from a process that already imported torch.
        self._ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
        if "forkserver" in methods:
            self._ctx.set_forkserver_preload(list(PRELOAD_MODULES))

    # --- the whole run ---------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Shutdown has begun (our signal handler, or uvicorn's while it serves)."""
        return self.stopping or (self.server is not None and bool(self.server.should_exit))

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def request_stop(self) -> None:
        """Signal handler: drain and stop (safe to call more than once)."""
        self.stopping = True
        if self.server is not None:
            self.server.should_exit = True

    async def run(self, sock: Any) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0), trust_env=False
        )
        try:
            await self._start_all()
            self.gateway = Gateway(
                [slot.url for slot in self.slots],
                max_body_bytes=self.cfg.max_body_bytes,
                metrics=self.metrics,
                metrics_label="worker",
                initially_up=True,
                status_extra=self.status,
            )
            self.server = make_server(self.gateway, GRACEFUL_SHUTDOWN_S)
            if self.stopping:
                return
            self._spawn_task(self._monitor(), "supervisor-monitor")
            for slot in self.slots:
                self._spawn_task(self._liveness(slot), f"supervisor-liveness-{slot.index}")
            if self.use_spare:
                self._spawn_task(self._keep_spare(), "supervisor-spare")
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            pids = ", ".join(str(slot.pid) for slot in self.slots)
            self.say(
                f"serving on http://{shown}:{port} with {len(self.slots)} worker(s) "
                f"(pids {pids}; logs in {self.log_dir})  (Ctrl-C drains and stops)"
            )
            await self.server.serve(sockets=[sock])
            if not self.server.started and not self.stopping:
                raise SupervisorError("the gateway did not start; see the log above")
        finally:
            self.stopping = True
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._stop_workers()
            await self._session.close()

    def status(self) -> dict[str, Any]:
        spare = self.spare
        return {
            "supervisor": {"pid": os.getpid(), "log_dir": str(self.log_dir)},
            "workers": [slot.describe() for slot in self.slots],
            "spare": None
            if spare is None
            else {"pid": spare.pid, "port": spare.port, "ready": self.spare_ready},
        }

    def _spawn_task(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- processes -------------------------------------------------------------------------------

    def _spawn(self, port: int, log_path: Path, name: str) -> WorkerProcess:
        cfg_json = worker_config(self.cfg, port).model_dump_json()
        proc = self._ctx.Process(
            target=child_main,
            args=(str(self.registry_dir), port, cfg_json, str(log_path), os.getpid()),
            name=f"lmforge-{name}",
            daemon=True,  # if this process ends without stopping them, multiprocessing does
        )
        proc.start()
        return WorkerProcess(proc, port, log_path, time.monotonic())

    def _kill(self, worker: WorkerProcess | None, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the worker's process group (the worker, and anything it started)."""
        if worker is None or worker.exitcode() is not None:
            return
        try:
            os.killpg(worker.pid, sig)
        except (ProcessLookupError, PermissionError):
            # Not (yet) a group leader: it was killed before its own setpgid ran.
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)

    async def _reap(self, worker: WorkerProcess | None, timeout_s: float = REAP_S) -> bool:
        if worker is None:
            return True
        deadline = time.monotonic() + timeout_s
        while worker.exitcode() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return worker.exitcode() is not None

    async def _probe(self, url: str, timeout_s: float) -> str:
        """ "" when `url` answers 200 within `timeout_s`, else what went wrong."""
        import aiohttp

        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                await resp.read()
                return "" if resp.status == 200 else f"answered {resp.status}"
        except asyncio.TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return f"failed ({type(exc).__name__})"

    async def _wait_ready(self, worker: WorkerProcess, timeout_s: float) -> tuple[bool, str]:
        """(True, "") once the worker's /readyz answers 200; (False, why) if it died first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.draining:
            code = worker.exitcode()
            if code is not None:
                return False, exit_reason(code)
            if not await self._probe(worker.url + "/readyz", 1.0):
                return True, ""
            await asyncio.sleep(READY_POLL_S)
        if self.draining:
            return False, "was stopped"
        return False, f"was not ready after {timeout_s:.0f} s"

    # --- starting --------------------------------------------------------------------------------

    async def _start_all(self) -> None:
        # The fork server imports torch once (seconds); wait for it off the event loop, before
        # any worker exists, so signals are still handled meanwhile.
        if self._ctx.get_start_method() == "forkserver":
            await asyncio.to_thread(self._warm_up)
        if self.stopping:
            raise _Stopped
        for slot in self.slots:
            slot.worker = self._spawn(free_local_port(), self._log(slot), f"worker-{slot.index}")
        if self.use_spare:
            self._start_spare()  # loads alongside the workers; serving does not wait for it
        await asyncio.gather(*(self._first_start(slot) for slot in self.slots))

    def _log(self, slot: WorkerSlot) -> Path:
        return self.log_dir / f"worker-{slot.index}.log"

    def _warm_up(self) -> None:
        proc = self._ctx.Process(target=warm_up, name="lmforge-warm-up", daemon=True)
        proc.start()
        proc.join(STARTUP_TIMEOUT_S)

    async def _first_start(self, slot: WorkerSlot) -> None:
        for attempt in range(PORT_ATTEMPTS):
            worker = slot.worker
            assert worker is not None
            ready, why = await self._wait_ready(worker, STARTUP_TIMEOUT_S)
            if ready:
                slot.state, slot.ready_at = "ready", time.monotonic()
                return
            if self.draining:
                raise _Stopped
            self._kill(worker)
            await self._reap(worker)
            if worker.exitcode() == EXIT_PORT_BUSY and attempt < PORT_ATTEMPTS - 1:
                # Someone took the port since we picked it: pick another.
                slot.worker = self._spawn(
                    free_local_port(), worker.log_path, f"worker-{slot.index}"
                )
                continue
            raise SupervisorError(
                f"worker {slot.index} (port {worker.port}) {why} before it was ready; its log "
                f"({worker.log_path}) ends with:\n{log_tail(worker.log_path)}"
            )

    # --- the warm spare --------------------------------------------------------------------------

    def _start_spare(self) -> WorkerProcess:
        self._spares_started += 1
        log_path = self.log_dir / f"spare-{self._spares_started}.log"
        spare = self._spawn(free_local_port(), log_path, "spare")
        self.spare, self.spare_ready = spare, False
        return spare

    async def _keep_spare(self) -> None:
        """Keep one started, ready worker out of rotation, to take a failed worker's place."""
        failures = 0
        while not self.draining:  # until shutdown
            spare = self.spare
            if spare is None:
                delay = backoff_delay(failures + 1) if failures else 0.0
                if delay:  # a spare that cannot start is retried, ever more slowly
                    await asyncio.sleep(delay)
                    if self.draining:
                        return
                spare = self._start_spare()
            if not self.spare_ready:
                ready, why = await self._wait_ready(spare, RESTART_TIMEOUT_S)
                if self.spare is not spare:
                    continue  # taken meanwhile (only ready ones are) or replaced
                if ready:
                    self.spare_ready = True
                    failures = 0
                else:
                    self.spare = None
                    self._kill(spare)
                    await self._reap(spare)
                    failures += 1
                    if not self.draining:
                        self.say(
                            f"the spare worker {why} before it was ready; retrying; its log "
                            f"({spare.log_path}) ends with:\n{log_tail(spare.log_path, 800)}"
                        )
            elif spare.exitcode() is not None:
                self.say(f"the spare worker (pid {spare.pid}) {exit_reason(spare.exitcode())}")
                self.spare, self.spare_ready = None, False
                failures += 1
            await asyncio.sleep(MONITOR_INTERVAL_S)

    async def _take_spare(self) -> WorkerProcess | None:
        """The ready spare, checked once more, now out of the pool; None if there is none."""
        spare = self.spare
        if spare is None or not self.spare_ready or spare.exitcode() is not None:
            return None
        self.spare, self.spare_ready = None, False  # claimed: the keeper starts the next one
        why = await self._probe(spare.url + "/readyz", 0.5)
        if not why:
            return spare
        self.say(f"the spare worker (pid {spare.pid}) /readyz {why}; not using it")
        self._kill(spare)
        return None

    # --- watching and replacing ------------------------------------------------------------------

    async def _monitor(self) -> None:
        while not self.draining:  # until shutdown
            for slot in self.slots:
                if slot.state == "ready" and slot.worker is not None:
                    code = slot.worker.exitcode()
                    if code is not None:
                        self._begin_restart(slot, exit_reason(code))
            await asyncio.sleep(MONITOR_INTERVAL_S)

    async def _liveness(self, slot: WorkerSlot) -> None:
        failures = 0
        while not self.draining:  # until shutdown
            await asyncio.sleep(LIVENESS_INTERVAL_S)
            worker = slot.worker
            if slot.state != "ready" or worker is None:
                failures = 0
                continue
            why = await self._probe(worker.url + "/healthz", LIVENESS_TIMEOUT_S)
            if slot.state != "ready" or slot.worker is not worker:
                failures = 0  # replaced meanwhile: the answer was about the old process
                continue
            failures = failures + 1 if why else 0
            if failures >= HUNG_AFTER and worker.exitcode() is None:
                self._begin_restart(slot, f"is hung: /healthz {why}, {failures} times in a row")
                failures = 0

    def _begin_restart(self, slot: WorkerSlot, reason: str) -> None:
        noticed = time.monotonic()
        slot.state = "restarting"
        slot.last_exit = reason
        self.crashed = True
        if self.gateway is not None:
            # hung=True: idempotent requests still waiting on it are retried elsewhere now.
            self.gateway.mark_down(slot.index, f"worker {reason}", hung=True)
        self._spawn_task(self._restart(slot, reason, noticed), f"supervisor-restart-{slot.index}")

    async def _restart(self, slot: WorkerSlot, reason: str, noticed: float) -> None:
        old = slot.worker
        assert old is not None
        self._kill(old)
        up_for = noticed - slot.ready_at if slot.ready_at is not None else 0.0
        slot.crash_streak = slot.crash_streak + 1 if up_for < CRASH_WINDOW_S else 1
        self.say(f"worker {slot.index} (pid {old.pid}, port {old.port}) {reason}; replacing it")
        log.warning("worker %d (pid %s) %s; replacing it", slot.index, old.pid, reason)
        port = old.port
        new: WorkerProcess | None = None
        via = "respawn"
        while not self.draining:  # until a replacement is ready (or shutdown)
            # A ready spare costs no process start, so the crash-loop backoff (which limits
            # starts) does not apply to it: a worker killed from outside is replaced at once.
            new = await self._take_spare()
            if new is not None:
                via = "spare"
                break
            delay = backoff_delay(slot.crash_streak)
            if delay:
                slot.state = "backoff"
                log_path = old.log_path if new is None else new.log_path
                self.say(
                    f"worker {slot.index} is crash-looping ({slot.crash_streak} deaths within "
                    f"{CRASH_WINDOW_S:g} s of starting; last: {slot.last_exit}); next restart in "
                    f"{delay:g} s; log {log_path} ends with:\n{log_tail(log_path, 800)}"
                )
                await asyncio.sleep(delay)
                if self.draining:
                    return
            slot.state = "restarting"
            new = await self._take_spare()
            if new is not None:  # one may have become ready during the backoff
                via = "spare"
                break
            via = "respawn"
            await self._reap(old)  # its port must be free before a new worker binds it
            new = self._spawn(port, self._log(slot), f"worker-{slot.index}")
            ready, why = await self._wait_ready(new, RESTART_TIMEOUT_S)
            if ready:
                break
            self._kill(new)
            await self._reap(new)
            if self.draining:
                return
            slot.last_exit = why
            slot.crash_streak += 1
            if new.exitcode() == EXIT_PORT_BUSY:
                port = free_local_port()  # someone else took it meanwhile
        else:
            return
        assert new is not None
        elapsed = time.monotonic() - noticed
        slot.worker = new
        slot.state, slot.ready_at = "ready", time.monotonic()
        slot.restarts += 1
        slot.last_restart_s = round(elapsed, 3)
        slot.last_restart_via = via
        self.metrics.restarts.inc()
        self.metrics.restart_seconds.observe(elapsed)
        if self.gateway is not None:
            if new.url != self.gateway.upstreams[slot.index].url:
                self.gateway.set_url(slot.index, new.url)
            self.gateway.mark_up(slot.index)
        how = "took over by the warm spare" if via == "spare" else "restarted"
        self.say(
            f"worker {slot.index} is back as pid {new.pid} on port {new.port}: {how} in "
            f"{elapsed:.2f} s (death noticed -> ready)"
        )
        log.warning("worker %d back in %.2f s (%s)", slot.index, elapsed, via)
        await self._reap(old)

    # --- stopping --------------------------------------------------------------------------------

    async def _stop_workers(self) -> None:
        live = [slot.worker for slot in self.slots if slot.worker is not None]
        if self.spare is not None:
            live.append(self.spare)
        live = [w for w in live if w.exitcode() is None]
        for worker in live:
            self._kill(worker, signal.SIGTERM)  # the worker drains its own requests
            self._kill(worker, signal.SIGCONT)  # a stopped (SIGSTOP) worker could not
        deadline = time.monotonic() + WORKER_STOP_S
        while any(w.exitcode() is None for w in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in live:
            if worker.exitcode() is None:
                self.say(
                    f"worker pid {worker.pid} did not stop within {WORKER_STOP_S:g} s of "
                    "SIGTERM; killing it"
                )
                self._kill(worker)
                await self._reap(worker)
        for slot in self.slots:
            slot.state = "stopped"


def run_supervised(
    registry_dir: Path,
    cfg: ServeConfig,
    console: Console | None = None,
    *,
    log_dir: Path | None = None,
    spare: bool = True,
) -> None:
    """Serve with `cfg.workers` supervised worker processes behind one gateway.

    `spare` keeps one more worker started and ready, out of rotation, so a failed worker is
    replaced in a health check's time (it costs that worker's memory); `log_dir` keeps the
    workers' output there (default: a temp folder, removed after a run with no failures).

    Returns after a graceful drain (SIGTERM/Ctrl-C). Raises ServeError for a missing registry
    or a busy port (before any worker starts) and SupervisorError when a worker cannot start.
    Call it under `if __name__ == "__main__":` in a script: workers are started through
    multiprocessing, which re-imports the main module.
    """
    console = console or Console()
    registry_dir = check_registry(Path(registry_dir))
    sock = bind_socket(cfg.host, cfg.port)
    own_logs = log_dir is None
    logs = Path(tempfile.mkdtemp(prefix="lmforge-workers-")) if own_logs else Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(registry_dir, cfg, console, logs, spare=spare)
    clean = False
    try:
        with on_stop_signals(supervisor.request_stop), contextlib.suppress(_Stopped):
            run_async(supervisor.run(sock))
        console.print("supervisor stopped")
        clean = True
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        if own_logs and clean and not supervisor.crashed:
            shutil.rmtree(logs, ignore_errors=True)  # nothing happened worth keeping
        else:
            console.print(f"worker logs kept in {logs}", highlight=False, markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lmforge.serve.supervisor --registry R --workers N --port P`."""
    import argparse

    from lmforge.serve.worker import parse_config_json

    parser = argparse.ArgumentParser(prog="python -m lmforge.serve.supervisor")
    parser.add_argument("--registry", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--config-json", default="{}", help="JSON of ServeConfig.model_dump()")
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--no-spare", action="store_true", help="No warm spare worker.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    console = Console()
    try:
        cfg = parse_config_json(args.config_json)
        updates = {"workers": args.workers, "host": args.host, "port": args.port}
        data = cfg.model_dump(mode="json")
        data.update({k: v for k, v in updates.items() if v is not None})
        cfg = parse_config_json(json.dumps(data))
        run_supervised(args.registry, cfg, console, log_dir=args.log_dir, spare=not args.no_spare)
    except LmforgeError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
