"""`lmforge serve --backend ray`: the same FastAPI service, run as Ray Serve replicas.

Each replica builds its own app with `create_app` (models, batching engines, stores) inside the
replica process; nothing heavy is pickled. Ray Serve (2.x) runs the app's FastAPI lifespan when
a replica starts and its shutdown half when the replica stops, so the batching engines and the
background tasks live exactly as long as the replica. Ray's HTTP proxy spreads requests over
the replicas; Ray restarts a replica whose process dies or whose `check_health` fails.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lmforge.config import ServeConfig
from lmforge.errors import ConfigError
from lmforge.serve.server import GRACEFUL_SHUTDOWN_S, ServeError, bind_socket, check_registry

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application

APP_NAME = "lmforge"
DEPLOYMENT_NAME = "lmforge"
REPLICA_HEADER = "x-lmforge-replica"
REPLICA_PID_HEADER = "x-lmforge-replica-pid"
# A model that fails to load fails the same way on every try; Ray's default (20) only delays
# the error.
CONSTRUCTOR_RETRIES = 3
WAIT_POLL_S = 1.0


class RayServeError(ServeError):
    """Ray Serve cannot start the service: Ray missing, unreachable, or too small."""


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RayServeError(
            "--backend ray needs Ray Serve: pip install 'lmforge[ray]' "
            "(or serve with --backend local)"
        ) from None
    return ray, serve


class _ReplicaHeaders:
    """Plain ASGI middleware: tag every HTTP response with the replica that answered it.

    Operators (and the tests) can then see how the proxy spreads load and which replica
    produced an odd answer.
    """

    def __init__(self, app: Any, replica: str, pid: int) -> None:
        self.app = app
        self.extra = [
            (REPLICA_HEADER.encode(), replica.encode("ascii", "replace")),
            (REPLICA_PID_HEADER.encode(), str(pid).encode()),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.extra]}
            await send(message)

        await self.app(scope, receive, tagged)


class LmforgeReplica:
    """One Ray Serve replica: builds the app in the replica process and reports its health.

    Wrapped by `serve.ingress()` in `build_deployment` (not at import time, so this module
    imports without Ray). Ray calls `__serve_build_asgi_app__` after `__init__`, then runs
    the app's lifespan startup; the shutdown half runs when the replica is stopped.
    """

    def __init__(self, registry_dir: str, cfg: dict[str, Any]) -> None:
        # The config travels as JSON-able data and is validated again here, so a replica never
        # depends on pickled pydantic internals matching between driver and worker.
        self._registry_dir = Path(registry_dir)
        self._cfg = ServeConfig.model_validate(cfg)
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        from ray import serve

        from lmforge.serve.app import create_app

        app = create_app(self._registry_dir, self._cfg, freeze_gc=True)
        replica = serve.get_replica_context().replica_id.unique_id
        app.add_middleware(_ReplicaHeaders, replica=replica, pid=os.getpid())
        self._app = app
        return app

    async def check_health(self) -> None:
        """Ray's periodic probe: raising marks this replica unhealthy and Ray replaces it."""
        if self._app is None:
            raise RuntimeError("the lmforge app was not built in this replica")
        runtime = self._app.state.runtime
        if not runtime.ready:
            detail = runtime.load_error or "no model is loaded"
            raise RuntimeError(f"lmforge replica not ready: {detail}")


