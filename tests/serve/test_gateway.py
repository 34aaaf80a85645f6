"""The gateway: forwarding, retry rules, health, limits and merged metrics.

The gateway runs as a real process (`python -m lmforge.serve.gateway`) in front of small echo
servers (real aiohttp processes on 127.0.0.1) whose answers are steered per request by test
headers: answer normally and echo what arrived, close the connection without answering, answer
503 with a given error code, or sleep. Each echo server counts the requests it saw per
x-request-id, which is how the tests see how often a request was sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid

import httpx
import pytest
from test_supervisor import (
    GatewayProc,
    Proc,
    free_port,
    get_json,
    wait_until,
)

from lmforge.serve.gateway import (
    GatewayError,
    add_label,
    is_idempotent,
    merge_metrics,
    parse_upstreams,
)

ECHO_SERVER = r"""
import asyncio, json, sys
from aiohttp import web

name, port = sys.argv[1], int(sys.argv[2])
hits = {}

def steered(request, header):
    return name in request.headers.get(header, "").split(",")

async def readyz(request):
    return web.json_response({"status": "ready"})

async def metrics(request):
    text = (
        "# HELP demo_requests_total Requests seen.\n"
        "# TYPE demo_requests_total counter\n"
        f'demo_requests_total{{path="/x",worker="inner"}} {sum(hits.values())}\n'
        "# HELP demo_up Always 1.\n"
        "# TYPE demo_up gauge\n"
        "demo_up 1\n"
    )
    return web.Response(text=text, content_type="text/plain")

async def hits_view(request):
    return web.json_response(hits)

async def echo(request):
    body = await request.read()
    rid = request.headers.get("x-request-id", "")
    hits[rid] = hits.get(rid, 0) + 1
    if "x-test-sleep" in request.headers:
        await asyncio.sleep(float(request.headers["x-test-sleep"]))
    if steered(request, "x-test-drop"):
        request.transport.close()  # gone without an answer, like a worker that died
        return web.Response()
    if steered(request, "x-test-fail"):
        code = request.headers.get("x-test-code", "not_ready")
        return web.json_response(
            {"error": {"code": code, "message": name}}, status=503, headers={"Retry-After": "7"}
        )
    resp = web.json_response(
        {
            "upstream": name,
            "method": request.method,
            "raw_path": request.raw_path,
            "body_len": len(body),
            "headers": [[k.lower(), v] for k, v in request.headers.items()],
        },
        headers={"x-upstream": name, "x-request-id": rid},
    )
    resp.headers.add("Set-Cookie", "a=1")
    resp.headers.add("Set-Cookie", "b=2")
    return resp

app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_get("/readyz", readyz)
app.router.add_get("/metrics", metrics)
app.router.add_get("/_hits", hits_view)
app.router.add_route("*", "/{tail:.*}", echo)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


