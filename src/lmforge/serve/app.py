"""The HTTP service: every registry model with a production alias, behind a strict JSON API.

    POST /v1/models/{name}/predict   {"texts": [...], "key": "user-1"} -> predictions
    POST /v1/predict                 the same, for the default model
    GET  /v1/models[/{name}]         served models, aliases, routing policy
    POST /v1/feedback                {"request_id": ..., "outcome": 0..1} for A/B analysis
    /v1/admin/...                    promote, rollback, routing, history, shadow report (admin key)
    GET  /healthz, /readyz, /metrics, /openapi.json

Every error, including unknown routes and wrong methods, is JSON: {"error": {"code", "message"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from lmforge.config import ServeConfig
from lmforge.registry import ModelRegistry, RegistryError
from lmforge.serve import schemas
from lmforge.serve.analytics import shadow_report
from lmforge.serve.anomaly import Alert, AlertMonitor
from lmforge.serve.auth import ApiKey, KeyStore, RateLimiter, presented_key
from lmforge.serve.cache import PredictionCache, cache_key, make_cache
from lmforge.serve.comparisons import FeedbackError, ServingStore
from lmforge.serve.engine import DeadlineExceeded, EngineStopped, Overloaded
from lmforge.serve.fast_path import DEFAULT_PATH, MODEL_TEMPLATE, PredictFastPath
from lmforge.serve.heap import freeze_heap
from lmforge.serve.metrics import CONTENT_TYPE, ServeMetrics
from lmforge.serve.middleware import RequestContextMiddleware, request_id_from
from lmforge.serve.models import ModelPool, ModelRoutes, ModelUnavailable, ServedModel, ServingTable
from lmforge.serve.routing import (
    RoutingError,
    RoutingPolicy,
    check_policy_aliases,
    choose_variant,
    parse_policy,
)
from lmforge.serve.shadow import ShadowMirror
from lmforge.serve.tracing import Tracing
from lmforge.serve.validation import (
    RequestError,
    parse_json_body,
    parse_predict_body,
    read_body,
)

log = logging.getLogger("lmforge.serve")

ROUTES = (
    "POST /v1/predict, POST /v1/models/{name}/predict, GET /v1/models, POST /v1/feedback, "
    "GET /healthz, GET /readyz, GET /metrics, GET /openapi.json, /v1/admin/..."
)
TIMEOUT_HEADER = "x-timeout-ms"
ROUTING_KEY_HEADER = "x-routing-key"
GAUGE_INTERVAL_S = 1.0
FEEDBACK_WAIT_S = 1.5


@dataclass
class ServeRuntime:
    """Everything one app instance owns; created in `create_app`, started in its lifespan."""

    cfg: ServeConfig
    registry: ModelRegistry
    metrics: ServeMetrics
    pool: ModelPool
    table: ServingTable
    cache: PredictionCache | None
    keys: KeyStore
    limiter: RateLimiter
    store: ServingStore
    shadow: ShadowMirror
    tracing: Tracing
    alerts: AlertMonitor
    load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.table.ready


def create_app(
    registry_dir: Path, cfg: ServeConfig, preload: bool = True, freeze_gc: bool = False
) -> FastAPI:
    """Build the app for the registry's models.

    With `preload` (the default) the models load now, so a broken model fails before the port
    opens. Without it, loading happens in the background after startup: /healthz answers at
    once and /readyz turns 200 when the models are in.

    `freeze_gc` is for a process that exists to serve this app (`lmforge serve`, a worker, a
    Ray replica): once the models are in, every object alive is frozen out of the garbage
    collector's full passes (see `lmforge.serve.heap`), and so is what each later model load
    builds. Left off for an app embedded in another program (tests, notebooks), whose own
    objects it would freeze too.
    """
    registry = ModelRegistry(Path(registry_dir), create=False)
    metrics = ServeMetrics()
    pool = ModelPool(cfg, metrics, freeze_gc=freeze_gc)
    table = ServingTable(registry, pool, cfg.model)
    if preload:
        table.load_initial()
    else:
        table.plan(registry.snapshot())  # no model to serve is an error before startup
    store = ServingStore(registry.root)
    runtime = ServeRuntime(
        cfg=cfg,
        registry=registry,
        metrics=metrics,
        pool=pool,
        table=table,
        cache=make_cache(cfg.cache),
        keys=KeyStore(registry.root),
        limiter=RateLimiter(cfg.auth.default_rate, cfg.auth.default_burst),
        store=store,
        shadow=ShadowMirror(
            store,
            cfg.shadow.queue_size,
            cfg.shadow.sample,
            on_outcome=lambda model, outcome: metrics.shadow.labels(model, outcome).inc(),
        ),
        tracing=Tracing(cfg.tracing),
        alerts=AlertMonitor(cfg.alerts, on_alert=lambda a: _on_alert(metrics, a)),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []
        if preload:
            await table.refresh(force=True)
            _mark_loaded(runtime)
        else:
            tasks.append(asyncio.create_task(_first_load(runtime)))
        store.start_background_flush()
        await runtime.shadow.start()
        tasks.append(asyncio.create_task(table.run(cfg.refresh_s, stop)))
        tasks.append(asyncio.create_task(_update_gauges(runtime, stop)))
        if cfg.alerts.enabled:
            tasks.append(asyncio.create_task(runtime.alerts.run(stop)))
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await runtime.shadow.stop()
            await pool.close()
            store.close()
            if runtime.cache is not None:
                await runtime.cache.close()
            runtime.tracing.shutdown()

    app = FastAPI(
        title="lmforge",
        version="1",
        description="Text classification service: versioned models, A/B, canary and shadow.",
        lifespan=lifespan,
        docs_url=None,  # the Swagger UI loads assets from a CDN; the spec itself is served
        redoc_url=None,
        openapi_url="/openapi.json",
        **_no_framework_telemetry(),
    )
    app.state.runtime = runtime
    predict_routes: dict[str, Any] = {}  # filled below, once the routes exist
    # Innermost first: the fast path runs inside CORS and the request context (ids, metrics).
    app.add_middleware(
        PredictFastPath,
        handler=lambda request, name: _predict(runtime, request, name),
        routes=predict_routes,
        error_handlers=app.exception_handlers,  # the same dict _add_error_handlers fills
    )
    if cfg.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["*"])
    app.add_middleware(RequestContextMiddleware, metrics=metrics, tracing=runtime.tracing)
    _add_error_handlers(app)
    _add_public_routes(app, runtime)
    _add_admin_routes(app, runtime)
    predict_routes.update(
        (route.path, route)
        for route in app.router.routes
        if getattr(route, "path", None) in (DEFAULT_PATH, MODEL_TEMPLATE)
    )
    return app


def _no_framework_telemetry() -> dict[str, Any]:
    """FastAPI >= 0.16x can trace and meter every request itself through a global OpenTelemetry
    provider; lmforge does both its own way (sampled spans, Prometheus), so turn that off
    rather than record every request twice. Older FastAPI has no such option."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


