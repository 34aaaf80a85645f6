"""The versions a server holds in memory, and the routing table that points requests at them.

`ModelPool` loads registry versions (a backend plus its batching engine) and keeps a few that
no alias needs any more warm, so a rollback finds its target already loaded. `ServingTable`
re-reads the registry's aliases and traffic policies every `serve.refresh_s` seconds; when they
change it loads what the new state needs first and only then swaps its routes in one
assignment. A request holds the `ServedModel` it was routed to until it is answered, and a
retired engine drains its queue before it stops, so a swap or rollback drops nothing in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import ServeConfig
from lmforge.errors import LmforgeError
from lmforge.registry import ModelRegistry, ModelVersion, RegistryError, ServingSnapshot
from lmforge.serve.backends import Backend, default_threads, load_backend
from lmforge.serve.engine import BatchEngine
from lmforge.serve.heap import freeze_heap
from lmforge.serve.isolated import IsolatedBackend
from lmforge.serve.metrics import ServeMetrics
from lmforge.serve.routing import (
    PRODUCTION,
    SHADOW,
    RoutingError,
    RoutingPolicy,
    parse_policy,
    served_aliases,
)

log = logging.getLogger("lmforge.serve")

LIVE = "live"
SHADOW_LANE = "shadow"
SHADOW_NICE = 10  # the shadow's engine thread yields the CPU to live traffic
DRAIN_S = 10.0

Key = tuple[str, int, str]  # (name, version, lane)


class ModelUnavailable(LmforgeError):
    """No such model, or it has no version to serve (404 for a client)."""


@dataclass
class ServedModel:
    """One loaded registry version: its backend and the batching engine in front of it."""

    version: ModelVersion
    backend: Backend
    lane: str
    engine: BatchEngine | None = None
    last_used: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def number(self) -> int:
        return self.version.version

    @property
    def labels(self) -> list[str]:
        return list(self.backend.labels)

    async def predict(self, texts: list[str], deadline: float | None) -> list[dict[str, Any]]:
        assert self.engine is not None, "engine not started"
        self.last_used = time.monotonic()
        return await self.engine.predict(texts, deadline)


@dataclass(frozen=True)
class ModelRoutes:
    """What one model name serves right now."""

    name: str
    policy: RoutingPolicy
    variants: dict[str, ServedModel]  # alias -> live model (production, canary, A/B arms)
    shadow: ServedModel | None
    aliases: dict[str, int]  # every alias of the model -> version, for listings


class ModelPool:
    """Loads versions on demand; keeps `keep_warm` unneeded ones for instant rollbacks."""

    def __init__(
        self,
        cfg: ServeConfig,
        metrics: ServeMetrics,
        keep_warm: int = 2,
        *,
        freeze_gc: bool = False,
    ) -> None:
        self.cfg = cfg
        self.freeze_gc = freeze_gc  # see create_app
        self.metrics = metrics
        self.keep_warm = keep_warm
        self._models: OrderedDict[Key, ServedModel] = OrderedDict()
        self._loading: dict[Key, asyncio.Task[ServedModel]] = {}
        self._threads = cfg.backend.threads or default_threads(cfg.workers)

    def load_now(self, mv: ModelVersion, lane: str = LIVE) -> ServedModel:
        """Load a backend synchronously (before the event loop runs); engine starts later."""
        key = (mv.name, mv.version, lane)
        if key not in self._models:
            self._models[key] = ServedModel(mv, self._load_backend(mv, lane), lane)
        return self._models[key]

    async def get(self, mv: ModelVersion, lane: str = LIVE) -> ServedModel:
        """The loaded, started model for a version; loads it off the event loop if needed."""
        key = (mv.name, mv.version, lane)
        served = self._models.get(key)
        if served is None:
            task = self._loading.get(key)
            if task is None:
                task = asyncio.create_task(self._load(mv, lane))
                self._loading[key] = task
            try:
                served = await asyncio.shield(task)
            finally:
                self._loading.pop(key, None)
            self._models[key] = served
        if served.engine is None:
            await self._start_engine(served)
        self._models.move_to_end(key)
        return served

    async def _load(self, mv: ModelVersion, lane: str) -> ServedModel:
        backend = await asyncio.to_thread(self._load_backend, mv, lane)
        # What the load built lives as long as the model: keep full collections off it. No
        # collect() first: requests are being served, and that pass is the pause to avoid.
        if self.freeze_gc:
            freeze_heap(f"loading {mv.name} v{mv.version}", collect=False)
        return ServedModel(mv, backend, lane)

    def _load_backend(self, mv: ModelVersion, lane: str = LIVE) -> Backend:
        started = time.perf_counter()
        where = "in process"
        if lane == SHADOW_LANE and self.cfg.shadow.isolate:
            # Its own process at idle priority: the shadow never holds this process's GIL and
            # yields the CPU to live threads (see lmforge.serve.isolated).
            backend: Backend = IsolatedBackend(
                Path(mv.path),
                self.cfg.backend.kind,
                self.cfg.shadow.threads,
                cpus=self.cfg.shadow.cpus,
            )
            where = f"in process {backend.pid} at {backend.priority} priority"
        else:
            backend = load_backend(Path(mv.path), self.cfg.backend.kind, self._threads)
        log.info(
            "loaded %s v%d (%s, %s lane, %s) in %.2f s",
            mv.name,
            mv.version,
            backend.kind,
            lane,
            where,
            time.perf_counter() - started,
        )
        return backend

    async def _start_engine(self, served: ServedModel) -> None:
        name, version = served.name, str(served.number)
        batch_hist = self.metrics.batch_texts.labels(name, version)
        latency_hist = self.metrics.model_latency.labels(name, version)

        def on_batch(texts: int, seconds: float) -> None:
            batch_hist.observe(texts)
            latency_hist.observe(seconds)

        engine = BatchEngine(
            lambda texts: served.backend.predict(texts),  # late-bound: a test may wrap it
            self.cfg.batching,
            name=f"{name}-v{version}-{served.lane}",
            on_batch=on_batch,
            nice=SHADOW_NICE if served.lane == SHADOW_LANE else None,
        )
        await engine.start()
        served.engine = engine
        if served.lane == LIVE:
            self.metrics.model_loaded(
                name, served.number, served.backend.kind, served.backend.quantization
            )

    async def retire(self, needed: Iterable[Key]) -> None:
        """Unload what no route needs, beyond the `keep_warm` most recently used spares."""
        needed = set(needed)
        spares = [k for k in self._models if k not in needed]  # oldest first
        for key in spares[: max(0, len(spares) - self.keep_warm)]:
            served = self._models.pop(key)
            await self._stop(served)

    async def _stop(self, served: ServedModel) -> None:
        if served.engine is not None:
            await served.engine.stop(drain_s=DRAIN_S)
            served.engine = None
        await _close_backend(served)
        if served.lane == LIVE:
            self.metrics.model_unloaded(
                served.name, served.number, served.backend.kind, served.backend.quantization
            )

    def queue_depths(self) -> list[tuple[ServedModel, int]]:
        return [(s, s.engine.queued_texts) for s in self._models.values() if s.engine is not None]

    async def close(self, drain_s: float = DRAIN_S) -> None:
        for task in self._loading.values():
            task.cancel()
        models = list(self._models.values())
        self._models.clear()
        await asyncio.gather(
            *(s.engine.stop(drain_s=drain_s) for s in models if s.engine is not None),
            return_exceptions=True,
        )
        await asyncio.gather(*(_close_backend(s) for s in models), return_exceptions=True)


async def _close_backend(served: ServedModel) -> None:
    """Stop what a backend runs outside this process (the isolated shadow's child)."""
    close = getattr(served.backend, "close", None)
    if close is not None:
        await asyncio.to_thread(close)


class ServingTable:
    """The routes of every served model, refreshed from the registry."""

    def __init__(self, registry: ModelRegistry, pool: ModelPool, default_model: str | None) -> None:
        self.registry = registry
        self.pool = pool
        self.default_model = default_model
        self.routes: dict[str, ModelRoutes] = {}
        self.token: tuple[int, float] | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._lock = asyncio.Lock()
        self.on_swap: Callable[[str, dict[str, int]], None] | None = None

    # -- building routes ----------------------------------------------------------------------
    def plan(self, snapshot: ServingSnapshot) -> dict[str, tuple[RoutingPolicy, dict[str, int]]]:
        """Models to serve (those with a production alias, or the configured one)."""
        plan = {}
        for name, aliases in sorted(snapshot.aliases.items()):
            if PRODUCTION not in aliases:
                continue
            try:
                policy = parse_policy(snapshot.routing.get(name))
            except RoutingError as exc:
                log.error("model %s: ignoring its stored routing policy: %s", name, exc)
                policy = RoutingPolicy()
            plan[name] = (policy, aliases)
        if self.default_model and self.default_model not in plan:
            known = ", ".join(plan) or "none"
            raise ModelUnavailable(
                f"model {self.default_model!r} has no production version in the registry "
                f"(models with one: {known}); promote one: lmforge registry promote "
                f"{self.default_model} VERSION"
            )
        if not plan:
            raise ModelUnavailable(
                f"no model in the registry at {self.registry.root} has a production alias; "
                "promote one: lmforge registry promote NAME VERSION"
            )
        return plan

    def load_initial(self) -> None:
        """Synchronous first load (before the port opens), so a broken model fails early."""
        snapshot = self.registry.snapshot()
        for name, (policy, aliases) in self.plan(snapshot).items():
            for alias in served_aliases(policy, aliases):
                lane = SHADOW_LANE if alias == SHADOW else LIVE
                self.pool.load_now(self.registry.get(name, aliases[alias]), lane)

    async def refresh(self, force: bool = False) -> bool:
        """Re-read the registry; returns True when the routes changed."""
        async with self._lock:
            snapshot = await asyncio.to_thread(self.registry.snapshot)
            if not force and snapshot.token == self.token:
                return False
            plan = self.plan(snapshot)
            routes: dict[str, ModelRoutes] = {}
            needed: list[Key] = []
            for name, (policy, aliases) in plan.items():
                variants: dict[str, ServedModel] = {}
                shadow = None
                for alias in sorted(served_aliases(policy, aliases)):
                    mv = await asyncio.to_thread(self.registry.get, name, aliases[alias])
                    lane = SHADOW_LANE if alias == SHADOW else LIVE
                    try:
                        served = await self.pool.get(mv, lane)
                    except Exception as exc:
                        if alias == PRODUCTION:
                            raise
                        # A broken canary or shadow must not take production down with it.
                        log.error(
                            "model %s alias %s (v%d) failed to load: %s",
                            name,
                            alias,
                            mv.version,
                            exc,
                        )
                        continue
                    needed.append((name, mv.version, lane))
                    if lane == SHADOW_LANE:
                        shadow = served
                    else:
                        variants[alias] = served
                routes[name] = ModelRoutes(name, policy, variants, shadow, dict(aliases))
            changed = self._describe(self.routes) != self._describe(routes)
            self.routes = routes  # the swap: one assignment, requests in flight keep theirs
            self.token = snapshot.token
            self.last_error = None
            if changed:
                self.swaps += 1
                for name, r in routes.items():
                    log.info("routes of %s: %s", name, self._describe({name: r})[name])
                    if self.on_swap is not None:
                        self.on_swap(name, {a: s.number for a, s in r.variants.items()})
            await self.pool.retire(needed)
            return changed

    @staticmethod
    def _describe(routes: dict[str, ModelRoutes]) -> dict[str, Any]:
        return {
            name: (
                sorted((a, s.number) for a, s in r.variants.items()),
                r.shadow.number if r.shadow else None,
                r.policy.model_dump_json(),
            )
            for name, r in routes.items()
        }

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Poll the registry until `stop` is set; errors are logged and retried."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            if stop.is_set():
                return
            try:
                await self.refresh()
            except (RegistryError, ModelUnavailable, OSError) as exc:
                if str(exc) != self.last_error:
                    log.error("registry refresh failed (keeping the current routes): %s", exc)
                self.last_error = str(exc)
            except Exception:
                log.exception("registry refresh failed (keeping the current routes)")

    # -- lookups on the hot path --------------------------------------------------------------
    def model(self, name: str | None) -> ModelRoutes:
        if name is None:
            name = self.default_model
            if name is None:
                if len(self.routes) == 1:
                    return next(iter(self.routes.values()))
                raise ModelUnavailable(
                    f"several models are served ({', '.join(self.routes)}); name one: "
                    "POST /v1/models/{name}/predict, or start the server with --model NAME"
                )
        routes = self.routes.get(name)
        if routes is None:
            known = ", ".join(self.routes) or "none"
            raise ModelUnavailable(f"no served model {name!r} (served: {known})")
        return routes

    @property
    def ready(self) -> bool:
        return bool(self.routes)
