"""The HTTP service: the registry's production model behind a small, strict JSON API.

    POST /v1/predict   {"texts": [...]} -> {"request_id", "model", "predictions"}
    GET  /healthz      the process is alive
    GET  /readyz       200 once the model is loaded, else 503
    GET  /metrics      Prometheus text format

Every error, including unknown routes and wrong methods, is JSON: {"error": {"code", "message"}}.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from lmforge.config import ServeConfig
from lmforge.registry import ModelRegistry, ModelVersion
from lmforge.serve.batching import BatchingPredictor
from lmforge.serve.metrics import CONTENT_TYPE, ServeMetrics
from lmforge.serve.middleware import RequestContextMiddleware, request_id_from
from lmforge.serve.validation import RequestError, parse_predict_body, read_body

log = logging.getLogger("lmforge.serve")

ROUTES = "POST /v1/predict, GET /healthz, GET /readyz, GET /metrics"


@dataclass
class ModelState:
    """What the app serves; `classifier` is None until the model is loaded."""

    version: ModelVersion
    quantization: str | None
    classifier: Any = None
    load_error: str | None = None
    predictor: BatchingPredictor | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.classifier is not None and self.predictor is not None

    def identity(self) -> dict[str, Any]:
        return {"name": self.version.name, "version": self.version.version}


def resolve_served_version(registry_dir: Path, model: str | None) -> ModelVersion:
    """The production version of `model` (or of the only model) in the registry."""
    return ModelRegistry(registry_dir, create=False).resolve(model, "production")


def load_classifier(model_dir: Path) -> Any:
    from lmforge.inference import TextClassifier  # torch import kept out of module import

    return TextClassifier.load(model_dir)


def create_app(registry_dir: Path, cfg: ServeConfig, preload: bool = True) -> FastAPI:
    """Build the app for the registry's production model.

    With `preload` (the default) the model loads now, so a broken model fails before the port
    opens. Without it, loading happens in the background after startup: /healthz answers at
    once and /readyz turns 200 when the model is in.
    """
    version = resolve_served_version(Path(registry_dir), cfg.model)
    state = ModelState(version=version, quantization=_quantization_of(version.path))
    if preload:
        state.classifier = load_classifier(version.path)
    metrics = ServeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor = BatchingPredictor(
            _predict_fn(state), cfg.batching.max_batch_size, on_batch=metrics.batch_texts.observe
        )
        await predictor.start()
        state.predictor = predictor
        loader = None
        if state.classifier is not None:
            metrics.set_model(version.name, version.version, state.quantization)
        else:
            loader = asyncio.create_task(_load(state, metrics))
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
            state.predictor = None
            await predictor.stop()

    app = FastAPI(
        title="lmforge",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.model = state
    app.state.metrics = metrics
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    _add_error_handlers(app)

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        if not state.ready:
            raise RequestError(503, "not_ready", _not_ready_message(state))
        body = await read_body(request, cfg.max_body_bytes)
        texts = parse_predict_body(body, cfg)
        assert state.predictor is not None
        predictions = await state.predictor.predict(texts)
        metrics.predicted_texts.inc(len(texts))
        return JSONResponse(
            {
                "request_id": request_id_from(request.scope),
                "model": state.identity(),
                "predictions": [_plain(p) for p in predictions],
            }
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not state.ready:
            return _error(503, "not_ready", _not_ready_message(state))
        return JSONResponse({"status": "ready", "model": state.identity()})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _predict_fn(state: ModelState) -> Callable[[list[str]], list[Any]]:
    def run(texts: list[str]) -> list[Any]:
        return state.classifier.predict(texts)

    return run


async def _load(state: ModelState, metrics: ServeMetrics) -> None:
    try:
        state.classifier = await asyncio.to_thread(load_classifier, state.version.path)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("loading model %s failed: %s", state.version.path, state.load_error)
        return
    metrics.set_model(state.version.name, state.version.version, state.quantization)


def _not_ready_message(state: ModelState) -> str:
    v = state.version
    if state.load_error:
        return f"model {v.name} v{v.version} failed to load: {state.load_error}"
    return f"model {v.name} v{v.version} is still loading; retry shortly"


def _quantization_of(model_dir: Path) -> str | None:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the loader reports a broken model dir with a proper message
    return config.get("quantization") if isinstance(config, dict) else None


def _plain(prediction: dict[str, Any]) -> dict[str, Any]:
    # numpy scalars are not JSON; the model may hand them back.
    return {
        "label": str(prediction["label"]),
        "probs": {str(k): float(v) for k, v in prediction["probs"].items()},
    }


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _add_error_handlers(app: FastAPI) -> None:
    async def on_request_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestError)
        return _error(exc.status, exc.code, exc.message)

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
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