# -- routes -----------------------------------------------------------------------------------
def _add_public_routes(app: FastAPI, rt: ServeRuntime) -> None:
    cfg = rt.cfg

    @app.post(
        "/v1/models/{name}/predict",
        response_model=schemas.PredictResponse,
        openapi_extra=schemas.body(schemas.PredictBody),
        responses=schemas.ERRORS,
    )
    async def predict_model(name: str, request: Request) -> JSONResponse:
        """Classify texts with the model `name` (its production, canary or A/B version)."""
        return await _predict(rt, request, name)

    @app.post(
        "/v1/predict",
        response_model=schemas.PredictResponse,
        openapi_extra=schemas.body(schemas.PredictBody),
        responses=schemas.ERRORS,
    )
    async def predict_default(request: Request) -> JSONResponse:
        """Classify texts with the default model."""
        return await _predict(rt, request, None)

    @app.get("/v1/models", response_model=schemas.ModelList)
    async def list_models() -> JSONResponse:
        """Served models with their aliases, routing policy and loaded versions."""
        _require_ready(rt)
        return JSONResponse({"models": [_describe(r) for r in rt.table.routes.values()]})

    @app.get("/v1/models/{name}", response_model=schemas.ModelInfo, responses=schemas.ERRORS)
    async def get_model(name: str) -> JSONResponse:
        _require_ready(rt)
        return JSONResponse(_describe(rt.table.model(name)))

    @app.post(
        "/v1/feedback",
        response_model=schemas.FeedbackResponse,
        openapi_extra=schemas.body(schemas.FeedbackBody),
        responses=schemas.ERRORS,
    )
    async def feedback(request: Request) -> JSONResponse:
        """Record the outcome (0..1) of an earlier prediction, for the A/B test."""
        _authorize(rt, request, admin=False)
        body = schemas.parse(schemas.FeedbackBody, await read_body(request, cfg.max_body_bytes))
        result = await _record_feedback(rt, body.request_id, float(body.outcome))
        return JSONResponse({"recorded": True, **_plain_result(result)})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses=schemas.ERRORS)
    async def readyz() -> JSONResponse:
        if not rt.ready:
            return _error(503, "not_ready", _not_ready_message(rt), {"Retry-After": "1"})
        routes = rt.table.model(None) if len(rt.table.routes) == 1 else None
        body: dict[str, Any] = {"status": "ready", "models": sorted(rt.table.routes)}
        if routes is not None:
            production = routes.variants["production"]
            body["model"] = {"name": production.name, "version": production.number}
        return JSONResponse(body)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(rt.metrics.render(), media_type=CONTENT_TYPE)