class Echo(Proc):
    """An echo upstream named `name` on a free port, waited on until it answers."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self.label = name
        super().__init__([sys.executable, "-c", ECHO_SERVER, name, str(self.port)], f"echo {name}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Echo:
        super().start()

        def answers() -> bool:
            self.check_running()
            return get_json(self.url + "/readyz") is not None

        wait_until(answers, 60.0, f"{self.name} to answer")
        return self

    def __enter__(self) -> Echo:
        return self.start()

    def hits(self, request_id: str) -> int:
        return int((get_json(self.url + "/_hits") or {}).get(request_id, 0))


MAX_BODY = 100_000


@pytest.fixture(scope="module")
def stack():
    """Echo upstreams a and b and a dead port behind one gateway (shared by the module)."""
    dead = f"http://127.0.0.1:{free_port()}"
    a, b = Echo("a"), Echo("b")
    with a, b, GatewayProc([a.url, b.url, dead], max_body_bytes=MAX_BODY) as gw:
        gw.wait_up([0, 1], down=[2])
        yield gw, a, b


def rid() -> str:
    return "t-" + uuid.uuid4().hex[:12]


# --- pure functions -----------------------------------------------------------------------------


def test_upstream_urls_are_checked_with_a_fix_in_the_message():
    assert parse_upstreams(["http://127.0.0.1:8001/", "https://x.example"]) == [
        "http://127.0.0.1:8001",
        "https://x.example:443",
    ]
    for bad, hint in [
        ("127.0.0.1:8001", r"not an http\(s\) URL"),
        ("ftp://h:1", r"not an http\(s\) URL"),
        ("http://h:1/v1", "root URL"),
        ("http://h:99999", "not a valid URL"),
    ]:
        with pytest.raises(GatewayError, match=hint) as info:
            parse_upstreams([bad])
        assert repr(bad) in str(info.value) and "--upstream" in str(info.value)
    with pytest.raises(GatewayError, match="given twice"):
        parse_upstreams(["http://h:1", "http://h:1/"])
    with pytest.raises(GatewayError, match="at least one --upstream"):
        parse_upstreams([])


def test_only_safe_requests_count_as_idempotent():
    assert is_idempotent("GET", "/v1/models")
    assert is_idempotent("POST", "/v1/predict")
    assert is_idempotent("POST", "/v1/models/tiny/predict")
    assert not is_idempotent("POST", "/v1/feedback")
    assert not is_idempotent("POST", "/v1/admin/models/tiny/promote")
    assert not is_idempotent("POST", "/v1/models/a/b/predict")
    assert not is_idempotent("PUT", "/v1/admin/models/tiny/routing")


def test_add_label_keeps_lines_valid():
    assert add_label("up 1", "worker", "0") == 'up{worker="0"} 1'
    assert add_label('x_total{a="1"} 2.0', "worker", "3") == 'x_total{worker="3",a="1"} 2.0'
    assert add_label("x{} 2", "worker", "3") == 'x{worker="3"} 2'
    # An existing label of that name is kept under another name, as Prometheus does.
    line = add_label('x{worker="in",b="q\\"}"} 1', "worker", "1")
    assert line == 'x{worker="1",exported_worker="in",b="q\\"}"} 1'


def test_merge_metrics_declares_each_family_once():
    worker = '# HELP m_total M.\n# TYPE m_total counter\nm_total{k="v"} 1\nm_created 5\n'
    own = "# HELP g Gateway.\n# TYPE g gauge\ng 1\n"
    merged = merge_metrics([("0", worker), ("1", worker), (None, own)], "worker").splitlines()
    assert merged == [
        "# HELP m_total M.",
        "# TYPE m_total counter",
        'm_total{worker="0",k="v"} 1',
        'm_created{worker="0"} 5',
        'm_total{worker="1",k="v"} 1',
        'm_created{worker="1"} 5',
        "# HELP g Gateway.",
        "# TYPE g gauge",
        "g 1",
    ]


# --- a real gateway in front of echo servers -----------------------------------------------------


def test_forwards_any_path_method_query_body_and_headers(stack):
    gw, _, _ = stack
    sent = {
        "authorization": "Bearer k1",
        "x-api-key": "key-2",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-request-id": "client-id-1",
        "x-custom": "yes",
        "connection": "keep-alive, x-hop-secret",
        "x-hop-secret": "must not pass",
    }
    resp = httpx.post(
        gw.url + "/v1/models/tiny/predict?x=1&y=%20z",
        content=b"b" * 5000,
        headers=sent,
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    echo = resp.json()
    got = dict(echo["headers"])
    assert echo["method"] == "POST"
    assert echo["raw_path"] == "/v1/models/tiny/predict?x=1&y=%20z"
    assert echo["body_len"] == 5000
    for name in ("authorization", "x-api-key", "traceparent", "x-custom"):
        assert got[name] == sent[name]
    assert got["x-request-id"] == "client-id-1"
    assert "x-hop-secret" not in got
    assert got["x-forwarded-for"] == "127.0.0.1"
    # Back to the client: the upstream's headers, duplicates included, and the same id.
    assert resp.headers["x-request-id"] == "client-id-1"
    assert resp.headers["x-upstream"] == echo["upstream"]
    assert resp.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert resp.headers["content-length"] == str(len(resp.content))

    for method in ("GET", "PUT", "DELETE", "PATCH"):
        r = httpx.request(method, gw.url + "/v1/admin/anything/else", timeout=10)
        assert r.status_code == 200 and r.json()["method"] == method
    head = httpx.head(gw.url + "/v1/models", timeout=10)
    assert head.status_code == 200 and head.content == b""
    generated = httpx.get(gw.url + "/v1/models", timeout=10)
    assert len(generated.headers["x-request-id"]) == 32  # the gateway made one up


def test_dead_upstream_is_down_and_never_fails_a_request(stack):
    gw, _, _ = stack
    statuses = [
        httpx.post(gw.url + "/v1/feedback", json={}, timeout=10).status_code for _ in range(20)
    ]
    assert statuses == [200] * 20
    status = gw.status()
    assert [u["up"] for u in status["upstreams"]] == [True, True, False]
    assert "ConnectorError" in status["upstreams"][2]["last_error"]
    own = httpx.get(gw.url + "/gateway/metrics", timeout=5).text
    assert f'lmforge_upstream_up{{upstream="{status["upstreams"][2]["url"]}"}} 0.0' in own


def test_idempotent_requests_are_retried_elsewhere(stack):
    gw, a, b = stack
    # Upstream a closes the connection: a predict is sent on to b and succeeds.
    first_on_a = None
    for _ in range(8):  # requests alternate between a and b; one of the first few starts on a
        gw.wait_up([0, 1])
        request_id = rid()
        r = httpx.post(
            gw.url + "/v1/predict",
            json={},
            headers={"x-request-id": request_id, "x-test-drop": "a"},
            timeout=10,
        )
        assert r.status_code == 200 and r.headers["x-upstream"] == "b", r.text
        if a.hits(request_id) == 1:
            first_on_a = request_id
            break
    assert first_on_a is not None, "no request was tried on upstream a first"
    assert b.hits(first_on_a) == 1
    metrics = httpx.get(gw.url + "/gateway/metrics", timeout=5).text
    assert "lmforge_gateway_retries_total 0.0" not in metrics

    # A 503 "not processed" answer is retried too; an overload is passed back untouched.
    gw.wait_up([0, 1])
    r = httpx.post(gw.url + "/v1/predict", json={}, headers={"x-test-fail": "a"}, timeout=10)
    assert r.status_code == 200 and r.headers["x-upstream"] == "b"
    gw.wait_up([0, 1])
    request_id = rid()
    r = httpx.post(
        gw.url + "/v1/predict",
        json={},
        headers={"x-request-id": request_id, "x-test-fail": "a,b", "x-test-code": "overloaded"},
        timeout=10,
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
    assert r.headers["retry-after"] == "7"
    assert a.hits(request_id) + b.hits(request_id) == 1


def test_non_idempotent_request_is_never_sent_twice(stack):
    gw, a, b = stack
    gw.wait_up([0, 1])
    request_id = rid()
    r = httpx.post(
        gw.url + "/v1/feedback",
        json={},
        headers={"x-request-id": request_id, "x-test-drop": "a,b"},
        timeout=10,
    )
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "upstream_failed" and "not idempotent" in error["message"]
    assert a.hits(request_id) + b.hits(request_id) == 1
    assert r.headers["x-request-id"] == request_id

    # The same failure for a predict: tried on both, then a 502 naming the attempts.
    gw.wait_up([0, 1])
    request_id = rid()
    r = httpx.post(
        gw.url + "/v1/predict",
        json={},
        headers={"x-request-id": request_id, "x-test-drop": "a,b"},
        timeout=10,
    )
    assert r.status_code == 502
    hits = (a.hits(request_id), b.hits(request_id))
    # Both were tried; one may be tried again if its health check brought it back meanwhile,
    # but never more than len(upstreams) + 1 = 4 attempts in all.
    assert min(hits) >= 1 and sum(hits) <= 4, hits
    assert "upstream 0" in r.json()["error"]["message"]
    assert "upstream 1" in r.json()["error"]["message"]
    gw.wait_up([0, 1])  # both come back: the health loop sees /readyz 200 again


def test_body_limit_is_413_json(stack):
    gw, _, _ = stack
    r = httpx.post(gw.url + "/v1/predict", content=b"x" * (MAX_BODY + 1), timeout=10)
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and str(MAX_BODY) in error["message"]

    def chunks():
        for _ in range(30):
            yield b"y" * 10_000

    r = httpx.post(gw.url + "/v1/predict", content=chunks(), timeout=10)  # no content-length
    assert r.status_code == 413 and "at least" in r.json()["error"]["message"]
    r = httpx.post(gw.url + "/v1/predict", content=b"z" * MAX_BODY, timeout=10)
    assert r.status_code == 200 and r.json()["body_len"] == MAX_BODY


def test_metrics_are_merged_with_an_upstream_label(stack):
    gw, _, _ = stack
    r = httpx.get(gw.url + "/metrics", timeout=5)
    assert r.status_code == 200
    lines = r.text.splitlines()
    assert lines.count("# TYPE demo_requests_total counter") == 1
    assert lines.count("# HELP demo_requests_total Requests seen.") == 1
    assert 'demo_up{zone="0"} 1' in lines and 'demo_up{zone="1"} 1' in lines
    assert any(
        line.startswith('demo_requests_total{zone="1",path="/x",worker="inner"}') for line in lines
    )
    assert not any('zone="2"' in line for line in lines)  # the dead one is skipped
    assert any(line.startswith("lmforge_gateway_requests_total{") for line in lines)
    for path in ("/gateway/nope", "/gateway/healthz"):
        r = httpx.post(gw.url + path, timeout=5)
        assert r.json()["error"]["code"] in ("not_found", "method_not_allowed")


@pytest.mark.timeout(120)
def test_hung_upstream_is_routed_around_and_comes_back():
    a, b = Echo("a"), Echo("b")
    with a, b, GatewayProc([a.url, b.url]) as gw:
        gw.wait_up([0, 1])
        os.kill(a.pid, signal.SIGSTOP)
        try:

            async def burst() -> list[int]:
                async with httpx.AsyncClient(timeout=30) as client:
                    calls = [client.post(gw.url + "/v1/predict", json={}) for _ in range(6)]
                    return [r.status_code for r in await asyncio.gather(*calls)]

            started = time.monotonic()
            statuses = asyncio.run(burst())
            took = time.monotonic() - started
            assert statuses == [200] * 6, statuses
            assert took < 10, f"requests stuck on the hung upstream took {took:.1f} s"
            status = gw.status()["upstreams"][0]
            assert status["up"] is False and "hung" in status["last_error"], status
        finally:
            os.kill(a.pid, signal.SIGCONT)
        gw.wait_up([0, 1], timeout_s=10)


@pytest.mark.timeout(120)
def test_all_upstreams_down_is_503_with_retry_after_and_drain_on_sigterm():
    a = Echo("a")
    with a, GatewayProc([a.url]) as gw:
        gw.wait_up([0])

        # SIGTERM while a slow request is in flight: it still completes, then exit 0.
        async def slow_then_term() -> int:
            async with httpx.AsyncClient(timeout=30) as client:
                call = asyncio.create_task(
                    client.get(gw.url + "/v1/slow", headers={"x-test-sleep": "1.5"})
                )
                await asyncio.sleep(0.5)
                gw.signal(signal.SIGTERM)
                return (await call).status_code

        assert asyncio.run(slow_then_term()) == 200
        assert gw.wait(20) == 0, gw.output()
        assert "gateway stopped" in gw.output()

        with GatewayProc([a.url]) as gw2:
            gw2.wait_up([0])
            a.signal(signal.SIGKILL)
            gw2.wait_up([], down=[0])
            r = httpx.post(gw2.url + "/v1/predict", json={}, timeout=10)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert error["code"] == "no_upstream" and "0 of 1 up" in error["message"]
            assert gw2.status()["status"] == "no_upstream"


def test_gateway_cli_rejects_a_bad_upstream():
    with Proc(
        [sys.executable, "-m", "lmforge.serve.gateway", "--upstream", "localhost:1", "--port", "0"],
        "bad gateway",
    ) as proc:
        code = proc.wait(60)
        out = proc.output()
    assert code == 2, out
    assert "--upstream 'localhost:1' is not an http(s) URL" in out
