"""pyflannel.adapters.http1 against small HTTP servers on loopback: framing, reuse, and each failure's text.

The etcd tests exercise the client against real etcd; these pin the edge cases etcd rarely produces on
demand: a server that closes mid-body, one that answers garbage, one that never answers, connection
reuse across requests, and a chunked stream split at awkward places.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pyflannel.adapters import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def client(timeout: float = 2.0) -> http1.HttpClient:
    return http1.HttpClient(verify=False, timeout=timeout, connect_timeout=1.0)


def test_post_json_and_connection_reused() -> None:
    connections = 0
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                req = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen.append(req)
            body = b'{"ok":true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
        writer.close()

    async def main() -> None:
        server, url = await _serve(handler)
        c = client()
        try:
            for _ in range(3):
                r = await c.post(f"{url}/v3/kv/range", json={"key": "YQ=="}, headers={"Authorization": "tok"})
                assert (r.status_code, r.json()) == (200, {"ok": True})
        finally:
            await c.aclose()
            server.close()

    asyncio.run(main())
    assert connections == 1, "keep-alive: three requests on one connection"
    first = seen[0].decode()
    assert first.startswith("POST /v3/kv/range HTTP/1.1\r\n")
    assert "Authorization: tok\r\n" in first and first.endswith('{"key":"YQ=="}')


def test_chunked_stream_lines_split_anywhere() -> None:
    lines = [b'{"result":{"created":true}}', b'{"result":{"events":[{"kv":{"key":"YQ=="}}]}}']
    payload = b"\n".join(lines) + b"\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), 7):  # chunks that cut lines (and JSON) in the middle
            part = payload[i:i + 7]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> list[str]:
        server, url = await _serve(handler)
        c = client()
        try:
            async with c.stream("POST", f"{url}/v3/watch", json={}) as r:
                assert r.status_code == 200
                return [line async for line in r.aiter_lines()]
        finally:
            await c.aclose()
            server.close()

    assert asyncio.run(main()) == [x.decode() for x in lines]


def test_error_status_body_returned() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        body = b'{"error":"etcdserver: no leader","code":14}'
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def main() -> http1.Response:
        server, url = await _serve(handler)
        c = client()
        try:
            return await c.post(f"{url}/v3/kv/put", json={})
        finally:
            await c.aclose()
            server.close()

    r = asyncio.run(main())
    assert r.status_code == 503 and r.json()["error"] == "etcdserver: no leader"


@pytest.mark.parametrize(
    ("reply", "exc", "text"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial", http1.ProtocolError,
         "server closed the connection"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", http1.ProtocolError, "bad HTTP response"),
        (None, http1.TimeoutException, "no response within 0.3s"),
    ],
    ids=["closed-mid-body", "not-http", "silent"],
)
def test_failures_are_http_errors_with_text(reply: bytes | None, exc: type[Exception], text: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if reply is None:
            await asyncio.sleep(5)
        else:
            writer.write(reply)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server, url = await _serve(handler)
        c = client(timeout=0.3)
        try:
            with pytest.raises(exc, match=text):
                await c.post(f"{url}/v3/kv/range", json={})
        finally:
            await c.aclose()
            server.close()

    asyncio.run(main())


def test_refused_is_connect_error_naming_the_address() -> None:
    async def main() -> None:
        server, url = await _serve(lambda r, w: asyncio.sleep(0))
        server.close()
        await server.wait_closed()
        c = client()
        with pytest.raises(http1.ConnectError, match=r"^cannot connect to 127\.0\.0\.1:\d+: Connection refused$"):
            await c.post(f"{url}/x", json={})
        await c.aclose()

    asyncio.run(main())
