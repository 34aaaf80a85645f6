"""Open-loop load: requests fire at scheduled times, however long the earlier ones take.

A closed-loop client (`loadgen`) waits for each answer before sending the next request, so a
slow server slows the client down and the queueing delay a real user would see never shows
up in the numbers ("coordinated omission"). Here the send times are fixed in advance (uniform
or Poisson arrivals at `rate` req/s) and every latency is measured from the request's
*scheduled* time: a request that waited for a free connection, or behind a stalled server,
is charged for the wait.

Mechanics: one dispatcher coroutine walks the schedule and hands each due request to a FIFO
queue; `connections` workers, each owning one keep-alive HTTP/1.1 connection, take requests
from it. When every connection is busy, requests wait in the queue (their clock running). A
request that cannot start within `timeout_s` of its scheduled time fails as "Timeout" without
being sent; one that was sent but has no answer `timeout_s` after sending fails as
"TimeoutError" (so a latency never exceeds 2 x timeout_s). The deadline runs from the send,
like an ordinary client's timeout: were it measured from the schedule, every request behind a
slow one would start with a sliver of its budget, time out, and drop its connection. Other
failures are counted by status ("503") or exception name ("ServerClosedError", ...).

The client is an `asyncio.Protocol` rather than streams: no per-request reader/writer
coroutines, a pre-encoded request per distinct body, one timer per request. Run it under
uvloop (`run_open_loop_sync` does) so the generator stays much cheaper than the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from lmforge.bench.http1 import ProtocolError, ServerClosedError
from lmforge.bench.stats import percentile
from lmforge.errors import LmforgeError

LATE_SEND_S = 0.005  # the generator is "behind" when it dispatches later than this
MAX_HEADER_BYTES = 64 * 1024
MAX_SCHEDULED = 20_000_000  # rate x duration beyond this would not fit in memory sensibly
CONNECT_TIMEOUT_S = 5.0
Arrival = Literal["uniform", "poisson"]
ResultCallback = Callable[[float, "int | str", float], None]
T = TypeVar("T")


class LoadSpecError(LmforgeError):
    """An open-loop run or capacity search was asked for with impossible parameters."""


@dataclass
class OpenLoopResult:
    """One open-loop run. Latencies are of 2xx requests, from their scheduled send time."""

    rate: float
    duration_s: float
    scheduled: int = 0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    late_sends: int = 0  # dispatched > LATE_SEND_S after schedule: the generator fell behind
    # Dispatched on time but started > LATE_SEND_S late: every connection was busy (or the
    # loop was busy answering others). Their wait is part of their latency, as it should be.
    queued_sends: int = 0
    max_dispatch_lag_s: float = 0.0
    elapsed_s: float = 0.0  # from the first scheduled send to the last answer
    connections: int = 0
    arrival: str = "poisson"
    client_cpu_s: float | None = None  # the generator's CPU time, when the caller measured it

    @property
    def achieved_rate(self) -> float:
        """Successful requests per second of the scheduled window."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def offered_rate(self) -> float:
        """Scheduled requests per second: `rate` for uniform arrivals, near it for Poisson."""
        return self.scheduled / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def success(self) -> float:
        """Share of scheduled requests that got a 2xx answer (1.0 for an empty schedule)."""
        return self.ok / self.scheduled if self.scheduled else 1.0

    def latency_ms(self, q: float) -> float:
        """The q-th percentile (0..100) of successful latencies in ms; NaN with none."""
        return percentile(self.latencies_s, q) * 1000.0

    def summary(self) -> dict[str, Any]:
        """Counts, rates and p50/p90/p99/p99.9/mean/max latency (ms) as plain JSON values."""
        lat = sorted(self.latencies_s)  # sorted once; percentile() then sorts in O(n)
        ms = {
            f"{name}_ms": round(percentile(lat, q) * 1000.0, 3) if lat else None
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
        }
        return {
            "rate": round(self.rate, 3),
            "offered_rate": round(self.offered_rate, 3),
            "achieved_rate": round(self.achieved_rate, 3),
            "duration_s": round(self.duration_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "arrival": self.arrival,
            "connections": self.connections,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "success": round(self.success, 6),
            "failures": dict(sorted(self.failures.items())),
            "late_sends": self.late_sends,
            "queued_sends": self.queued_sends,
            "max_dispatch_lag_ms": round(self.max_dispatch_lag_s * 1000.0, 3),
            "client_cpu_s": None if self.client_cpu_s is None else round(self.client_cpu_s, 3),
            **ms,
            "mean_ms": round(sum(lat) / len(lat) * 1000.0, 3) if lat else None,
            "max_ms": round(lat[-1] * 1000.0, 3) if lat else None,
        }


def arrival_schedule(
    rate: float, duration_s: float, arrival: Arrival = "poisson", seed: int = 0
) -> list[float]:
    """Send offsets (seconds from the start, ascending, all < duration_s) for the run."""
    _check_positive(rate=rate, duration_s=duration_s)
    expected = rate * duration_s
    if expected > MAX_SCHEDULED:
        raise LoadSpecError(
            f"rate x duration = {expected:.0f} requests is more than {MAX_SCHEDULED}; "
            "lower the rate or split the run"
        )
    if arrival == "uniform":
        return [i / rate for i in range(math.ceil(expected)) if i / rate < duration_s]
    if arrival != "poisson":
        raise LoadSpecError(f"arrival={arrival!r}: use 'uniform' or 'poisson'")
    rng = random.Random(seed)
    offsets: list[float] = []
    t = rng.expovariate(rate)
    # A Poisson count this far above its mean never happens; the cap only bounds the loop.
    cap = int(2 * expected + 10 * math.sqrt(expected) + 100)
    while t < duration_s and len(offsets) < cap:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise LoadSpecError(f"{name}={value!r}: must be a positive, finite number")


class _ResponseProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: write a request, parse the answer as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.got_bytes = False  # any byte of an answer since the last request was written
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0
        self._mode = ""  # "" (reading the head), "length", "chunked", "close"
        self._need = 0
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes, waiter: asyncio.Future[int]) -> None:
        assert self.transport is not None
        self._waiter = waiter
        self.got_bytes = False
        self.transport.write(payload)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._buf += data
        try:
            self._parse()
        except (ProtocolError, ValueError) as exc:
            self._fail(exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)))
            self.abort()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost settles the waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._mode == "close":  # a body delimited by the end of the connection
            self._finish()
        elif exc is not None and not isinstance(exc, ConnectionResetError):
            self._fail(exc)
        elif self._mode == "":
            self._fail(ServerClosedError("the server closed the connection without answering"))
        else:
            self._fail(ServerClosedError("the server closed the connection mid-answer"))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        self._mode = ""
        if not self._keep_alive:
            self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_result(self._status)

    def _parse(self) -> None:
        buf = self._buf
        # Each pass consumes bytes or returns, so the loop ends with the buffer.
        for _ in range(len(buf) + 1):
            if self._mode == "":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise ProtocolError("response head larger than 64 KiB")
                    return
                self._read_head(bytes(buf[:end]))
                del buf[: end + 4]
            elif self._mode == "length":
                if len(buf) < self._need:
                    return
                del buf[: self._need]
                self._finish()
            elif self._mode == "chunked":
                if not self._read_chunk():
                    return
            else:  # "close": the body runs until the server closes
                buf.clear()
                return
            if self._waiter is None and not buf:
                return

    def _read_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self._status = int(parts[1])
        length = None
        chunked = False
        self._keep_alive = parts[0] != "HTTP/1.0"
        for line in lines[1:]:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif key == "connection":
                self._keep_alive = value.strip().lower() != "close"
        if chunked:
            self._mode, self._need = "chunked", -1
        elif length is not None:
            self._mode, self._need = "length", length
        elif self._status in (204, 304) or 100 <= self._status < 200:
            self._mode, self._need = "length", 0
        else:
            self._mode, self._keep_alive = "close", False

    def _read_chunk(self) -> bool:
        """Consume one chunk (or the last chunk and trailers); False if more bytes are needed."""
        buf = self._buf
        if self._need >= 0:  # inside a chunk's data plus its CRLF
            if len(buf) < self._need + 2:
                return False
            del buf[: self._need + 2]
            self._need = -1
            return True
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            return False
        size = int(bytes(buf[:line_end]).split(b";", 1)[0].strip(), 16)
        if size > 0:
            del buf[: line_end + 2]
            self._need = size
            return True
        if buf[line_end + 2 : line_end + 4] == b"\r\n":  # no trailers
            del buf[: line_end + 4]
        else:
            trailers_end = buf.find(b"\r\n\r\n", line_end)
            if trailers_end < 0:
                return False
            del buf[: trailers_end + 4]
        self._finish()
        return True


