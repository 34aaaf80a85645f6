"""Request and response shapes of the HTTP API, for the OpenAPI spec and the admin bodies.

Predict bodies are checked by hand in `validation.py` (each mistake gets its own status and
message); these models describe them in `/openapi.json` so clients and fuzzers know the API.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.serve.validation import RequestError, parse_json_body


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictBody(Strict):
    texts: list[str] = Field(..., min_length=1, description="Texts to classify.")
    key: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="A user or session id: the same key keeps the same A/B arm.",
    )


class Prediction(BaseModel):
    label: str
    probs: dict[str, float]


class ModelIdentity(BaseModel):
    name: str
    version: int
    variant: str = Field(..., description="The alias that answered: production, canary, ...")


class PredictResponse(BaseModel):
    request_id: str
    model: ModelIdentity
    predictions: list[Prediction]


class FeedbackBody(Strict):
    request_id: str = Field(..., min_length=1, max_length=128)
    outcome: float = Field(..., ge=0.0, le=1.0, description="1 = success, 0 = failure, or a score.")


class FeedbackResponse(BaseModel):
    recorded: bool


class PromoteBody(Strict):
    version: int = Field(..., ge=1, le=2**62, description="A registered version number.")
    alias: str = Field("production", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class RollbackBody(Strict):
    alias: str = Field("production", min_length=1, max_length=64)


class ModelInfo(BaseModel):
    name: str
    aliases: dict[str, int]
    routing: dict[str, Any]
    serving: dict[str, Any]
    shadow: int | None
    labels: list[str]


class ModelList(BaseModel):
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Not UTF-8 JSON"),
        (401, "Missing or unknown API key"),
        (404, "Unknown model or request id"),
        (413, "Body too large"),
        (422, "Well-formed JSON of the wrong shape"),
        (429, "Queue full or rate limited (Retry-After)"),
        (503, "Not ready or shutting down (Retry-After)"),
        (504, "Deadline passed"),
    )
}

M = TypeVar("M", bound=BaseModel)


def body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of `model`'s schema."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def parse(model: type[M], raw: bytes) -> M:
    """Decode and validate a JSON body; a mistake is a 422 naming the field."""
    payload = parse_json_body(raw, example=_example(model))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise RequestError(
            422, "invalid_request", f"field {where!r}: {first['msg']}; send {_example(model)}"
        ) from None


def _example(model: type[BaseModel]) -> str:
    examples = {
        FeedbackBody: '{"request_id": "...", "outcome": 1}',
        PromoteBody: '{"version": 2, "alias": "production"}',
        RollbackBody: '{"alias": "production"}',
    }
    return examples.get(model, "{}")
