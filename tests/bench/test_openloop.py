"""The open-loop generator against tiny raw asyncio servers on 127.0.0.1."""

import asyncio
import contextlib
import itertools
import json
import threading
import time

import pytest

from lmforge.bench.capacity import find_capacity, open_loop_measure
from lmforge.bench.openloop import (
    LoadSpecError,
    arrival_schedule,
    run_open_loop,
    run_open_loop_sync,
)
from lmforge.bench.server_process import free_port

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


class ScriptedServer:
    """Answers request i (0-based, in arrival order) as `action(i)` says:
    ("ok", delay_s) - 200 after delay_s, one request at a time server-wide when serial=True;
    ("503", 0) - 503 at once; ("close", 0) - close the connection without answering.
    """

    def __init__(self, action, serial=False):
        self.action = action
        self.serial = serial
        self.arrivals: list[float] = []  # perf_counter when each request's body was read
        self.requests: list[bytes] = []
        self._lock = asyncio.Lock()

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self):
        self.server.close()

    async def _handle(self, reader, writer):
        try:
            for _ in range(100_000):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                i = len(self.requests)
                self.requests.append(head + body)
                self.arrivals.append(time.perf_counter())
                kind, delay = self.action(i)
                if kind == "close":
                    break
                if kind == "503":
                    writer.write(UNAVAILABLE)
                elif self.serial:
                    async with self._lock:  # one request at a time: capacity 1/delay req/s
                        await asyncio.sleep(delay)
                    writer.write(OK)
                else:
                    await asyncio.sleep(delay)
                    writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test's loop is ending
        writer.close()


def _run(coro, limit_s=20):
    return asyncio.run(asyncio.wait_for(coro, limit_s))


def test_schedule_is_honoured_and_latency_counts_from_schedule():
    """40 req/s against a serial 20 req/s server: sends stay on schedule, latency grows."""
    rate, duration = 40.0, 1.5

    async def main():
        server = ScriptedServer(lambda i: ("ok", 0.05), serial=True)
        url = await server.start()
        seen = []
        result = await run_open_loop(
            url,
            rate,
            duration,
            ["a text"],
            arrival="uniform",
            connections=64,
            timeout_s=10.0,
            on_result=lambda sched, status, lat: seen.append((sched, status, lat)),
        )
        await server.stop()
        return result, server, seen

    result, server, seen = _run(main())
    expected = int(rate * duration)
    assert result.scheduled == result.sent == result.ok == expected == len(server.arrivals)
    assert result.failed == 0 and result.failures == {}
    # The server saw requests at the scheduled pace, not at its own (slower) answer pace.
    span = server.arrivals[-1] - server.arrivals[0]
    assert span == pytest.approx((expected - 1) / rate, abs=0.15)
    # Latency from schedule grows by ~(1/20 - 1/40) s per request: about 1.5 s at the end,
    # where a closed-loop client would have reported 50 ms for every request.
    seen.sort()
    assert [s for s, _, _ in seen] == pytest.approx([i / rate for i in range(expected)], abs=1e-6)
    first = [lat for _, _, lat in seen[:10]]
    last = [lat for _, _, lat in seen[-10:]]
    assert max(first) < 0.45
    assert min(last) > 1.1
    assert result.latency_ms(100) > 1300
    assert result.achieved_rate == pytest.approx(rate, rel=0.01)
    summary = result.summary()
    assert summary["ok"] == expected and summary["success"] == 1.0
    assert summary["p50_ms"] < summary["p90_ms"] < summary["p99_ms"] <= summary["max_ms"]


