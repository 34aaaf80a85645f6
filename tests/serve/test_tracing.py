import asyncio
import importlib.util

import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode

from lmforge.config import TracingConfig
from lmforge.errors import ConfigError
from lmforge.serve.tracing import Tracing, current_trace_id, mark_http_status

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def otlp_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def memory_tracing(ratio: float) -> Tracing:
    return Tracing(TracingConfig(sample_ratio=ratio, exporter="memory"))


def traceparent(flags: str, trace_id: str = TRACE_ID) -> list[tuple[bytes, bytes]]:
    value = f"00-{trace_id}-{PARENT_ID}-{flags}".encode()
    return [(b"host", b"x"), (b"traceparent", value)]


def test_ratio_zero_records_nothing():
    tracing = memory_tracing(0.0)
    for i in range(200):
        with tracing.request_span("GET /x", [(b"host", b"x")], {"i": i}) as span:
            assert not span.is_recording()
            assert tracing.current_trace_id() is None
            with tracing.span("child") as child:
                assert not child.is_recording()
    assert tracing.finished_spans() == []


def test_ratio_one_records_every_request_as_a_server_span():
    tracing = memory_tracing(1.0)
    ids = set()
    for i in range(50):
        with tracing.request_span("POST /v1/predict", None, {"http.route": "/v1/predict"}) as sp:
            assert sp.is_recording()
            assert tracing.current_trace_id() == format(sp.get_span_context().trace_id, "032x")
            ids.add(sp.get_span_context().trace_id)
            sp.set_attribute("n", i)
    spans = tracing.finished_spans()
    assert len(spans) == 50 and len(ids) == 50  # every request its own trace
    assert all(s.kind is SpanKind.SERVER and s.parent is None for s in spans)
    assert spans[7].attributes["http.route"] == "/v1/predict"
    assert spans[7].attributes["n"] == 7
    assert spans[0].resource.attributes["service.name"] == "lmforge-serve"


def test_partial_ratio_samples_that_share_and_agrees_with_the_sdk_sampler():
    tracing = memory_tracing(0.25)
    n = 4000
    for _ in range(n):
        with tracing.request_span("GET /x", None):
            pass
    spans = tracing.finished_spans()
    # Binomial(4000, 0.25): mean 1000, sd ~27; 6 sd either side.
    assert 840 < len(spans) < 1160
    # The draw follows TraceIdRatioBased's rule, so a downstream service with the same
    # ratio would keep exactly these traces.
    bound = TraceIdRatioBased.get_bound_for_rate(0.25)
    assert all(s.context.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound for s in spans)


def test_a_sampled_incoming_traceparent_is_continued_even_at_ratio_zero():
    tracing = memory_tracing(0.0)
    with tracing.request_span("GET /x", traceparent("01"), None) as span:
        assert span.is_recording()
        assert tracing.current_trace_id() == TRACE_ID
    (recorded,) = tracing.finished_spans()
    assert format(recorded.context.trace_id, "032x") == TRACE_ID
    assert format(recorded.parent.span_id, "016x") == PARENT_ID
    assert recorded.parent.is_remote


def test_an_unsampled_incoming_traceparent_is_honoured_at_ratio_one():
    tracing = memory_tracing(1.0)
    with tracing.request_span("GET /x", traceparent("00"), None) as span:
        assert not span.is_recording()
    assert tracing.finished_spans() == []


def test_a_malformed_traceparent_is_ignored_and_a_new_root_started():
    tracing = memory_tracing(1.0)
    bad = [(b"traceparent", b"00-not-a-trace-01")]
    with tracing.request_span("GET /x", bad, None) as span:
        assert span.is_recording()
    (recorded,) = tracing.finished_spans()
    assert recorded.parent is None
    assert format(recorded.context.trace_id, "032x") != TRACE_ID


def test_child_spans_nest_under_the_request_span():
    tracing = memory_tracing(1.0)
    with tracing.request_span("POST /v1/predict", None, None) as root:
        with tracing.span("queue_wait", {"texts": 3}):
            pass
        with tracing.span("model_call") as call, tracing.span("cache_lookup"):
            assert call.is_recording()
    spans = {s.name: s for s in tracing.finished_spans()}
    assert set(spans) == {"POST /v1/predict", "queue_wait", "model_call", "cache_lookup"}
    root_ctx = root.get_span_context()
    assert spans["queue_wait"].parent.span_id == root_ctx.span_id
    assert spans["model_call"].parent.span_id == root_ctx.span_id
    assert spans["cache_lookup"].parent.span_id == spans["model_call"].context.span_id
    assert {s.context.trace_id for s in spans.values()} == {root_ctx.trace_id}
    assert spans["queue_wait"].attributes["texts"] == 3


def test_span_outside_a_request_is_a_no_op():
    tracing = memory_tracing(1.0)
    with tracing.span("orphan") as span:
        assert span is INVALID_SPAN
    assert tracing.finished_spans() == []


