"""The outer ASGI layer: request ids, tracing, per-request metrics, and a JSON 500 last resort.

Written as plain ASGI (not BaseHTTPMiddleware) so it adds no task per request and sees the
route template FastAPI puts into the scope after routing.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.serve.logs import REQUEST_ID
from lmforge.serve.metrics import ServeMetrics
from lmforge.serve.tracing import Tracing, mark_http_status

log = logging.getLogger("lmforge.serve")

REQUEST_ID_HEADER = "x-request-id"
# A client's id is echoed only when it is short and plain, so it cannot inject header bytes
# or blow up log lines.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"
CLIENT_CLOSED = 499  # nginx's code for "client closed the request", used in metrics only


def request_id_from(scope: Scope) -> str:
    """The id the middleware chose for this request (the client's, or a new uuid4 hex)."""
    return scope.get("state", {}).get("request_id", "")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServeMetrics, tracing: Tracing | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _pick_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)  # every log line of this request carries the id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if self.tracing is None:
                await self.app(scope, receive, send_with_id)
            else:
                with self.tracing.request_span(
                    f"HTTP {scope['method']}",
                    scope.get("headers"),
                    lambda: {"http.method": scope["method"], "http.target": scope["path"]},
                ) as span:
                    await self.app(scope, receive, send_with_id)
                    if span.is_recording():  # built only for the sampled few
                        route = _route_label(scope)
                        span.update_name(f"{scope['method']} {route}")
                        span.set_attribute("http.route", route)
                        span.set_attribute("lmforge.request_id", request_id)
                        mark_http_status(span, status)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # nobody is left to answer; not a server fault
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            status = 500
            await _send_json(
                send_with_id,
                500,
                {"error": {"code": "internal_error", "message": f"request {request_id} failed"}},
            )
        finally:
            REQUEST_ID.reset(token)
            self.metrics.observe_request(
                _route_label(scope), scope["method"], status, time.perf_counter() - started
            )


def _pick_request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            if _CLIENT_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def _route_label(scope: Scope) -> str:
    # The template ("/v1/predict"), never the raw path: raw paths of 404s would let any client
    # create unbounded label values.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