def _add_admin_routes(app: FastAPI, rt: ServeRuntime) -> None:
    cfg = rt.cfg

    async def admin_body(request: Request, model: type[schemas.Strict]) -> Any:
        _authorize(rt, request, admin=True)
        return schemas.parse(model, await read_body(request, cfg.max_body_bytes))

    @app.post(
        "/v1/admin/models/{name}/promote",
        openapi_extra=schemas.body(schemas.PromoteBody),
        responses=schemas.ERRORS,
    )
    async def promote(name: str, request: Request) -> JSONResponse:
        """Point an alias (production, canary, shadow, ...) at a version."""
        body = await admin_body(request, schemas.PromoteBody)
        await asyncio.to_thread(rt.registry.set_alias, name, body.alias, body.version)
        switch_s = await _apply(rt)
        return JSONResponse(
            {"name": name, "alias": body.alias, "version": body.version, "switch_s": switch_s}
        )

    @app.post(
        "/v1/admin/models/{name}/rollback",
        openapi_extra=schemas.body(schemas.RollbackBody),
        responses=schemas.ERRORS,
    )
    async def rollback(name: str, request: Request) -> JSONResponse:
        """Move an alias back to where it pointed before its latest change."""
        body = await admin_body(request, schemas.RollbackBody)
        old, new = await asyncio.to_thread(rt.registry.rollback, name, body.alias)
        switch_s = await _apply(rt)
        return JSONResponse(
            {"name": name, "alias": body.alias, "from": old, "to": new, "switch_s": switch_s}
        )

    @app.put(
        "/v1/admin/models/{name}/routing",
        openapi_extra=schemas.body(RoutingPolicy),
        responses=schemas.ERRORS,
    )
    async def set_routing(name: str, request: Request) -> JSONResponse:
        """Replace the model's traffic policy (canary weight, A/B split, shadow on/off)."""
        _authorize(rt, request, admin=True)
        raw = parse_json_body(await read_body(request, cfg.max_body_bytes))
        if not isinstance(raw, dict):
            raise RequestError(422, "invalid_request", "the routing policy must be a JSON object")
        policy = parse_policy(raw)
        aliases = (await asyncio.to_thread(rt.registry.snapshot)).aliases.get(name)
        if aliases is None:
            raise ModelUnavailable(f"no model {name!r} in the registry")
        check_policy_aliases(policy, aliases)
        await asyncio.to_thread(rt.registry.set_routing, name, policy.model_dump())
        switch_s = await _apply(rt)
        return JSONResponse({"name": name, "routing": policy.model_dump(), "switch_s": switch_s})

    @app.get("/v1/admin/models/{name}/history", responses=schemas.ERRORS)
    async def history(name: str, request: Request) -> JSONResponse:
        """Every alias change of the model, oldest first."""
        _authorize(rt, request, admin=True)
        changes = await asyncio.to_thread(rt.registry.history, name)
        return JSONResponse({"name": name, "history": [c.__dict__ for c in changes]})

    @app.delete("/v1/admin/models/{name}/aliases/{alias}", responses=schemas.ERRORS)
    async def remove_alias(name: str, alias: str, request: Request) -> JSONResponse:
        """Drop an alias, e.g. end a shadow run or a canary."""
        _authorize(rt, request, admin=True)
        if alias == "production":
            raise RequestError(
                409, "conflict", "the production alias cannot be removed; promote another version"
            )
        version = await asyncio.to_thread(rt.registry.remove_alias, name, alias)
        switch_s = await _apply(rt)
        return JSONResponse({"name": name, "alias": alias, "was": version, "switch_s": switch_s})

    @app.get("/v1/admin/shadow/report", responses=schemas.ERRORS)
    async def report(
        request: Request, model: str | None = None, since_s: float | None = None
    ) -> JSONResponse:
        """Shadow agreement, score drift (PSI, KS), latency, and the A/B feedback test."""
        _authorize(rt, request, admin=True)
        name = model or rt.table.model(None).name
        since = time.time() - since_s if since_s else None

        def build() -> dict[str, Any]:
            rt.store.flush()
            return shadow_report(rt.store, name, since)

        return JSONResponse(await asyncio.to_thread(build))


