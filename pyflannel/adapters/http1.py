"""A small HTTP/1.1 client for etcd's JSON gateway: h11 for the protocol, asyncio streams for the I/O.

Why not httpx: importing it (with httpcore, anyio, idna, certifi) adds about 18 MB of resident memory
to the daemon, a third of its footprint with 5000 peers, and every watch event went through five
layers of async iterators. etcd needs little: keep-alive POSTs with a JSON body, one GET, and a
streamed response for the watch. h11 (the sans-I/O parser httpx itself is built on) keeps the
message framing correct (chunked and Content-Length bodies, connection reuse rules); this module only
moves bytes, bounds waits and reuses idle connections.

Errors are ``HTTPError`` subclasses whose text says what failed (``ConnectError`` for refused,
unreachable and TLS handshake failures, with the ``ssl`` error as ``__cause__``; ``TimeoutException``;
``ProtocolError`` for a peer that closes or sends garbage).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11

READ_SIZE = 1 << 16
#: Idle connections kept per host; etcd's client opens at most a few requests at once.
MAX_IDLE = 4


class HTTPError(Exception):
    """Any failure to get a response (not an HTTP error status: those are returned)."""


class ConnectError(HTTPError):
    pass


class TimeoutException(HTTPError):
    pass


class ProtocolError(HTTPError):
    pass


@dataclass
class Response:
    status_code: int
    content: bytes = b""

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(eq=False)  # identity: connections are kept in sets
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    def close(self) -> None:
        self.writer.close()


async def open_stream(host: str, port: int, ctx: ssl.SSLContext | None, connect_timeout: float,
                      socket_options: Sequence[tuple[int, int, int]]) -> tuple[asyncio.StreamReader,
                                                                               asyncio.StreamWriter]:
    """A TCP (or, with ``ctx``, TLS) connection with our socket options; ConnectError says why not."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host if ctx else None, limit=READ_SIZE
            )
    except TimeoutError:
        raise ConnectError(f"connect to {host}:{port} timed out after {connect_timeout:g}s") from None
    except ssl.SSLError as e:
        raise ConnectError(f"TLS handshake with {host}:{port} failed: {e}") from e
    except OSError as e:
        # asyncio's text is "Connect call failed (addr)"; the errno's own text says why.
        why = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
        raise ConnectError(f"cannot connect to {host}:{port}: {why}") from e
    sock = writer.get_extra_info("socket")
    if sock is not None:
        for level, opt, val in socket_options:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, opt, val)
    return reader, writer


async def read_some(reader: asyncio.StreamReader) -> bytes:
    """The next bytes from the peer; ProtocolError when the connection is gone.

    A TimeoutError from the read is the kernel's ETIMEDOUT (TCP keepalive or TCP_USER_TIMEOUT gave up on a
    silent peer), so it means a lost connection, not one of our own timeouts.
    """
    try:
        data = await reader.read(READ_SIZE)
    except TimeoutError as e:
        raise ProtocolError(f"connection lost: {os.strerror(e.errno or errno.ETIMEDOUT)}") from e
    except ssl.SSLError as e:
        raise ProtocolError(f"TLS error: {e}") from e
    except OSError as e:
        raise ProtocolError(f"connection lost: {e.strerror or e}") from e
    if not data:
        raise ProtocolError("server closed the connection")
    return data


class StreamResponse:
    """A response whose body is read as it arrives (``aiter_lines``) or at once (``aread``)."""

    def __init__(self, client: HttpClient, conn: _Conn, status_code: int) -> None:
        self._client = client
        self._conn = conn
        self.status_code = status_code
        self._done = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        while not self._done:
            ev = await self._client._next_event(self._conn)
            if isinstance(ev, h11.Data):
                yield bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                self._done = True

    async def aread(self) -> bytes:
        return b"".join([c async for c in self._chunks()])

    async def aiter_lines(self) -> AsyncIterator[str]:
        buf = b""
        async for chunk in self._chunks():
            buf += chunk
            if b"\n" in buf:
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
        if buf:
            yield buf.decode(errors="replace")