class _Connection:
    """A keep-alive connection that reconnects when the server closed it."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.proto: _ResponseProtocol | None = None

    async def connect(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        transport, proto = await asyncio.wait_for(
            loop.create_connection(_ResponseProtocol, self.host, self.port, ssl=self.tls),
            timeout_s,
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small requests must not wait for Nagle
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proto = proto

    async def request(self, payload: bytes, deadline: float) -> int:
        """Send `payload` and return the answer's status; raise past `deadline` (perf_counter)."""
        reused = self.proto is not None and not self.proto.closed
        try:
            return await self._exchange(payload, deadline)
        except ServerClosedError:
            assert self.proto is not None
            if not reused or self.proto.got_bytes:
                raise
            # The server dropped an idle keep-alive connection: one retry on a fresh one.
            return await self._exchange(payload, deadline)

    async def _exchange(self, payload: bytes, deadline: float) -> int:
        if self.proto is None or self.proto.closed:
            await self.connect(max(min(deadline - time.perf_counter(), CONNECT_TIMEOUT_S), 1e-3))
        proto = self.proto
        assert proto is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        timer = loop.call_later(max(deadline - time.perf_counter(), 0.0), _expire, waiter)
        proto.send(payload, waiter)
        try:
            return await waiter
        except BaseException:
            proto.abort()  # a half-read answer leaves the connection unusable
            raise
        finally:
            timer.cancel()

    def close(self) -> None:
        if self.proto is not None:
            self.proto.abort()
            self.proto = None