# -- prediction path ---------------------------------------------------------------------------
async def _predict(rt: ServeRuntime, request: Request, name: str | None) -> JSONResponse:
    started = time.perf_counter()
    if not rt.ready:
        raise RequestError(503, "not_ready", _not_ready_message(rt), {"Retry-After": "1"})
    _authorize(rt, request, admin=False)
    body = parse_predict_body(await read_body(request, rt.cfg.max_body_bytes), rt.cfg)
    routes = rt.table.model(name)
    routing_key = body.key or request.headers.get(ROUTING_KEY_HEADER)
    route = choose_variant(routes.name, routes.policy, routes.variants, routing_key)
    served = routes.variants.get(route.variant) or routes.variants["production"]
    deadline = _deadline(rt.cfg, request)
    error = True
    try:
        predictions = await _answer(rt, served, body.texts, deadline)
        error = False
    except (Overloaded, DeadlineExceeded, EngineStopped) as exc:
        rt.metrics.rejected.labels(served.name, _reason(exc)).inc()
        error = not isinstance(exc, Overloaded)
        raise
    finally:
        rt.alerts.observe_request(served.name, time.perf_counter() - started, error)
    request_id = request_id_from(request.scope)
    latency = time.perf_counter() - started
    rt.store.record_assignment(
        request_id, served.name, served.number, route.variant, routing_key if route.sticky else None
    )
    if routes.shadow is not None and routes.policy.shadow:
        shadow = routes.shadow
        rt.shadow.submit(
            served.name,
            request_id,
            body.texts,
            predictions,
            served.number,
            latency,
            lambda texts: _run_shadow(shadow, texts, rt.cfg),
        )
    rt.metrics.predictions.labels(served.name, str(served.number), route.variant).inc(
        len(body.texts)
    )
    return JSONResponse(
        {
            "request_id": request_id,
            "model": {"name": served.name, "version": served.number, "variant": route.variant},
            "predictions": predictions,
        }
    )


