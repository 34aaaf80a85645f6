import asyncio

import pytest

from lmforge.bench.http1 import Http1Connection, ProtocolError


async def _serve(responses: list[bytes], close_after: set[int] = frozenset()):
    """A scripted server: answers the i-th request with responses[i]; records the requests."""
    seen: list[bytes] = []
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                seen.append(head + await reader.readexactly(length))
                writer.write(responses[len(seen) - 1])
                await writer.drain()
                if len(seen) - 1 in close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, seen, lambda: connections


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_keep_alive_content_length_and_chunked_bodies():
    async def main():
        server, port, seen, connections = await _serve(
            [
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 422 Unprocessable\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            ]
        )
        conn = Http1Connection(f"http://127.0.0.1:{port}/v1/predict")
        statuses = [await conn.post_json(b'{"texts": ["a"]}') for _ in range(3)]
        await conn.close()
        server.close()
        return statuses, seen, connections()

    statuses, seen, connections = _run(main())
    assert statuses == [200, 422, 200]
    assert connections == 1  # one connection reused for all three requests
    assert seen[0].startswith(b"POST /v1/predict HTTP/1.1\r\n")
    assert b"Content-Length: 16\r\n" in seen[0] and seen[0].endswith(b'{"texts": ["a"]}')


def test_reconnects_after_connection_close():
    async def main():
        server, port, _, connections = await _serve(
            [
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ],
            close_after={0},
        )
        conn = Http1Connection(f"http://127.0.0.1:{port}/x")
        statuses = [await conn.post_json(b"{}"), await conn.post_json(b"{}")]
        await conn.close()
        server.close()
        return statuses, connections()

    assert _run(main()) == ([200, 200], 2)


def test_garbage_answer_is_a_protocol_error():
    async def main():
        server, port, _, _ = await _serve([b"SSH-2.0-OpenSSH\r\n\r\n"])
        conn = Http1Connection(f"http://127.0.0.1:{port}/")
        try:
            await conn.post_json(b"{}")
        finally:
            await conn.close()
            server.close()

    with pytest.raises(ProtocolError, match=r"not an HTTP/1\.x status line"):
        _run(main())


def test_rejects_non_http_urls():
    with pytest.raises(ValueError, match="expected an http"):
        Http1Connection("ftp://example.com/")


def test_a_dropped_idle_connection_is_retried_once():
    async def main():
        # The server answers, then silently closes (as on a keep-alive timeout).
        server, port, _, connections = await _serve(
            [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"] * 2, close_after={0}
        )
        conn = Http1Connection(f"http://127.0.0.1:{port}/")
        first = await conn.post_json(b"{}")
        await asyncio.sleep(0.05)  # let the close arrive
        second = await conn.post_json(b"{}")
        await conn.close()
        server.close()
        return first, second, connections()

    assert _run(main()) == (200, 200, 2)