def test_explicit_parent_links_work_done_in_another_task():
    tracing = memory_tracing(1.0)

    async def main() -> None:
        jobs: asyncio.Queue = asyncio.Queue()

        async def worker() -> None:  # a batch worker, started before any request
            parent, done = await jobs.get()
            with tracing.span("ignored"):  # the worker's own context has no request span
                pass
            with tracing.span("model_call", parent=parent), tracing.span("tokenize"):
                await asyncio.sleep(0)
            done.set_result(None)

        task = asyncio.create_task(worker())
        with tracing.request_span("POST /v1/predict", None, None) as root:
            done = asyncio.get_running_loop().create_future()
            await jobs.put((root, done))
            await done
        await task

    asyncio.run(main())
    spans = {s.name: s for s in tracing.finished_spans()}
    assert set(spans) == {"POST /v1/predict", "model_call", "tokenize"}
    assert spans["model_call"].parent.span_id == spans["POST /v1/predict"].context.span_id
    assert spans["tokenize"].parent.span_id == spans["model_call"].context.span_id


def test_attribute_callable_is_only_called_for_sampled_requests():
    calls = []

    def attrs() -> dict:
        calls.append(1)
        return {"http.route": "/x"}

    off = memory_tracing(0.0)
    for _ in range(100):
        with off.request_span("GET /x", None, attrs), off.span("child", attrs):
            pass
    assert calls == []
    on = memory_tracing(1.0)
    with on.request_span("GET /x", None, attrs), on.span("child", attrs):
        pass
    assert len(calls) == 2
    assert all(s.attributes["http.route"] == "/x" for s in on.finished_spans())


def test_an_exception_marks_the_span_as_an_error_and_propagates():
    tracing = memory_tracing(1.0)
    with pytest.raises(RuntimeError), tracing.request_span("GET /x", None, None):
        raise RuntimeError("boom")
    (span,) = tracing.finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)


def test_mark_http_status_sets_the_code_and_errors_on_5xx():
    tracing = memory_tracing(1.0)
    with tracing.request_span("a", None, None) as ok:
        mark_http_status(ok, 200)
    with tracing.request_span("b", None, None) as bad:
        mark_http_status(bad, 503)
    mark_http_status(INVALID_SPAN, 500)  # a no-op on unsampled requests
    spans = {s.name: s for s in tracing.finished_spans()}
    assert spans["a"].attributes["http.response.status_code"] == 200
    assert spans["a"].status.status_code is StatusCode.UNSET
    assert spans["b"].status.status_code is StatusCode.ERROR


def test_two_instances_keep_their_spans_apart():
    a, b = memory_tracing(1.0), memory_tracing(1.0)
    with a.request_span("a", None, None):
        pass
    assert [s.name for s in a.finished_spans()] == ["a"]
    assert b.finished_spans() == []


def test_disabled_is_a_no_op_and_finished_spans_says_why():
    tracing = Tracing(TracingConfig(enabled=False, sample_ratio=1.0, exporter="memory"))
    with tracing.request_span("GET /x", traceparent("01"), None) as span:
        assert span is INVALID_SPAN
        assert current_trace_id() is None
    with pytest.raises(ConfigError, match=r"exporter 'memory' and tracing\.enabled true"):
        tracing.finished_spans()
    tracing.shutdown()


def test_exporter_none_still_records_for_log_correlation():
    tracing = Tracing(TracingConfig(sample_ratio=1.0, exporter="none"))
    with tracing.request_span("GET /x", None, None) as span:
        assert span.is_recording()
        assert tracing.current_trace_id() is not None
    with pytest.raises(ConfigError, match="exporter 'none'"):
        tracing.finished_spans()
    tracing.shutdown()


def test_shutdown_is_idempotent_and_later_spans_are_no_ops():
    tracing = memory_tracing(1.0)
    tracing.shutdown()
    tracing.shutdown()
    with tracing.request_span("GET /x", None, None) as span:
        assert not span.is_recording()


def test_console_exporter_builds_and_shuts_down():
    tracing = Tracing(TracingConfig(sample_ratio=0.0, exporter="console"))
    with tracing.request_span("GET /x", None, None):
        pass
    tracing.shutdown()


@pytest.mark.skipif(otlp_installed(), reason="the OTLP exporter is installed here")
def test_otlp_without_the_package_names_the_pip_install():
    with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp-proto-http"):
        Tracing(TracingConfig(exporter="otlp", otlp_endpoint="http://127.0.0.1:4318/v1/traces"))


def test_a_task_started_inside_a_sampled_request_inherits_it():
    tracing = memory_tracing(1.0)

    async def main() -> None:
        async def helper() -> None:
            with tracing.span("helper"):
                await asyncio.sleep(0)

        with tracing.request_span("GET /x", None, None):
            await asyncio.create_task(helper())

    asyncio.run(main())
    spans = {s.name: s for s in tracing.finished_spans()}
    assert spans["helper"].parent.span_id == spans["GET /x"].context.span_id