def _expire(waiter: asyncio.Future[int]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer before the request's deadline"))


def _split_url(url: str, path: str) -> tuple[str, int, ssl.SSLContext | None, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadSpecError(
            f"url {url!r}: expected http(s)://host[:port], e.g. http://127.0.0.1:8000"
        )
    if not path.startswith("/"):
        raise LoadSpecError(f"path {path!r}: must start with '/', e.g. /v1/predict")
    base = parts.path.rstrip("/")
    if base and base != path.rstrip("/"):
        raise LoadSpecError(
            f"url {url!r} has a path ({parts.path}); pass the server's base URL "
            f"and path={parts.path!r}"
        )
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    port = parts.port or (443 if tls else 80)
    return parts.hostname, port, tls, path


def _request_prefix(host: str, port: int, path: str, headers: dict[str, str] | None) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    lines = [f"POST {path} HTTP/1.1", f"Host: {shown}:{port}", "Content-Type: application/json"]
    for key, value in (headers or {}).items():
        if any(c in f"{key}{value}" for c in "\r\n") or not key or ":" in key:
            raise LoadSpecError(f"header {key!r}: {value!r} is not a valid single-line header")
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


def _texts_body_fn(texts: list[str], texts_per_request: int) -> Callable[[int], bytes]:
    """Request i sends the next `texts_per_request` texts, cycling; bodies are encoded once."""
    cache: dict[int, bytes] = {}
    n = len(texts)

    def body(i: int) -> bytes:
        start = (i * texts_per_request) % n
        encoded = cache.get(start)
        if encoded is None:
            batch = [texts[(start + j) % n] for j in range(texts_per_request)]
            encoded = json.dumps({"texts": batch}, ensure_ascii=False).encode()
            cache[start] = encoded
        return encoded

    return body


async def run_open_loop(
    url: str,
    rate: float,
    duration_s: float,
    texts: list[str],
    *,
    path: str = "/v1/predict",
    texts_per_request: int = 1,
    connections: int = 64,
    timeout_s: float = 10.0,
    arrival: Arrival = "poisson",
    seed: int = 0,
    headers: dict[str, str] | None = None,
    body_fn: Callable[[int], bytes] | None = None,
    on_result: ResultCallback | None = None,
) -> OpenLoopResult:
    """POST to `url` + `path` at `rate` req/s for `duration_s`; every latency from schedule.

    Request i's body is `body_fn(i)`, or else a {"texts": [...]} of `texts_per_request` texts
    cycling through `texts`. `on_result(scheduled_offset_s, status_or_exception_name,
    latency_s)` is called for every scheduled request as it settles (offset from the start).
    """
    _check_positive(timeout_s=timeout_s)
    if not isinstance(connections, int) or connections < 1:
        raise LoadSpecError(f"connections={connections!r}: use at least 1")
    if not isinstance(texts_per_request, int) or texts_per_request < 1:
        raise LoadSpecError(f"texts_per_request={texts_per_request!r}: use at least 1")
    if body_fn is None:
        if not texts:
            raise LoadSpecError("texts is empty: pass at least one text, or a body_fn")
        body_fn = _texts_body_fn(list(texts), texts_per_request)
    host, port, tls, path = _split_url(url, path)
    prefix = _request_prefix(host, port, path, headers)
    offsets = arrival_schedule(rate, duration_s, arrival, seed)
    result = OpenLoopResult(
        rate=rate,
        duration_s=duration_s,
        scheduled=len(offsets),
        connections=connections,
        arrival=arrival,
    )
    queue: asyncio.Queue[tuple[int, float, bool] | None] = asyncio.Queue()
    failures = result.failures
    latencies = result.latencies_s
    perf = time.perf_counter
    conns = [_Connection(host, port, tls) for _ in range(connections)]

    # Open the connections first so the run does not start with `connections` handshakes.
    await asyncio.gather(
        *(c.connect(min(timeout_s, CONNECT_TIMEOUT_S)) for c in conns), return_exceptions=True
    )
    t0 = perf() + 0.01
    last_answer = t0

    def record(sched: float, status: int | str, latency: float) -> None:
        nonlocal last_answer
        last_answer = perf()
        if isinstance(status, int) and 200 <= status < 300:
            result.ok += 1
            latencies.append(latency)
        else:
            key = str(status)
            failures[key] = failures.get(key, 0) + 1
            result.failed += 1
        if on_result is not None:
            on_result(sched - t0, status, latency)

    async def worker(conn: _Connection) -> None:
        # One item per scheduled request plus one sentinel: the loop ends with the queue.
        while True:
            item = await queue.get()
            if item is None:
                return
            i, sched, dispatched_late = item
            start = perf()
            if start - sched > timeout_s:
                record(sched, "Timeout", start - sched)
                continue
            if start - sched > LATE_SEND_S and not dispatched_late:
                result.queued_sends += 1
            payload = body_fn(i)
            result.sent += 1
            status: int | str
            try:
                status = await conn.request(
                    prefix + b"%d\r\n\r\n" % len(payload) + payload, start + timeout_s
                )
            except (OSError, asyncio.TimeoutError, ProtocolError, ValueError) as exc:
                status = type(exc).__name__
            record(sched, status, perf() - sched)

    async def dispatch() -> None:
        i = 0
        n = len(offsets)
        while i < n:  # each pass dispatches >= 1 request or sleeps until the next one is due
            now = perf()
            due = t0 + offsets[i]
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < n and t0 + offsets[i] <= now:
                sched = t0 + offsets[i]
                lag = now - sched
                late = lag > LATE_SEND_S
                if late:
                    result.late_sends += 1
                result.max_dispatch_lag_s = max(result.max_dispatch_lag_s, lag)
                queue.put_nowait((i, sched, late))
                i += 1
        for _ in conns:
            queue.put_nowait(None)

    tasks = [asyncio.ensure_future(dispatch())] + [asyncio.ensure_future(worker(c)) for c in conns]
    try:
        await asyncio.gather(*tasks)
    finally:
        # If one task failed (e.g. a body_fn that raised), stop the others before returning.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            conn.close()
    result.elapsed_s = max(last_answer - t0, 0.0)
    return result


def run_open_loop_sync(
    url: str, rate: float, duration_s: float, texts: list[str], **kw: Any
) -> OpenLoopResult:
    """`run_open_loop` on a fresh event loop (uvloop when installed), from synchronous code."""
    return run_on_fast_loop(run_open_loop(url, rate, duration_s, texts, **kw))


def run_on_fast_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a new uvloop loop (asyncio's own when uvloop is missing)."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # uvloop is not built for every platform; asyncio's loop still works
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