def _replica_cfg(cfg: ServeConfig) -> ServeConfig:
    """The config a replica runs with: its torch/ONNX threads fit its Ray CPU share.

    Left to the default, every replica would size its thread pool for all the node's cores
    and replicas on one node would oversubscribe them.
    """
    replica_cfg = cfg.model_copy(deep=True)
    if replica_cfg.backend.threads is None:
        replica_cfg.backend.threads = max(1, math.floor(cfg.ray.num_cpus))
    replica_cfg.workers = 1  # Ray's replicas are the workers
    return replica_cfg


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """The `serve.deployment(...)` options for `cfg.ray`: replicas or autoscaling, CPUs, health."""
    ray_cfg = cfg.ray
    if ray_cfg.num_replicas is None and ray_cfg.min_replicas > ray_cfg.max_replicas:
        raise ConfigError(
            f"serve.ray.min_replicas={ray_cfg.min_replicas} is above "
            f"serve.ray.max_replicas={ray_cfg.max_replicas}; make min_replicas <= max_replicas"
        )
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": ray_cfg.num_cpus},
        "health_check_period_s": ray_cfg.health_check_period_s,
        "health_check_timeout_s": ray_cfg.health_check_timeout_s,
        # Same drain time as the local server, so a scale-down finishes in-flight requests.
        "graceful_shutdown_timeout_s": float(GRACEFUL_SHUTDOWN_S),
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
        # One log line per request from Ray on top of the app's own metrics is noise at load.
        "logging_config": {"enable_access_log": False},
        # Ray's default (5 in flight per replica) would starve the dynamic batcher; let a
        # replica hold a full batch and stay above the autoscaling target. The app's own
        # queue limit still answers 429 beyond that.
        "max_ongoing_requests": max(
            cfg.batching.max_batch_size, math.ceil(2 * ray_cfg.target_ongoing_requests)
        ),
    }
    if ray_cfg.num_replicas is None:
        options["autoscaling_config"] = {
            "min_replicas": ray_cfg.min_replicas,
            "max_replicas": ray_cfg.max_replicas,
            "initial_replicas": max(1, ray_cfg.min_replicas),
            "target_ongoing_requests": ray_cfg.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = ray_cfg.num_replicas
    return options


def build_deployment(registry_dir: Path, cfg: ServeConfig) -> Application:
    """A Ray Serve application whose replicas each serve `create_app(registry_dir, cfg)`.

    Replicas count from `cfg.ray.num_replicas`, or autoscale between `min_replicas` and
    `max_replicas` on `target_ongoing_requests` when it is None. The registry path is made
    absolute: replicas run in other processes (on a cluster, other machines that must see the
    registry at the same path).
    """
    _, serve = _import_ray()
    options = deployment_options(cfg)
    ingress = serve.ingress()(LmforgeReplica)
    deployment = serve.deployment(**options)(ingress)
    return deployment.bind(str(Path(registry_dir).resolve()), _replica_cfg(cfg).model_dump())


def describe_replicas(cfg: ServeConfig) -> str:
    """'2 replicas, 1 CPU each' or 'autoscaling 1..4 replicas (target 8 ...)', for the console."""
    ray_cfg = cfg.ray
    cpus = f"{ray_cfg.num_cpus:g} CPU each"
    if ray_cfg.num_replicas is not None:
        plural = "s" if ray_cfg.num_replicas != 1 else ""
        count = f"{ray_cfg.num_replicas} replica{plural}"
    else:
        count = (
            f"autoscaling {ray_cfg.min_replicas}..{ray_cfg.max_replicas} replicas "
            f"(target {ray_cfg.target_ongoing_requests:g} in-flight requests each)"
        )
    health = (
        f"health check every {ray_cfg.health_check_period_s:g} s "
        f"(timeout {ray_cfg.health_check_timeout_s:g} s)"
    )
    return f"{count}, {cpus}, {health}"


def _check_free_port(cfg: ServeConfig) -> int:
    """The port Ray's proxy will take: checked now, so a busy one fails before Ray starts.

    Port 0 becomes a free port chosen here (Ray's proxy cannot report one it picked itself).
    """
    sock = bind_socket(cfg.host, cfg.port)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def _check_capacity(ray: Any, cfg: ServeConfig) -> None:
    """Fail at once when a local Ray cannot place the replicas (serve.run would wait forever)."""
    ray_cfg = cfg.ray
    # Autoscaling starts at `initial_replicas`, at least one (see deployment_options).
    replicas = ray_cfg.num_replicas or max(1, ray_cfg.min_replicas)
    needed = replicas * ray_cfg.num_cpus
    have = float(ray.cluster_resources().get("CPU", 0.0))
    if needed > have + 1e-9:
        raise ConfigError(
            f"{replicas} replica(s) x serve.ray.num_cpus={ray_cfg.num_cpus:g} need {needed:g} "
            f"CPUs but this Ray has {have:g}; lower serve.ray.num_cpus (e.g. "
            f"{max(0.1, have / max(1, replicas)):.2g}) or the replica count, or join a larger "
            "cluster with serve.ray.address"
        )


def _start_ray(ray: Any, cfg: ServeConfig) -> tuple[bool, Path | None]:
    """Connect to or start Ray. Returns (we started it, the temp dir we made for it)."""
    if ray.is_initialized():
        return False, None  # a caller (a test, a notebook) already set Ray up; use it as is
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayServeError(
                f"cannot connect to Ray at {address!r}: {exc}; start a cluster with "
                "`ray start --head` or drop serve.ray.address to start a local Ray"
            ) from None
        return True, None
    temp_dir: Path | None = None
    kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False}
    if not os.environ.get("RAY_TMPDIR"):
        # Ray's socket paths must stay under 108 characters; a short folder under the system
        # temp keeps them so, and one per run keeps parallel servers apart.
        temp_dir = Path(tempfile.mkdtemp(prefix="lmforge-ray-"))
        kwargs["_temp_dir"] = str(temp_dir)
    try:
        ray.init(**kwargs)
    except BaseException:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return True, temp_dir