def test_failures_counted_by_status_and_by_exception():
    async def main():
        mixed = ScriptedServer(lambda i: ("503", 0) if i % 2 else ("ok", 0))
        closing = ScriptedServer(lambda i: ("close", 0))
        urls = [await mixed.start(), await closing.start()]
        by_status = await run_open_loop(urls[0], 100, 0.4, ["x"], arrival="uniform")
        by_close = await run_open_loop(urls[1], 50, 0.4, ["x"], arrival="uniform")
        refused = await run_open_loop(
            f"http://127.0.0.1:{free_port()}", 50, 0.2, ["x"], arrival="uniform"
        )
        hanging = ScriptedServer(lambda i: ("ok", 30.0))
        no_answer = await run_open_loop(
            await hanging.start(), 20, 0.2, ["x"], arrival="uniform", timeout_s=0.2
        )
        for server in (mixed, closing, hanging):
            await server.stop()
        return by_status, by_close, refused, no_answer

    by_status, by_close, refused, no_answer = _run(main())
    assert by_status.failures == {"503": 20} and by_status.ok == 20 and by_status.failed == 20
    assert by_status.success == pytest.approx(0.5)
    assert by_close.failures == {"ServerClosedError": 20} and by_close.ok == 0
    assert by_close.summary()["p99_ms"] is None  # no successful request: no latency
    assert refused.failures == {"ConnectionRefusedError": 10}
    assert no_answer.failures == {"TimeoutError": 4} and no_answer.sent == 4
    assert 0.2 <= no_answer.elapsed_s < 1.0  # each gave up 0.2 s after it was sent


def test_requests_that_cannot_start_in_time_fail_as_timeout():
    """One connection, 150 ms answers, 50 req/s: the queue outgrows the 0.25 s deadline."""

    async def main():
        server = ScriptedServer(lambda i: ("ok", 0.15))
        url = await server.start()
        result = await run_open_loop(
            url, 50, 0.6, ["x"], arrival="uniform", connections=1, timeout_s=0.25
        )
        await server.stop()
        return result, server

    result, server = _run(main())
    assert result.scheduled == 30
    assert result.ok >= 2 and result.failures.get("Timeout", 0) >= 15
    assert result.sent == len(server.requests) < result.scheduled
    assert result.ok + result.failed == result.scheduled
    # Sent within 0.25 s of schedule, answered 0.15 s later.
    assert max(result.latencies_s) <= 0.25 + 0.15 + 0.15
    assert result.queued_sends >= 1


def test_poisson_schedule_is_reproducible_with_a_seed():
    a = arrival_schedule(200, 5.0, "poisson", seed=7)
    assert a == arrival_schedule(200, 5.0, "poisson", seed=7)
    assert a != arrival_schedule(200, 5.0, "poisson", seed=8)
    assert 1000 - 4 * 32 < len(a) < 1000 + 4 * 32  # Poisson(1000): sd ~32
    assert all(0 <= x < y < 5.0 for x, y in itertools.pairwise(a))
    gaps = [y - x for x, y in itertools.pairwise(a)]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 200, rel=0.1)
    # Exponential gaps: about 1 - 1/e of them are shorter than the mean.
    assert sum(g < 1 / 200 for g in gaps) / len(gaps) == pytest.approx(0.632, abs=0.05)
    uniform = arrival_schedule(200, 5.0, "uniform")
    assert len(uniform) == 1000 and uniform[1] == pytest.approx(0.005)


def test_seeded_poisson_run_sends_the_schedule_with_custom_bodies_and_headers():
    async def main():
        server = ScriptedServer(lambda i: ("ok", 0))
        url = await server.start()
        result = await run_open_loop(
            url + "/v1/predict",  # a full predict URL is accepted too
            300,
            0.5,
            [],
            arrival="poisson",
            seed=3,
            headers={"X-Api-Key": "k1"},
            body_fn=lambda i: json.dumps({"texts": [f"t{i}"]}).encode(),
        )
        await server.stop()
        return result, server

    result, server = _run(main())
    assert result.scheduled == len(arrival_schedule(300, 0.5, "poisson", seed=3))
    assert result.ok == result.scheduled == len(server.requests)
    first = server.requests[0]
    assert first.startswith(b"POST /v1/predict HTTP/1.1\r\n") and b"X-Api-Key: k1\r\n" in first
    bodies = sorted(json.loads(r.split(b"\r\n\r\n", 1)[1])["texts"][0] for r in server.requests)
    assert bodies == sorted(f"t{i}" for i in range(result.scheduled))