async def _answer(
    rt: ServeRuntime, served: ServedModel, texts: list[str], deadline: float
) -> list[dict[str, Any]]:
    """Predictions for `texts`: from the cache where possible, the model for the rest."""
    cache = rt.cache
    if cache is None:
        with rt.tracing.span("model", {"texts": len(texts)}):
            return await served.predict(texts, deadline)
    keys = [cache_key(served.name, served.number, served.version.content_hash, t) for t in texts]
    with rt.tracing.span("cache.get", {"texts": len(texts)}):
        found: list[dict[str, Any] | None] = await cache.get_many(keys)
    missing = [i for i, hit in enumerate(found) if hit is None]
    hits = len(texts) - len(missing)
    if hits:
        rt.metrics.cache.labels("hit").inc(hits)
    if missing:
        rt.metrics.cache.labels("miss").inc(len(missing))
        with rt.tracing.span("model", {"texts": len(missing)}):
            fresh = await served.predict([texts[i] for i in missing], deadline)
        await cache.set_many({keys[i]: p for i, p in zip(missing, fresh, strict=True)})
        for i, prediction in zip(missing, fresh, strict=True):
            found[i] = prediction
    return found  # type: ignore[return-value]


async def _run_shadow(
    shadow: ServedModel, texts: list[str], cfg: ServeConfig
) -> tuple[list[dict[str, Any]], int]:
    deadline = time.monotonic() + cfg.batching.timeout_ms / 1000
    return await shadow.predict(texts, deadline), shadow.number


async def _record_feedback(rt: ServeRuntime, request_id: str, outcome: float) -> Any:
    # Another worker may have served the request and not flushed its assignment yet (it
    # flushes every FEEDBACK_WAIT_S / 3): wait for it briefly before calling the id unknown.
    deadline = time.monotonic() + FEEDBACK_WAIT_S
    while True:
        try:
            return await asyncio.to_thread(rt.store.record_feedback, request_id, outcome)
        except FeedbackError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


def _deadline(cfg: ServeConfig, request: Request) -> float:
    timeout_ms = cfg.batching.timeout_ms
    asked = request.headers.get(TIMEOUT_HEADER)
    if asked is not None:
        try:
            value = float(asked)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise RequestError(
                400,
                "invalid_header",
                f"X-Timeout-Ms must be a positive number of milliseconds, got {asked[:40]!r}",
            )
        timeout_ms = min(timeout_ms, value)  # a client may ask for less, never for more
    return time.monotonic() + timeout_ms / 1000


def _reason(exc: Exception) -> str:
    if isinstance(exc, Overloaded):
        return "overloaded"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    return "stopped"


