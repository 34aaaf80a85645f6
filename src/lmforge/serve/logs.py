"""Structured logs: one JSON object per line, with the request id and trace id of the request.

    configure_json_logging("INFO")
    token = REQUEST_ID.set(request_id)      # the middleware, per request
    log.info("predicted", extra={"model": "m", "texts": 3})
    -> {"ts": "2025-01-02T03:04:05.678Z", "level": "INFO", "logger": "lmforge.serve",
        "message": "predicted", "request_id": "ab12...", "model": "m", "texts": 3}

`trace_id` comes from `extra={"trace_id": ...}` when given, else from the current OpenTelemetry
span when that one is sampled, so log lines of a traced request can be found from its trace.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from lmforge.serve.tracing import current_trace_id

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lmforge_request_id", default=None
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}
_CORE_FIELDS = ("ts", "level", "logger", "message", "request_id", "trace_id")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_MAX_DEPTH = 8  # of nested containers made JSON-safe; deeper ones become their str()


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the fields).

    `extra` fields that would overwrite a core field (ts, level, ...) are kept as
    `extra_<name>`; values json cannot encode become their str(), NaN/inf floats too.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        trace_id = record.__dict__.get("trace_id") or current_trace_id()
        if trace_id:
            out["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key in _RECORD_FIELDS or key == "trace_id":
                continue
            out[f"extra_{key}" if key in _CORE_FIELDS else key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(out, default=str, allow_nan=False)
        except (ValueError, TypeError):  # NaN/inf, odd keys or a cycle: make it JSON-safe
            return json.dumps(_json_safe(out, 0), default=str)


def configure_json_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines for the "lmforge" loggers, to `stream` (default stderr).

    Idempotent: a second call replaces the handler the first one installed and leaves any
    other handler alone. Records still propagate to the root logger (pytest's caplog, an
    embedding app's handlers); an app that wants only the JSON lines turns that off itself.
    """
    name = str(level).upper()
    if name not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}; pick one")
    logger = logging.getLogger("lmforge")
    for handler in list(logger.handlers):
        if getattr(handler, "_lmforge_json", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._lmforge_json = True  # type: ignore[attr-defined]  # marks ours for the next call
    logger.addHandler(handler)
    logger.setLevel(name)


def _iso_utc(created: float) -> str:
    stamp = datetime.fromtimestamp(created, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _json_safe(value: Any, depth: int) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    return value
