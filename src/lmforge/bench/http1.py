"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the load generator.

A load generator must be cheaper than the server it measures. On a 2-core machine httpx's
AsyncClient spent ~3 ms of CPU per request and capped a local server at ~280 req/s that
serves ~600 req/s to a plain client, so the benchmark measured the client. This client does
only what the benchmark needs: one connection per worker, POST a JSON body, read the status
and the whole body (Content-Length or chunked), reconnect when the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client can read."""


class ServerClosedError(ProtocolError):
    """The server closed the connection before sending a response."""


class Http1Connection:
    """One keep-alive connection to the server of `url`; `post_json` sends to its path."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s)://host[:port]/path URL, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.path = parts.path or "/"
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = f"{netloc}:{self.port}"
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post_json(self, body: bytes) -> int:
        """Send one request and read the full response; returns the status code."""
        return await asyncio.wait_for(self._exchange(body), self.timeout_s)

    async def _exchange(self, body: bytes) -> int:
        reused = self._writer is not None
        try:
            return await self._send(body)
        except (ServerClosedError, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server dropped an idle keep-alive connection: one retry on a fresh one.
            return await self._send(body)

    async def _send(self, body: bytes) -> int:
        if self._writer is None:
            context = ssl.create_default_context() if self.tls else None
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=context, limit=MAX_HEADER_BYTES
            )
        assert self._reader is not None
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self._writer.write(head.encode("ascii") + body)
            await self._writer.drain()
            status, keep_alive = await self._read_response(self._reader)
        except BaseException:
            await self.close()  # a half-read response leaves the connection unusable
            raise
        if not keep_alive:
            await self.close()
        return status

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, bool]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ServerClosedError("the server closed the connection without answering") from exc
        lines = raw.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(status_line[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await _skip_chunked(reader)
        elif "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        elif status not in (204, 304) and not 100 <= status < 200:
            await reader.read()  # body runs until the server closes
            return status, False
        keep_alive = headers.get("connection", "").lower() != "close"
        return status, keep_alive and status_line[0] != "HTTP/1.0"

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            # Already reset by the peer: nothing left to release.
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def _skip_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return
        await reader.readexactly(size + 2)