def _authorize(rt: ServeRuntime, request: Request, admin: bool) -> ApiKey | None:
    presented = presented_key(request.headers)
    if presented is None:
        if admin:
            raise RequestError(
                401,
                "unauthorized",
                "admin endpoints need an API key with role admin: send 'Authorization: Bearer "
                "KEY' (create one with: lmforge keys create NAME --role admin)",
            )
        if rt.cfg.auth.require_for_predict:
            raise RequestError(
                401,
                "unauthorized",
                "this server requires an API key: send 'Authorization: Bearer KEY' or "
                "'X-API-Key: KEY' (create one with: lmforge keys create NAME)",
            )
        return None
    key = rt.keys.verify(presented)
    if key is None:
        raise RequestError(401, "invalid_api_key", "the API key is unknown or revoked")
    if admin and key.role != "admin":
        raise RequestError(
            403, "forbidden", f"key {key.key_id} has role {key.role!r}; admin endpoints need admin"
        )
    client = request.client.host if request.client else "unknown"
    wait = rt.limiter.check(key, client)
    if wait > 0:
        rt.metrics.rejected.labels("-", "rate_limited").inc()
        raise RequestError(
            429,
            "rate_limited",
            f"key {key.key_id} is over its rate limit; retry in {wait:.2f} s",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return key


async def _apply(rt: ServeRuntime) -> float:
    """Make this worker see an admin change at once; other workers follow within refresh_s."""
    started = time.perf_counter()
    await rt.table.refresh(force=True)
    return round(time.perf_counter() - started, 4)


async def _first_load(rt: ServeRuntime) -> None:
    try:
        await rt.table.refresh(force=True)
    except Exception as exc:
        rt.load_error = f"{type(exc).__name__}: {exc}"
        log.error("loading the models failed: %s", rt.load_error)
        return
    _mark_loaded(rt)


def _mark_loaded(rt: ServeRuntime) -> None:
    """The first models are in: freeze the heap (a serving process only), report ready."""
    if rt.pool.freeze_gc:
        freeze_heap("startup")
    rt.metrics.ready.set(1)


async def _update_gauges(rt: ServeRuntime, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for served, depth in rt.pool.queue_depths():
            rt.metrics.queue_texts.labels(served.name, str(served.number)).set(depth)
        for name in rt.table.routes:
            agreement = rt.shadow.agreement(name)
            if agreement is not None:
                rt.metrics.shadow_agreement.labels(name).set(agreement)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=GAUGE_INTERVAL_S)


def _on_alert(metrics: ServeMetrics, alert: Alert) -> None:
    metrics.alerts.labels(alert.series, alert.kind).inc()
    metrics.alert_active.labels(alert.series).set(1 if alert.kind == "raised" else 0)


def _describe(routes: ModelRoutes) -> dict[str, Any]:
    return {
        "name": routes.name,
        "aliases": routes.aliases,
        "routing": routes.policy.model_dump(),
        "serving": {
            alias: {
                "version": s.number,
                "backend": s.backend.kind,
                "quantization": s.backend.quantization,
            }
            for alias, s in sorted(routes.variants.items())
        },
        "shadow": routes.shadow.number if routes.shadow else None,
        "labels": routes.variants["production"].labels,
    }


def _plain_result(result: Any) -> dict[str, Any]:
    if hasattr(result, "__dict__"):
        return {k: v for k, v in vars(result).items() if not k.startswith("_")}
    return dict(result) if isinstance(result, Mapping) else {}


def _require_ready(rt: ServeRuntime) -> None:
    if not rt.ready:
        raise RequestError(503, "not_ready", _not_ready_message(rt), {"Retry-After": "1"})


def _not_ready_message(rt: ServeRuntime) -> str:
    if rt.load_error:
        return f"the models failed to load: {rt.load_error}"
    return "the models are still loading; retry shortly"


class _SafeJSONResponse(JSONResponse):
    """JSON that always renders: a message echoing a client's broken text gets escaped."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return _SafeJSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _add_error_handlers(app: FastAPI) -> None:
    rt: ServeRuntime = app.state.runtime

    async def on_request_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestError)
        return _error(exc.status, exc.code, exc.message, exc.headers)

    async def on_overloaded(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Overloaded)
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        status = rt.cfg.batching.overload_status
        return _error(status, "overloaded", str(exc), {"Retry-After": retry})

    async def on_deadline(request: Request, exc: Exception) -> JSONResponse:
        return _error(504, "deadline_exceeded", str(exc) or "the request's deadline passed")

    async def on_stopped(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, "shutting_down", str(exc), {"Retry-After": "1"})

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, "model_not_found", str(exc))

    async def on_conflict(request: Request, exc: Exception) -> JSONResponse:
        status = 404 if isinstance(exc, FeedbackError) else 422
        code = "unknown_request_id" if isinstance(exc, FeedbackError) else "invalid_request"
        if isinstance(exc, RegistryError):
            status, code = 404, "not_found"
        return _error(status, code, str(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            return _error(404, "not_found", f"no route {method} {path}; routes: {ROUTES}")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return _error(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; use {allowed or 'another method'}",
                headers=exc.headers,
            )
        return _error(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(422, "invalid_request", str(exc))

    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(Overloaded, on_overloaded)
    app.add_exception_handler(DeadlineExceeded, on_deadline)
    app.add_exception_handler(EngineStopped, on_stopped)
    app.add_exception_handler(ModelUnavailable, on_unavailable)
    app.add_exception_handler(RoutingError, on_conflict)
    app.add_exception_handler(FeedbackError, on_conflict)
    app.add_exception_handler(RegistryError, on_conflict)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