def test_answers_split_chunked_or_delimited_by_close_are_read():
    """Responses written a few bytes at a time; chunked with trailers; body until close."""
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nxyz",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody until the server closes",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}",
    ]
    connections = []

    async def handle(reader, writer):
        connections.append(1)
        try:
            for _ in range(len(answers)):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                answer = answers[len(seen)]
                seen.append(answer)
                for k in range(0, len(answer), 7):  # several TCP segments per answer
                    writer.write(answer[k : k + 7])
                    await writer.drain()
                    await asyncio.sleep(0.001)
                if answer.startswith(b"HTTP/1.0"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    seen = []

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        statuses = []
        result = await run_open_loop(
            url,
            50,
            0.1,
            ["x"],
            connections=1,
            arrival="uniform",
            on_result=lambda sched, status, lat: statuses.append(status),
        )
        server.close()
        return result, statuses

    result, statuses = _run(main())
    assert statuses == [200, 201, 200, 200, 500]
    assert result.ok == 4 and result.failures == {"500": 1}
    assert len(connections) == 2  # kept alive until the HTTP/1.0 answer closed it


@contextlib.contextmanager
def threaded_server(action, serial=False):
    """A ScriptedServer on its own loop in a thread, for the synchronous entry points."""
    box = {}
    ready = threading.Event()
    stop = threading.Event()

    def serve():
        async def main():
            server = ScriptedServer(action, serial)
            box["url"] = await server.start()
            box["server"] = server
            ready.set()
            for _ in range(600):  # at most 60 s
                if stop.is_set():
                    break
                await asyncio.sleep(0.1)
            await server.stop()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "test server did not start"
    try:
        yield box["url"], box["server"]
    finally:
        stop.set()
        thread.join(10)


def test_texts_are_cycled_in_batches_and_sync_runner_works():
    with threaded_server(lambda i: ("ok", 0)) as (url, server):
        result = run_open_loop_sync(
            url, 100, 0.1, ["a", "b", "c"], texts_per_request=2, arrival="uniform"
        )
    assert result.ok == 10
    texts = [json.loads(r.split(b"\r\n\r\n", 1)[1])["texts"] for r in server.requests]
    assert sorted(map(tuple, texts[:3])) == [("a", "b"), ("b", "c"), ("c", "a")]


def test_capacity_search_over_real_open_loop_trials():
    """A serial server with 10 ms per request serves at most 100 req/s."""
    with threaded_server(lambda i: ("ok", 0.01), serial=True) as (url, _):
        measure = open_loop_measure(
            url, ["x"], 0.6, settle_s=0.05, arrival="uniform", timeout_s=2.0
        )
        found = find_capacity(
            measure, p99_limit_s=0.1, start_rate=20, rel_tolerance=0.25, max_trials=8
        )
    assert 30 <= found.rate <= 130
    assert found.lowest_fail is not None and found.lowest_fail > found.rate
    assert all(s["client_cpu_s"] is not None for _, s, _ in found.trials)
    assert len(found.trials) <= 8


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rate": 0}, "rate=0"),
        ({"duration_s": -1}, "duration_s=-1"),
        ({"arrival": "burst"}, "arrival='burst'"),
        ({"connections": 0}, "connections=0"),
        ({"texts": []}, "texts is empty"),
        ({"url": "127.0.0.1:80"}, "expected http(s)://host"),
        ({"url": "http://127.0.0.1:1/other"}, "base URL"),
        ({"headers": {"X-Bad": "a\r\nb"}}, "X-Bad"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, needle):
    args = {"url": "http://127.0.0.1:1", "rate": 10, "duration_s": 1, "texts": ["x"]}
    args.update(kwargs)
    with pytest.raises(LoadSpecError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        _run(run_open_loop(**args))
