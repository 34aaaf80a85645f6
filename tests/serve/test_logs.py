import io
import json
import logging
import re
from datetime import datetime, timezone

import pytest

from lmforge.config import TracingConfig
from lmforge.serve.logs import REQUEST_ID, JsonFormatter, configure_json_logging
from lmforge.serve.tracing import Tracing

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def stream():
    """JSON logging into a buffer; the "lmforge" logger is put back as it was afterwards."""
    logger = logging.getLogger("lmforge")
    handlers, level = list(logger.handlers), logger.level
    buf = io.StringIO()
    configure_json_logging("DEBUG", stream=buf)
    yield buf
    logger.handlers[:] = handlers
    logger.setLevel(level)


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_the_core_fields(stream):
    before = datetime.now(timezone.utc)
    token = REQUEST_ID.set("req-123")
    try:
        logging.getLogger("lmforge.serve").info("predicted %d texts", 3)
    finally:
        REQUEST_ID.reset(token)
    logging.getLogger("lmforge.serve").warning("no request here")
    first, second = lines(stream)
    assert first["message"] == "predicted 3 texts"
    assert first["level"] == "INFO"
    assert first["logger"] == "lmforge.serve"
    assert first["request_id"] == "req-123"
    assert TS.match(first["ts"])
    stamp = datetime.strptime(first["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((stamp - before).total_seconds()) < 60
    assert "request_id" not in second and "trace_id" not in second


def test_extra_fields_are_kept_and_made_json_safe(stream):
    class Opaque:
        def __str__(self) -> str:
            return "<opaque>"

    logging.getLogger("lmforge.x").info(
        "m",
        extra={
            "model": "clf",
            "texts": 4,
            "ratio": 0.5,
            "obj": Opaque(),
            "nested": {"a": [1, float("nan")]},
            "level": "shadowed",  # a core field name: kept under another key
        },
    )
    (line,) = lines(stream)
    assert line["model"] == "clf" and line["texts"] == 4 and line["ratio"] == 0.5
    assert line["obj"] == "<opaque>"
    assert line["nested"] == {"a": [1, "nan"]}
    assert line["level"] == "INFO" and line["extra_level"] == "shadowed"
    assert "NaN" not in stream.getvalue()  # strict JSON, not Python's NaN extension


def test_exc_info_is_one_string_field(stream):
    try:
        raise ValueError("bad input")
    except ValueError:
        logging.getLogger("lmforge.serve").exception("failed")
    (line,) = lines(stream)
    assert line["level"] == "ERROR"
    assert "Traceback" in line["exc_info"]
    assert "ValueError: bad input" in line["exc_info"]
    assert len(stream.getvalue().splitlines()) == 1  # the traceback stays inside the line


def test_trace_id_from_the_current_sampled_span_or_given_explicitly(stream):
    tracing = Tracing(TracingConfig(sample_ratio=1.0, exporter="memory"))
    log = logging.getLogger("lmforge.serve")
    with tracing.request_span("GET /x", None, None) as span:
        log.info("inside")
    log.info("explicit", extra={"trace_id": "abc"})
    log.info("outside")
    inside, explicit, outside = lines(stream)
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert explicit["trace_id"] == "abc"
    assert "trace_id" not in outside


def test_configure_is_idempotent_and_keeps_other_handlers(stream):
    logger = logging.getLogger("lmforge")
    foreign = logging.NullHandler()
    logger.addHandler(foreign)
    second = io.StringIO()
    configure_json_logging("warning", stream=second)
    ours = [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1 and foreign in logger.handlers
    logging.getLogger("lmforge.serve").info("dropped: below WARNING")
    logging.getLogger("lmforge.serve").warning("kept")
    assert stream.getvalue() == ""  # the first handler is gone
    assert [line["message"] for line in lines(second)] == ["kept"]


def test_a_bad_level_names_the_choices():
    with pytest.raises(ValueError, match=r"'LOUD' is not one of DEBUG, INFO"):
        configure_json_logging("LOUD")


def test_formatter_works_on_a_plain_record():
    record = logging.LogRecord("other", logging.DEBUG, __file__, 1, "x=%s", ("y",), None)
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "x=y" and out["logger"] == "other" and out["level"] == "DEBUG"
    assert set(out) == {"ts", "level", "logger", "message"}