class HttpClient:
    """Keep-alive HTTP/1.1 over TCP or TLS.

    ``timeout`` bounds a whole unary request, and the connect and response head of a streamed one; the
    body of a stream is waited for as long as the TCP keepalive says the peer is there.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool,
        timeout: float,
        connect_timeout: float,
        socket_options: Sequence[tuple[int, int, int]] = (),
    ) -> None:
        self._verify = verify
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._socket_options = tuple(socket_options)
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._open: set[_Conn] = set()

    # --- connections ---------------------------------------------------------------------

    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        ctx: ssl.SSLContext | None = None
        if scheme == "https":
            ctx = self._verify if isinstance(self._verify, ssl.SSLContext) else ssl.create_default_context()
        reader, writer = await open_stream(host, port, ctx, self._connect_timeout, self._socket_options)
        conn = _Conn(reader, writer)
        self._open.add(conn)
        return conn

    async def _get_conn(self, key: tuple[str, str, int]) -> _Conn:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            self._discard(conn)
        return await self._connect(*key)

    def _release(self, key: tuple[str, str, int], conn: _Conn) -> None:
        h = conn.h
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        self._open.discard(conn)
        conn.close()

    async def aclose(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()

    # --- protocol ------------------------------------------------------------------------

    async def _next_event(self, conn: _Conn) -> Any:
        while True:
            try:
                ev = conn.h.next_event()
            except h11.RemoteProtocolError as e:
                raise ProtocolError(f"bad HTTP response: {e}") from None
            if ev is not h11.NEED_DATA:
                return ev
            # Waits are bounded by the caller's asyncio.timeout, which arrives here as a cancellation.
            conn.h.receive_data(await read_some(conn.reader))

    async def _send(self, conn: _Conn, method: str, url: str, host: str, body: bytes | None,
                    headers: dict[str, str] | None) -> None:
        hdrs = [("Host", host), ("Accept", "application/json")]
        if body is not None:
            hdrs += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        hdrs += list((headers or {}).items())
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            data = conn.h.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
            if body:
                data += conn.h.send(h11.Data(data=body)) or b""
            data += conn.h.send(h11.EndOfMessage()) or b""
            conn.writer.write(data)
            await conn.writer.drain()
        except h11.LocalProtocolError as e:
            raise ProtocolError(f"cannot send request: {e}") from None
        except OSError as e:
            raise ProtocolError(f"connection lost: {e.strerror or e}") from e

    async def _start(self, method: str, url: str, body: Any,
                     headers: dict[str, str] | None) -> tuple[tuple[str, str, int], _Conn, int]:
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectError(f"bad URL {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        conn = await self._get_conn(key)
        try:
            await self._send(conn, method, url, parts.netloc, payload, headers)
            while True:
                ev = await self._next_event(conn)
                if isinstance(ev, h11.Response):
                    return key, conn, ev.status_code
                if isinstance(ev, h11.ConnectionClosed):
                    raise ProtocolError("server closed the connection")
                # h11.InformationalResponse (1xx): keep reading
        except BaseException:
            self._discard(conn)
            raise

    async def request(self, method: str, url: str, *, json: Any = None,  # noqa: A002 (httpx's name)
                      headers: dict[str, str] | None = None) -> Response:
        try:
            async with asyncio.timeout(self._timeout):
                key, conn, status = await self._start(method, url, json, headers)
                resp = StreamResponse(self, conn, status)
                try:
                    content = await resp.aread()
                except BaseException:
                    self._discard(conn)
                    raise
                self._release(key, conn)
                return Response(status, content)
        except TimeoutError:
            raise TimeoutException(f"{method} {url}: no response within {self._timeout:g}s") from None

    async def post(self, url: str, *, json: Any = None,  # noqa: A002
                   headers: dict[str, str] | None = None) -> Response:
        return await self.request("POST", url, json=json, headers=headers)

    async def get(self, url: str, *, headers: dict[str, str] | None = None) -> Response:
        return await self.request("GET", url, headers=headers)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, *, json: Any = None,  # noqa: A002
                     headers: dict[str, str] | None = None) -> AsyncIterator[StreamResponse]:
        """A response read as it arrives. The connection is never reused: leaving the block closes it."""
        try:
            async with asyncio.timeout(self._timeout):
                _key, conn, status = await self._start(method, url, json, headers)
        except TimeoutError:
            raise TimeoutException(f"{method} {url}: no response within {self._timeout:g}s") from None
        try:
            yield StreamResponse(self, conn, status)
        finally:
            self._discard(conn)