def run_ray_serve(
    registry_dir: Path,
    cfg: ServeConfig,
    console: Console | None = None,
    blocking: bool = True,
) -> str:
    """Serve the registry's models as Ray Serve replicas on http://cfg.host:cfg.port.

    Blocks until Ctrl-C or SIGTERM, then stops the application (and the Ray it started).
    With `blocking=False` it returns the URL once the replicas are up and leaves Serve and Ray
    running; the caller stops them (`serve.shutdown()`, `ray.shutdown()`).
    """
    console = console or Console()
    registry_dir = check_registry(registry_dir)
    ray, serve = _import_ray()
    app = build_deployment(registry_dir, cfg)  # config mistakes surface before Ray starts
    remote = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    port = cfg.port if remote else _check_free_port(cfg)
    url = f"http://[{cfg.host}]:{port}" if ":" in cfg.host else f"http://{cfg.host}:{port}"
    started, temp_dir = _start_ray(ray, cfg)
    previous = _stop_on_sigterm()
    try:
        if not remote:
            _check_capacity(ray, cfg)
        serve.start(http_options={"host": cfg.host, "port": port})
        console.print(f"starting Ray Serve: {describe_replicas(cfg)}", highlight=False)
        if cfg.workers > 1:
            console.print(
                f"note: serve.workers={cfg.workers} does not apply to Ray Serve; each replica "
                "is one worker (set serve.ray.num_replicas)",
                highlight=False,
            )
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:
            raise RayServeError(
                f"the Ray Serve replicas failed to start: {_failure_detail(serve) or exc}; "
                "run `lmforge serve --backend local` on the same registry to see the whole error"
            ) from None
        console.print(
            f"serving {registry_dir} on {url} with Ray Serve (POST /v1/predict; Ctrl-C stops)",
            highlight=False,
        )
        if not blocking:
            started = False  # the caller owns Ray and Serve from here
            return url
        _sleep_until_interrupted()
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM, also while the replicas are still starting: a clean stop.
        console.print("stopping Ray Serve")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if started:
            _stop(ray, serve, remote)
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
    return url


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


def _failure_detail(serve: Any) -> str | None:
    """The replica's own exception ('SafetensorError: ...') from Ray's deployment status.

    serve.run only says the deployment failed; the replica's traceback is in the status, and
    its last exception line is the part a user can act on.
    """
    try:
        status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    except Exception:
        return None
    lines = [_ANSI.sub("", line).strip() for line in str(status.message).splitlines()]
    found = [
        line for line in lines if _EXCEPTION_LINE.match(line) and not line.endswith("call last):")
    ]
    return found[-1][:500] if found else None


class _Stop(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _stop_on_sigterm() -> Any:
    """Make SIGTERM raise `_Stop`; returns the handler it replaced (None off the main thread).

    Called after `ray.init`: Ray's core installs a SIGTERM handler that aborts the process,
    which would skip shutting down the replicas and the local Ray.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise _Stop

    return signal.signal(signal.SIGTERM, interrupt)


def _stop(ray: Any, serve: Any, remote: bool) -> None:
    try:
        if remote:
            # A shared cluster may run other Serve applications; remove only ours.
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
    finally:
        ray.shutdown()


def _sleep_until_interrupted() -> None:
    """Sleep until Ctrl-C or SIGTERM raises (the whole life of the server, by design)."""
    while True:
        time.sleep(WAIT_POLL_S)
