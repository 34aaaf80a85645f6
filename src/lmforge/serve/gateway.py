"""The front of a multi-worker or multi-zone deployment: one port, many upstream servers.

`Gateway` is a plain ASGI app (run by uvicorn on httptools/uvloop) that forwards every request,
whatever its path, to one healthy upstream and hands back its status, headers and body. It
picks the upstream with the fewest requests in flight (ties go round-robin) and keeps a pool of
keep-alive connections to each.

Retries. A request is sent again to another upstream when the first one provably did not
process it (the connection was refused, or it answered 503 not_ready / shutting_down /
no_upstream), and, for idempotent requests only (GET/HEAD/OPTIONS and the predict routes),
also when the upstream closed or reset the connection before answering, answered 502, or
stopped answering health checks (hung). At most len(upstreams) + 1 attempts, all within one
time bound. Other requests (admin actions, feedback) are never sent twice.

Health. A failed upstream is marked down at once (passive) and a loop probes GET /readyz on
every upstream every 0.25 s with a 1 s timeout (active): 200 brings it back, anything else
takes it out. Two probe timeouts in a row mark it hung, which also abandons the idempotent
requests waiting on it so they are retried elsewhere.

Own routes: GET /gateway/healthz (status of the gateway and its upstreams), GET
/gateway/metrics (the gateway's own Prometheus metrics) and GET /metrics (every healthy
upstream's metrics, each sample labelled with the upstream's index, then the gateway's own).
Errors from the gateway itself are JSON like the app's: {"error": {"code", "message"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from rich.console import Console

from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge.serve.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 2.0
HEALTH_INTERVAL_S = 0.25
HEALTH_TIMEOUT_S = 1.0
HUNG_AFTER = 2  # consecutive probe timeouts
GRACEFUL_SHUTDOWN_S = 10.0
POOL_PER_HOST = 256
# Below uvicorn's 5 s keep-alive, so the gateway drops an idle connection before the upstream
# does; reusing one the upstream is closing would fail a request that was never processed.
POOL_KEEPALIVE_S = 3.0
# A body over the limit is still read (not kept) up to this much, so the client can read the
# 413 instead of being reset while it is still sending.
DRAIN_CAP_BYTES = 16 * 1024 * 1024

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed for the forwarded request: the body is re-sent whole, the host is the upstream's.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
# uvicorn adds its own date, and the body length is set from the bytes actually sent.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server"}
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PREDICT_PATH = re.compile(r"^/v1/(?:predict|models/[^/]+/predict)/?$")
# Error codes that mean "not processed": the upstream is loading, draining or has no workers.
_NOT_PROCESSED_CODES = frozenset({"not_ready", "shutting_down", "no_upstream"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # same rule the app uses
GATEWAY_ROUTES = "GET /gateway/healthz, GET /gateway/metrics, GET /metrics (merged)"
RESTART_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class GatewayError(LmforgeError):
    """The gateway cannot start: no upstreams, or an upstream that is not an http(s) URL."""


def parse_upstreams(urls: Sequence[str]) -> list[str]:
    """The upstream base URLs, normalised (no trailing slash); a clear error for a bad one."""
    if not urls:
        raise GatewayError(
            "no upstreams; pass at least one --upstream URL, e.g. --upstream http://127.0.0.1:8001"
        )
    out: list[str] = []
    for raw in urls:
        url = str(raw).strip().rstrip("/")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise GatewayError(
                f"--upstream {raw!r} is not a valid URL ({exc}); "
                "pass e.g. --upstream http://127.0.0.1:8001"
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GatewayError(
                f"--upstream {raw!r} is not an http(s) URL with a host; "
                "pass e.g. --upstream http://127.0.0.1:8001"
            )
        if parts.path or parts.query or parts.fragment:
            raise GatewayError(
                f"--upstream {raw!r} has a path, query or fragment; pass the server's root URL "
                f"(e.g. {parts.scheme}://{parts.netloc}); every request path is forwarded as is"
            )
        if port is None:
            url = f"{url}:{443 if parts.scheme == 'https' else 80}"
        if url in out:
            raise GatewayError(f"--upstream {raw!r} is given twice; list each upstream once")
        out.append(url)
    return out


def is_idempotent(method: str, path: str) -> bool:
    """Safe to send twice: read-only methods, and predictions (they change nothing)."""
    method = method.upper()
    return method in _IDEMPOTENT_METHODS or (method == "POST" and bool(_PREDICT_PATH.match(path)))


# --- metrics ------------------------------------------------------------------------------------


class GatewayMetrics:
    """The gateway's (and its supervisor's) metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lmforge_gateway_requests_total",
            "Requests answered by the gateway (forwarded or its own errors), by status code.",
            ("status",),
            registry=self.registry,
        )
        self.retries = Counter(
            "lmforge_gateway_retries_total",
            "Requests sent again to another upstream after a failed attempt.",
            registry=self.registry,
        )
        self.upstream_up = Gauge(
            "lmforge_upstream_up",
            "1 while the upstream is healthy and receives requests.",
            ("upstream",),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "lmforge_gateway_in_flight",
            "Requests the gateway is handling right now.",
            registry=self.registry,
        )
        self.restarts = Counter(
            "lmforge_worker_restarts_total",
            "Worker processes the supervisor replaced (died or hung).",
            registry=self.registry,
        )
        self.restart_seconds = Histogram(
            "lmforge_worker_restart_seconds",
            "From a dead or hung worker being noticed to its replacement being ready.",
            buckets=RESTART_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def add_label(line: str, name: str, value: str) -> str:
    """A Prometheus sample line with `name="value"` added first.

    A label of the same name already on the line is kept as `exported_<name>`, as Prometheus
    itself does, so the line stays valid.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    new = f'{name}="{escaped}"'
    brace = line.find("{")
    space = _first_space(line)
    if brace == -1 or (space != -1 and space < brace):
        if space == -1:
            return line  # not a sample line
        return f"{line[:space]}{{{new}}}{line[space:]}"
    labels, end = _parse_labels(line, brace + 1)
    if labels is None:  # malformed: prepend and let the scraper judge
        return f"{line[: brace + 1]}{new},{line[brace + 1 :]}"
    pairs = [f"exported_{k}={v}" if k == name else f"{k}={v}" for k, v in labels]
    return f"{line[:brace]}{{{','.join([new, *pairs])}}}{line[end:]}"


def _first_space(line: str) -> int:
    for i, ch in enumerate(line):
        if ch in " \t":
            return i
    return -1


def _parse_labels(line: str, i: int) -> tuple[list[tuple[str, str]] | None, int]:
    """(label name, quoted value) pairs from just after `{`, and the index after `}`."""
    labels: list[tuple[str, str]] = []
    n = len(line)
    while i < n:  # each pass consumes at least one character
        while i < n and line[i] in " ,":
            i += 1
        if i < n and line[i] == "}":
            return labels, i + 1
        eq = line.find("=", i)
        if eq == -1 or eq + 1 >= n or line[eq + 1] != '"':
            return None, i
        j = eq + 2
        while j < n and line[j] != '"':
            j += 2 if line[j] == "\\" else 1
        if j >= n:
            return None, i
        labels.append((line[i:eq].strip(), line[eq + 1 : j + 1]))
        i = j + 1
    return None, i


@dataclass
class _Family:
    help: str | None = None
    type: str | None = None
    samples: list[str] = field(default_factory=list)


def merge_metrics(sources: Sequence[tuple[str | None, str]], label: str) -> str:
    """Prometheus texts merged into one: each family once (one HELP/TYPE), all its samples.

    `sources` are (label value, text) pairs; samples of a source with a value get
    `label="value"`, those of a source with None are kept as they are (the gateway's own).
    """
    families: dict[str, _Family] = {}
    for value, text in sources:
        current: _Family | None = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = families.setdefault(parts[2], _Family())
                    if parts[1] == "HELP" and current.help is None:
                        current.help = line
                    elif parts[1] == "TYPE" and current.type is None:
                        current.type = line
                continue  # other comments (and "# EOF") carry nothing to merge
            if current is None:  # a sample before any header: a family of its own
                name = re.split(r"[{\s]", line, maxsplit=1)[0]
                current = families.setdefault(name, _Family())
            current.samples.append(line if value is None else add_label(line, label, value))
    out: list[str] = []
    for family in families.values():
        out.extend(h for h in (family.help, family.type) if h is not None)
        out.extend(family.samples)
    return "\n".join(out) + "\n"


# --- upstream state -------------------------------------------------------------------------------


@dataclass(eq=False)  # compared by identity: two upstreams are never "equal"
class Upstream:
    index: int
    url: str
    up: bool = False
    in_flight: int = 0
    probe_failures: int = 0
    last_error: str | None = None
    # Resolved when the upstream is found hung: idempotent requests waiting on it give up on
    # it and try another. A fresh one is made each time the upstream comes back.
    hung: asyncio.Future[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "url": self.url,
            "up": self.up,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
        }


class _Hung(Exception):
    pass


@dataclass
class _Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


# --- the ASGI app -------------------------------------------------------------------------------


class Gateway:
    """ASGI app forwarding every request to the healthiest upstream, with safe retries."""

    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        max_body_bytes: int = 1_000_000,
        metrics: GatewayMetrics | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        health_interval_s: float = HEALTH_INTERVAL_S,
        health_timeout_s: float = HEALTH_TIMEOUT_S,
        hung_after: int = HUNG_AFTER,
        metrics_label: str = "worker",
        pool_per_host: int = POOL_PER_HOST,
        initially_up: bool = False,
        status_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        urls = parse_upstreams(upstreams)
        if max_body_bytes < 1:
            raise GatewayError(f"max_body_bytes={max_body_bytes}: use a positive byte count")
        if timeout_s <= 0:
            raise GatewayError(f"timeout_s={timeout_s}: use a positive number of seconds")
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", metrics_label):
            raise GatewayError(
                f"metrics_label={metrics_label!r} is not a Prometheus label name; "
                "use letters, digits and underscores, e.g. 'worker'"
            )
        self.upstreams = [Upstream(i, url, up=initially_up) for i, url in enumerate(urls)]
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics or GatewayMetrics()
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.hung_after = hung_after
        self.metrics_label = metrics_label
        self.pool_per_host = pool_per_host
        self.status_extra = status_extra
        self.in_flight = 0
        self._rr = 0
        self._session: Any = None  # aiohttp.ClientSession for requests
        self._probe_session: Any = None  # a separate one, so a full pool cannot fail probes
        self._health_tasks: list[asyncio.Task[None]] = []
        for up in self.upstreams:
            self.metrics.upstream_up.labels(up.url).set(1 if up.up else 0)

    # --- lifecycle ---------------------------------------------------------------------------

    async def startup(self, probe_first: bool = True) -> None:
        """Open the connection pools, probe every upstream once, start the health loops."""
        import aiohttp

        if self._session is not None:
            return
        loop = asyncio.get_running_loop()
        for up in self.upstreams:
            up.hung = loop.create_future()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=self.pool_per_host, keepalive_timeout=POOL_KEEPALIVE_S
            ),
            auto_decompress=False,  # bodies pass through byte for byte, encoding and all
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # never mix one client's cookies into another's
            trust_env=False,
        )
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_KEEPALIVE_S),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        if probe_first:
            await asyncio.gather(*(self._probe_once(up) for up in self.upstreams))
        self._health_tasks = [
            asyncio.create_task(self._health_loop(up), name=f"gateway-health-{up.index}")
            for up in self.upstreams
        ]

    async def shutdown(self) -> None:
        for task in self._health_tasks:
            task.cancel()
        for task in self._health_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._health_tasks = []
        for session in (self._session, self._probe_session):
            if session is not None:
                await session.close()
        self._session = self._probe_session = None

    # --- health ------------------------------------------------------------------------------

    def mark_up(self, index: int) -> None:
        up = self.upstreams[index]
        up.probe_failures = 0
        if up.hung is not None and up.hung.done():
            up.hung = asyncio.get_running_loop().create_future()
        if not up.up:
            up.up = True
            up.last_error = None
            self.metrics.upstream_up.labels(up.url).set(1)
            log.info("upstream %d (%s) is up", index, up.url)

    def mark_down(
        self, index: int, reason: str, hung: bool = False, url: str | None = None
    ) -> None:
        """Take an upstream out of rotation; `url`: only if it still points there."""
        up = self.upstreams[index]
        if url is not None and url != up.url:
            return  # news about an address it no longer has (the worker was replaced)
        up.last_error = reason
        if up.up:
            up.up = False
            self.metrics.upstream_up.labels(up.url).set(0)
            log.warning("upstream %d (%s) is down: %s", index, up.url, reason)
        if hung and up.hung is not None and not up.hung.done():
            up.hung.set_result(None)

    def set_url(self, index: int, url: str) -> None:
        """Point an upstream at a new address (a worker restarted on another port)."""
        new = parse_upstreams([url])[0]
        up = self.upstreams[index]
        with contextlib.suppress(KeyError):
            self.metrics.upstream_up.remove(up.url)
        up.url = new
        self.metrics.upstream_up.labels(new).set(1 if up.up else 0)

    async def _probe(self, up: Upstream) -> tuple[bool, bool, str]:
        """(ok, timed out, what went wrong) for one GET /readyz."""
        import aiohttp

        try:
            async with self._probe_session.get(
                up.url + "/readyz", timeout=aiohttp.ClientTimeout(total=self.health_timeout_s)
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    return True, False, ""
                return False, False, f"/readyz answered {resp.status}"
        except asyncio.TimeoutError:
            return False, True, f"/readyz gave no answer within {self.health_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return False, False, f"/readyz failed: {_describe(exc)}"

    async def _probe_once(self, up: Upstream) -> None:
        url = up.url
        ok, timed_out, why = await self._probe(up)
        if url != up.url:
            return  # the upstream was moved while this probe ran; the next one counts
        if ok:
            self.mark_up(up.index)
            return
        up.probe_failures += 1
        hung = timed_out and up.probe_failures >= self.hung_after
        self.mark_down(up.index, why + (" (hung)" if hung else ""), hung=hung)

    async def _health_loop(self, up: Upstream) -> None:
        while True:  # runs until shutdown() cancels it
            try:
                await self._probe_once(up)
            except Exception:  # a probe bug must not end health checking for good
                log.exception("health probe of %s failed", up.url)
            await asyncio.sleep(self.health_interval_s)

    # --- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":  # websockets are not forwarded
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        path = scope["path"]
        if path.startswith("/gateway/") or path == "/metrics":
            await self._own_route(scope, send)
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            status = await self._proxy(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
        self.metrics.requests.labels(str(status)).inc()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:  # one startup and one shutdown message, then uvicorn stops calling
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _own_route(self, scope: Scope, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        known = ("/gateway/healthz", "/gateway/metrics", "/metrics")
        if path not in known:
            await _send_error(
                send, 404, "not_found", f"no gateway route {method} {path}; {GATEWAY_ROUTES}"
            )
            return
        if method not in ("GET", "HEAD"):
            await _send_error(
                send,
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; use GET",
                [(b"allow", b"GET, HEAD")],
            )
            return
        if path == "/gateway/healthz":
            body = json.dumps(self.status()).encode()
            await _send(send, 200, [(b"content-type", b"application/json")], body, method)
            return
        text = self.metrics.render() if path == "/gateway/metrics" else await self.merged_metrics()
        await _send(send, 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], text, method)

    def status(self) -> dict[str, Any]:
        """What GET /gateway/healthz answers."""
        healthy = sum(up.up for up in self.upstreams)
        out: dict[str, Any] = {
            "status": "ok" if healthy else "no_upstream",
            "in_flight": self.in_flight,
            "upstreams": [up.describe() for up in self.upstreams],
        }
        if self.status_extra is not None:
            out.update(self.status_extra())
        return out

    async def merged_metrics(self) -> bytes:
        """Every healthy upstream's /metrics, labelled by upstream index, then our own."""

        async def fetch(up: Upstream) -> tuple[str | None, str]:
            import aiohttp

            try:
                async with self._probe_session.get(
                    up.url + "/metrics",
                    headers={"Accept": "text/plain"},
                    timeout=aiohttp.ClientTimeout(total=self.health_timeout_s),
                ) as resp:
                    text = await resp.text(errors="replace")
                    if resp.status == 200:
                        return str(up.index), text
                    return None, f"# upstream {up.index}: /metrics answered {resp.status}"
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                return None, f"# upstream {up.index}: /metrics failed: {_describe(exc)}"

        healthy = [up for up in self.upstreams if up.up]
        parts = list(await asyncio.gather(*(fetch(up) for up in healthy)))
        parts.append((None, self.metrics.render().decode()))
        return merge_metrics(parts, self.metrics_label).encode()

    # --- forwarding ------------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Forward one request; the status code the client got."""
        method, path = scope["method"], scope["path"]
        request_id, headers = self._forward_headers(scope)
        id_header = [(b"x-request-id", request_id.encode())]
        body = await self._read_body(scope, receive)
        if body is None:
            return 499  # the client went away while sending
        if isinstance(body, int):
            await _send_error(
                send,
                413,
                "payload_too_large",
                f"request body is {'at least ' if body < 0 else ''}{abs(body)} bytes; the "
                f"gateway's limit is {self.max_body_bytes} bytes (serve.max_body_bytes); "
                "send fewer or shorter texts per request",
                id_header,
            )
            return 413
        import aiohttp

        target = _target(scope)
        idempotent = is_idempotent(method, path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        tried: list[Upstream] = []
        failures: list[str] = []
        last_reply: _Reply | None = None
        for attempt in range(len(self.upstreams) + 1):
            up = self._pick(tried)
            if up is None:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if attempt:
                self.metrics.retries.inc()
            tried.append(up)
            url = up.url
            up.in_flight += 1
            try:
                reply = await self._attempt(
                    up, method, target, headers, body, remaining, idempotent
                )
            except _Hung:
                failures.append(f"upstream {up.index} hung")
                continue
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                why = _describe(exc)
                if _never_reached(exc):  # refused or connect timed out: safe for any method
                    self.mark_down(up.index, why, url=url)
                    failures.append(f"upstream {up.index}: {why}")
                    continue
                if isinstance(exc, asyncio.TimeoutError):
                    await _send_error(
                        send,
                        504,
                        "upstream_timeout",
                        f"no answer from upstream {up.index} ({up.url}) within the gateway's "
                        f"{self.timeout_s:g} s bound for {method} {path}",
                        id_header,
                    )
                    return 504
                self.mark_down(up.index, why, url=url)
                failures.append(f"upstream {up.index}: {why}")
                if idempotent:
                    continue
                await _send_error(
                    send,
                    502,
                    "upstream_failed",
                    f"upstream {up.index} ({up.url}) failed during {method} {path} ({why}); "
                    "it may or may not have been processed, and it is not retried because it "
                    "is not idempotent; check its state before sending it again",
                    id_header,
                )
                return 502
            finally:
                up.in_flight -= 1
            code = _retry_code(reply) if idempotent else None
            if code is None:
                await _send(send, reply.status, reply.headers, reply.body, method)
                return reply.status
            if reply.status == 503:
                self.mark_down(up.index, f"answered 503 {code}", url=url)
            failures.append(f"upstream {up.index}: {reply.status} {code}")
            last_reply = reply
        if last_reply is not None:
            await _send(send, last_reply.status, last_reply.headers, last_reply.body, method)
            return last_reply.status
        if not tried:
            await _send_error(
                send,
                503,
                "no_upstream",
                f"no healthy upstream for {method} {path} (0 of {len(self.upstreams)} up); "
                "retry in a second, or check the workers (GET /gateway/healthz)",
                [*id_header, (b"retry-after", b"1")],
            )
            return 503
        await _send_error(
            send,
            502,
            "upstream_failed",
            f"{method} {path} failed on every upstream tried: {'; '.join(failures)}",
            [*id_header, (b"retry-after", b"1")],
        )
        return 502

    def _pick(self, tried: list[Upstream]) -> Upstream | None:
        """The healthy upstream with the fewest requests in flight, preferring untried ones."""
        healthy = [up for up in self.upstreams if up.up]
        if not healthy:
            return None
        fresh = [up for up in healthy if up not in tried] or healthy
        self._rr += 1
        start = self._rr % len(fresh)
        rotated = fresh[start:] + fresh[:start]  # ties go round-robin
        return min(rotated, key=lambda up: up.in_flight)

    async def _attempt(
        self,
        up: Upstream,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        remaining: float,
        idempotent: bool,
    ) -> _Reply:
        exchange = self._exchange(up.url + target, method, headers, body, remaining)
        # A request already waiting when the upstream is found hung gives up on it.
        if not idempotent or up.hung is None:
            return await exchange
        task = asyncio.ensure_future(exchange)
        hung = up.hung
        try:
            await asyncio.wait((task, hung), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()  # it finishes cancelling on its own; the callback collects its outcome
        task.add_done_callback(_consume)
        raise _Hung

    async def _exchange(
        self, url: str, method: str, headers: list[tuple[str, str]], body: bytes, total: float
    ) -> _Reply:
        import aiohttp
        from yarl import URL

        timeout = aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout_s)
        async with self._session.request(
            method,
            URL(url, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
            timeout=timeout,
        ) as resp:
            data = await resp.read()
            out = [
                (k.lower(), v)
                for k, v in resp.raw_headers
                if k.lower().decode() not in _RESPONSE_DROP
            ]
            if method == "HEAD":  # no body, but the length a GET would have had
                out += [
                    (k.lower(), v) for k, v in resp.raw_headers if k.lower() == b"content-length"
                ]
            return _Reply(resp.status, out, data)

    def _forward_headers(self, scope: Scope) -> tuple[str, list[tuple[str, str]]]:
        """(request id, headers to send upstream): hop-by-hop ones dropped, forwarding added."""
        raw = scope["headers"]
        named_hops = set()
        for k, v in raw:
            if k == b"connection":
                named_hops.update(t.strip().lower() for t in v.decode("latin-1").split(","))
        request_id = ""
        forwarded_for = ""
        host = ""
        out: list[tuple[str, str]] = []
        for k, v in raw:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            if name == "x-request-id":
                request_id = value.strip()
                continue
            if name == "x-forwarded-for":
                forwarded_for = value
                continue
            if name == "host":
                host = value
            if name in _REQUEST_DROP or name in named_hops:
                continue
            out.append((name, value))
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex  # one id for every attempt, so logs line up
        client = scope.get("client")
        if client:
            forwarded_for = f"{forwarded_for}, {client[0]}" if forwarded_for else str(client[0])
        out.append(("x-request-id", request_id))
        if forwarded_for:
            out.append(("x-forwarded-for", forwarded_for))
        if host:
            out.append(("x-forwarded-host", host))
        out.append(("x-forwarded-proto", scope.get("scheme", "http")))
        return request_id, out

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | int | None:
        """The body; or its size (negative: "at least") when over the limit; None if gone."""
        declared = None
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit():
                declared = int(v)
        if declared is not None and declared > self.max_body_bytes:
            if declared <= DRAIN_CAP_BYTES and not await _drain(receive, declared):
                return None
            return declared
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:  # ends with the last chunk, or a disconnect
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.max_body_bytes:
                if more and not await _drain(receive, DRAIN_CAP_BYTES - size):
                    return None
                return -size
            chunks.append(chunk)
        return b"".join(chunks)


async def _drain(receive: Receive, budget: int) -> bool:
    """Read and drop the rest of a body (up to `budget` bytes); False if the client left."""
    while budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return True


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _target(scope: Scope) -> str:
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def _retry_code(reply: _Reply) -> str | None:
    """Why an answer should be tried elsewhere (idempotent requests only), or None."""
    if reply.status == 502:
        return "bad_gateway"
    if reply.status != 503:
        return None
    try:
        code = json.loads(reply.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    # An overloaded upstream's 503 goes back to the client with its Retry-After: sending it
    # to the others would only spread the overload.
    return code if code in _NOT_PROCESSED_CODES else None


def _never_reached(exc: BaseException) -> bool:
    """The request cannot have reached the upstream: no connection was ever made."""
    import aiohttp

    connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", ())
    return isinstance(exc, aiohttp.ClientConnectorError) or (
        bool(connect_timeout) and isinstance(exc, connect_timeout)
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _send(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, method: str = "GET"
) -> None:
    if method != "HEAD" or not any(k == b"content-length" for k, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await _send(send, status, [(b"content-type", b"application/json"), *(headers or [])], body)


# --- running it -------------------------------------------------------------------------------


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def make_server(app: Any, graceful_s: float = GRACEFUL_SHUTDOWN_S) -> Any:
    """A uvicorn.Server for `app` on httptools (when installed), draining on shutdown."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            http="httptools" if _available("httptools") else "auto",
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(graceful_s),
            server_header=False,  # the upstream's answers already went through a server
        )
    )


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when installed (faster sockets), else asyncio's own loop."""
    factory = None
    if _available("uvloop"):
        import uvloop

        factory = uvloop.new_event_loop
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
        return
    if factory is not None:  # pragma: no cover (3.10)
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main)  # pragma: no cover


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` on SIGTERM/SIGINT instead of dying.

    uvicorn replaces these handlers while it serves (that is its graceful drain) and re-raises
    the signal to ours when it is done, which then just calls `callback` once more.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        callback()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_gateway(
    upstreams: list[str],
    host: str,
    port: int,
    max_body_bytes: int,
    console: Console | None = None,
    *,
    metrics_label: str = "zone",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Serve a gateway on host:port in front of `upstreams` until Ctrl-C or SIGTERM (drains)."""
    from lmforge.serve.server import bind_socket

    console = console or Console()
    urls = parse_upstreams(upstreams)
    sock = bind_socket(host, port)
    try:
        gateway = Gateway(
            urls, max_body_bytes=max_body_bytes, metrics_label=metrics_label, timeout_s=timeout_s
        )
        server = make_server(gateway)
        bound = sock.getsockname()[1]

        async def main() -> None:
            await server.serve(sockets=[sock])

        def stop() -> None:
            server.should_exit = True

        shown = f"[{host}]" if ":" in host else host
        console.print(
            f"gateway on http://{shown}:{bound} -> {len(urls)} upstream(s): {', '.join(urls)}  "
            "(GET /gateway/healthz; Ctrl-C drains and stops)",
            highlight=False,
        )
        with on_stop_signals(stop):
            run_async(main())
        if not server.started:
            raise GatewayError(f"the gateway on {host}:{bound} did not start; see the log above")
        console.print("gateway stopped")
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lmforge.serve.gateway --upstream URL ... --port P`, as `lmforge gateway`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmforge.serve.gateway")
    parser.add_argument("--upstream", action="append", default=[], metavar="URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000)
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    console = Console()
    try:
        run_gateway(
            args.upstream,
            args.host,
            args.port,
            args.max_body_bytes,
            console,
            timeout_s=args.timeout_s,
        )
    except LmforgeError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
