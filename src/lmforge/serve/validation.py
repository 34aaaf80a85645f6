"""Request checks for the prediction API: every bad input becomes a 4xx with a JSON reason.

Parsing is done by hand rather than through a pydantic body model so each mistake gets its own
status (400 for bytes that are not JSON, 413 for an oversized body, 422 for a well-formed body
with the wrong shape) and a message that names the offending field, index and limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from lmforge.config import ServeConfig

ALLOWED_FIELDS = ("texts", "key")
EXAMPLE = '{"texts": ["some text"]}'


class RequestError(Exception):
    """A client mistake, answered as `{"error": {"code", "message"}}` with `status`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class PredictRequest:
    texts: list[str]
    key: str | None  # the client's routing key: the same key keeps the same A/B arm


MAX_KEY_CHARS = 256


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read the body, refusing (413) as soon as it passes `max_bytes`, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> RequestError:
    got = f"at least {size}" if at_least else str(size)
    return RequestError(
        413,
        "payload_too_large",
        f"request body is {got} bytes; the limit is {limit} bytes (serve.max_body_bytes); "
        "send fewer or shorter texts per request",
    )


def parse_json_body(body: bytes, example: str = EXAMPLE) -> Any:
    """Decode a JSON body; bytes that are not UTF-8 JSON are a 400 that shows `example`."""
    if not body.strip():
        raise RequestError(400, "invalid_json", f"request body is empty; send JSON like {example}")
    try:
        # Strict UTF-8 first: json.loads(bytes) would let encoded surrogates (CESU-8) through.
        payload = json.loads(body.decode("utf-8-sig"))
    except RecursionError:
        raise RequestError(400, "invalid_json", "request body JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: also over-long int literals
        where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise RequestError(
            400, "invalid_json", f"request body is not valid UTF-8 JSON{where}; send {example}"
        ) from None
    # A \uD800-style escape gives a lone surrogate: valid JSON, but not text (it cannot be
    # encoded, tokenised or stored). Only bodies with such an escape pay for the full check.
    if _SURROGATE_ESCAPE.search(body) and _lone_surrogate_or_too_deep(payload):
        raise RequestError(
            422,
            "invalid_text",
            "the body holds a lone UTF-16 surrogate escape (e.g. \\ud800 without its pair); "
            "send valid Unicode text",
        )
    return payload


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate_or_too_deep(payload: Any) -> bool:
    try:
        return _has_lone_surrogate(payload)
    except RecursionError:
        return True


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def parse_predict_body(body: bytes, cfg: ServeConfig) -> PredictRequest:
    """Decode and check a predict body; return the texts to classify and the routing key."""
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise RequestError(
            422,
            "invalid_request",
            f"request body must be a JSON object like {EXAMPLE}, got {_json_type(payload)}",
        )
    unknown = sorted(set(payload) - set(ALLOWED_FIELDS))
    if unknown:
        raise RequestError(
            422,
            "invalid_request",
            f"unknown field {unknown[0]!r}; allowed fields: {', '.join(ALLOWED_FIELDS)}",
        )
    if "texts" not in payload:
        raise RequestError(422, "invalid_request", f"missing field 'texts'; send {EXAMPLE}")
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(
            422,
            "invalid_request",
            f"'texts' must be a list of strings, got {_json_type(texts)}; send {EXAMPLE}",
        )
    if not texts:
        raise RequestError(422, "empty_texts", "'texts' is empty; send at least one text")
    if len(texts) > cfg.max_texts:
        raise RequestError(
            422,
            "too_many_texts",
            f"'texts' has {len(texts)} items; the limit is {cfg.max_texts} per request "
            "(serve.max_texts); split the batch",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(
                422,
                "invalid_request",
                f"texts[{i}] must be a string, got {_json_type(text)}",
            )
        if len(text) > cfg.max_chars:
            raise RequestError(
                422,
                "text_too_long",
                f"texts[{i}] has {len(text)} characters; the limit is {cfg.max_chars} "
                "(serve.max_chars); shorten or split it",
            )
    key = payload.get("key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS):
        raise RequestError(
            422,
            "invalid_request",
            f"'key' must be a non-empty string of at most {MAX_KEY_CHARS} characters "
            "(a user or session id for sticky A/B assignment), got "
            + (f"{len(key)} characters" if isinstance(key, str) else _json_type(key)),
        )
    return PredictRequest(texts, key)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
