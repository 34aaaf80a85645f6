"""The predict routes without FastAPI's per-request machinery.

A predict request is the hot path: on a 2-core machine, FastAPI's exception middleware,
exit-stack middleware, route matching, dependency solving and endpoint wrapper cost about as
much as all of lmforge's own request code. The two predict handlers take only the request
and a path segment, so none of that machinery does anything for them. `PredictFastPath` sits
just inside `RequestContextMiddleware` (request id, metrics, tracing still apply), matches the
two exact paths for POST, calls the same handler the FastAPI route calls, and turns its
exceptions into answers with the app's own exception handlers. Every other request, and a
path that only looks similar (`/v1/predict/`), goes through FastAPI as before; the routes stay
registered there, so the OpenAPI spec is unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

DEFAULT_PATH = "/v1/predict"
MODEL_PREFIX = "/v1/models/"
MODEL_SUFFIX = "/predict"
MODEL_TEMPLATE = "/v1/models/{name}/predict"

Handler = Callable[[Request, str | None], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def predict_target(path: str) -> tuple[str, str | None] | None:
    """(route template, model name or None for the default) for a predict path, else None.

    The same paths FastAPI's router would match: `{name}` is one non-empty path segment.
    """
    if path == DEFAULT_PATH:
        return DEFAULT_PATH, None
    if path.startswith(MODEL_PREFIX) and path.endswith(MODEL_SUFFIX):
        name = path[len(MODEL_PREFIX) : -len(MODEL_SUFFIX)]
        if name and "/" not in name:
            return MODEL_TEMPLATE, name
    return None


class PredictFastPath:
    """ASGI middleware: POST predict requests straight to `handler`, the rest to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        handler: Handler,
        routes: Mapping[str, BaseRoute],
        error_handlers: Mapping[Any, ErrorHandler],
    ) -> None:
        self.app = app
        self.handler = handler
        self.routes = routes  # template -> FastAPI route, so metrics label the request alike
        self.error_handlers = error_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = None
        if scope["type"] == "http" and scope["method"] == "POST":
            target = predict_target(scope["path"])
        if target is None:
            await self.app(scope, receive, send)
            return
        template, name = target
        route = self.routes.get(template)
        if route is not None:
            scope["route"] = route
        scope["path_params"] = {} if name is None else {"name": name}
        request = Request(scope, receive)
        try:
            response = await self.handler(request, name)
        except Exception as exc:
            on_error = self._handler_for(exc)
            if on_error is None:
                raise  # RequestContextMiddleware answers a JSON 500 and logs it
            response = await on_error(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        for cls in type(exc).__mro__:  # the nearest registered class wins, as in Starlette
            found = self.error_handlers.get(cls)
            if found is not None:
                return found
        return None
