"""etcd's Watch RPC over gRPC, with HTTP/2 framing and the four protobuf messages it needs done here.

Why: etcd's JSON gateway turns each watch event into JSON on the server, and it reaches us 240-320 us
after the same event on a gRPC stream (bench/watch_latency.py). That is about a tenth of a put->route,
and Go flanneld reads gRPC. Everything else (unary calls, auth, listings) stays on the gateway, where a
few hundred microseconds do not matter.

Why not grpcio: it forks badly next to pyroute2's netns helpers and costs more resident memory than the
whole daemon has to spare (docs/design-notes.md, "etcd"). A watch is one stream on one connection, so
the client needs little HTTP/2: the preface and SETTINGS, one HEADERS and one DATA frame out, then
DATA in, the trailers, PING and SETTINGS acks, and window updates. hpack (the python-hyper codec) encodes
our headers and decodes the server's, which Go compresses with Huffman coding and a dynamic table.

The stream yields the same ``WatchBatch`` objects as the gateway path, so nothing above the client can
tell which transport carried an event. If an endpoint does not speak HTTP/2 (TLS without "h2" in ALPN,
or an HTTP/1.1-only proxy in front of etcd) ``NotHTTP2`` says so and the caller uses the gateway.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import hpack

from pyflannel.adapters import http1
from pyflannel.adapters.etcd import KeyValue, WatchEvent

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = (1 << 31) - 1
#: Give the window back once this much has been read; far above any listing etcd sends at once.
WINDOW_REFILL = 1 << 30
#: A gRPC message above this is refused (etcd's own client takes up to 2 GiB; 64 MiB is ~100,000 leases).
MAX_MESSAGE = 64 << 20
METHOD = "/etcdserverpb.Watch/Watch"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
STREAM = 1  # the only stream this client opens

_HDR = struct.Struct(">I")  # 24-bit length + type packed by hand; see _frame


class GrpcWatchError(Exception):
    """The stream failed; the text says how (``EtcdClient`` adds the endpoint)."""


class NotHTTP2(GrpcWatchError):
    """The endpoint answered, but not in HTTP/2: use the JSON gateway there."""


# --- protobuf: the wire format, for the few fields etcd's Watch uses ----------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 fields go on the wire as their two's complement
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_bytes(num: int, value: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def create_request(key: bytes, range_end: bytes, start_revision: int) -> bytes:
    """A WatchRequest holding one WatchCreateRequest (key, range_end, start_revision)."""
    create = _field_bytes(1, key) + _field_bytes(2, range_end)
    if start_revision:
        create += _varint(3 << 3) + _varint(start_revision)
    return _field_bytes(1, create)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _skip(buf: bytes, pos: int, wt: int, num: int) -> int:
    """The position after a field's value, for a field of wire type ``wt`` whose tag ended at ``pos``."""
    if wt == 0:
        return _read_varint(buf, pos)[1]
    if wt == 2:
        n, pos = _read_varint(buf, pos)
        return pos + n
    if wt == 1:
        return pos + 8
    if wt == 5:
        return pos + 4
    raise ValueError(f"field {num} has wire type {wt}")


def _bounds(buf: bytes, pos: int, end: int, num: int) -> tuple[int, int]:
    n, pos = _read_varint(buf, pos)
    stop = pos + n
    if stop > end:
        raise ValueError(f"field {num} runs past the end of its message")
    return pos, stop


def _key_value(buf: bytes, pos: int, end: int) -> KeyValue:
    key = value = b""
    create_rev = mod_rev = version = lease = 0
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_varint(buf, pos)
        num = tag >> 3
        if tag & 7 == 0 and 2 <= num <= 6 and num != 5:
            v, pos = _read_varint(buf, pos)
            v = _signed(v)
            if num == 3:
                mod_rev = v
            elif num == 2:
                create_rev = v
            elif num == 4:
                version = v
            else:
                lease = v
        elif tag & 7 == 2 and (num == 1 or num == 5):
            a, pos = _bounds(buf, pos, end, num)
            if num == 1:
                key = buf[a:pos]
            else:
                value = buf[a:pos]
        else:
            pos = _skip(buf, pos, tag & 7, num)
    if pos != end:
        raise ValueError("message ends inside a field")
    return KeyValue(key.decode(errors="replace"), value, create_rev, mod_rev, version, lease)


def _event(buf: bytes, pos: int, end: int) -> WatchEvent:
    ev_type = "PUT"
    kv = prev = None
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if num == 1 and wt == 0:
            t, pos = _read_varint(buf, pos)
            ev_type = "DELETE" if t == 1 else "PUT"
        elif (num == 2 or num == 3) and wt == 2:
            a, stop = _bounds(buf, pos, end, num)
            if num == 2:
                kv = _key_value(buf, a, stop)
            else:
                prev = _key_value(buf, a, stop)
            pos = stop
        else:
            pos = _skip(buf, pos, wt, num)
    if pos != end:
        raise ValueError("message ends inside a field")
    return WatchEvent(ev_type, kv or KeyValue("", b""), prev)


@dataclass(frozen=True)
class WatchResponse:
    header_revision: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    events: tuple[WatchEvent, ...]


def decode_watch_response(buf: bytes) -> WatchResponse:
    """etcdserverpb.WatchResponse, keeping what the watcher reads. Raises ValueError (or IndexError) on bad bytes.

    Each message is walked once, without building a list of its fields: this runs once per watch event,
    and its cost is paid again, several times over, when the caches are cold (docs/design-notes.md). A
    known field with an unexpected wire type is skipped like an unknown one.
    """
    header_rev = compact = 0
    created = canceled = False
    reason = ""
    events: list[WatchEvent] = []
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if wt == 2 and (num == 11 or num == 1 or num == 6):
            a, stop = _bounds(buf, pos, end, num)
            if num == 11:
                events.append(_event(buf, a, stop))
            elif num == 1:
                header_rev = _revision(buf, a, stop)
            else:
                reason = buf[a:stop].decode(errors="replace")
            pos = stop
        elif wt == 0 and 3 <= num <= 5:
            v, pos = _read_varint(buf, pos)
            if num == 3:
                created = bool(v)
            elif num == 4:
                canceled = bool(v)
            else:
                compact = _signed(v)
        else:
            pos = _skip(buf, pos, wt, num)
    if pos != end:
        raise ValueError("message ends inside a field")
    return WatchResponse(header_rev, created, canceled, compact, reason, tuple(events))


def _revision(buf: bytes, pos: int, end: int) -> int:
    """ResponseHeader.revision (field 3)."""
    rev = 0
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag == 3 << 3:
            v, pos = _read_varint(buf, pos)
            rev = _signed(v)
        else:
            pos = _skip(buf, pos, tag & 7, tag >> 3)
    if pos != end:
        raise ValueError("message ends inside a field")
    return rev


# --- HTTP/2 ------------------------------------------------------------------------------------


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _HDR.pack(len(payload) << 8 | ftype) + bytes([flags]) + _HDR.pack(stream) + payload


def request_frames(authority: str, scheme: str, message: bytes, token: str | None) -> bytes:
    """The client preface and everything the watch sends: one write, before any reply is read."""
    settings = struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0) + struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE,
                                                                          MAX_WINDOW)
    headers = [(":method", "POST"), (":scheme", scheme), (":path", METHOD), (":authority", authority),
               ("content-type", "application/grpc"), ("te", "trailers")]
    if token is not None:
        headers.append(("token", token))
    block = hpack.Encoder().encode(headers)  # a fresh table per connection: the server's starts empty too
    # The stream stays open for sending: a half-close (END_STREAM) would end etcd's watch.
    body = b"\x00" + _HDR.pack(len(message)) + message
    return (PREFACE + _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, _HDR.pack(MAX_WINDOW - 65535))
            + _frame(HEADERS, END_HEADERS, STREAM, block) + _frame(DATA, 0, STREAM, body))


def _strip_padding(flags: int, payload: bytes) -> bytes:
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise GrpcWatchError("bad HTTP/2 frame: padding longer than the frame")
        return payload[1:len(payload) - payload[0]]
    return payload


def grpc_status_text(headers: dict[str, str]) -> str | None:
    """None for grpc-status 0, else "code N: message" (the message percent-decoded, as gRPC sends it)."""
    status = headers.get("grpc-status")
    if status is None:
        return "stream ended without a grpc-status"
    if status == "0":
        return None
    return f"gRPC status {status}: {unquote(headers.get('grpc-message', ''))}".rstrip(": ")


class GrpcWatchStream:
    """One Watch RPC on its own connection. ``responses()`` yields each decoded WatchResponse."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = hpack.Decoder()
        self._message = b""
        self._unacked = 0
        self._got_headers = False

    def close(self) -> None:
        self._writer.close()

    async def _read(self) -> bytes:
        try:
            return await http1.read_some(self._reader)
        except http1.HTTPError as e:
            raise GrpcWatchError(str(e)) from e

    async def _frames(self) -> AsyncIterator[tuple[int, int, int, bytes]]:
        buf = b""
        first = True
        while True:
            data = await self._read()
            if first:
                first = False
                # An HTTP/2 server's first frame is SETTINGS on stream 0; anything else (an HTTP/1.1 status
                # line, say) is not HTTP/2.
                if data[:5] == b"HTTP/" or (len(data) >= 4 and data[3] != SETTINGS):
                    raise NotHTTP2(f"the server did not answer in HTTP/2 (it sent {data[:24]!r})")
            buf = buf + data if buf else data
            pos = 0
            n = len(buf)
            while n - pos >= 9:
                head = _HDR.unpack_from(buf, pos)[0]
                length, ftype = head >> 8, head & 0xFF
                if n - pos < 9 + length:
                    break
                flags = buf[pos + 4]
                stream = _HDR.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
                yield ftype, flags, stream, buf[pos + 9:pos + 9 + length]
                pos += 9 + length
            buf = buf[pos:]

    async def responses(self) -> AsyncGenerator[WatchResponse, None]:
        block = b""
        block_flags = 0
        async for ftype, flags, stream, payload in self._frames():
            if ftype == DATA:
                if stream != STREAM:
                    continue
                self._credit(len(payload))
                for msg in self._messages(_strip_padding(flags, payload)):
                    yield msg
                if flags & END_STREAM:
                    raise GrpcWatchError("server ended the stream without trailers")
            elif ftype in (HEADERS, CONTINUATION):
                if ftype == HEADERS:
                    payload = _strip_padding(flags, payload)
                    if flags & PRIORITY_FLAG:
                        payload = payload[5:]
                    block, block_flags = payload, flags
                else:
                    block += payload
                if not (flags & END_HEADERS):
                    continue
                try:
                    headers = {k: v for k, v in self._decoder.decode(block)}
                except hpack.HPACKError as e:
                    raise GrpcWatchError(f"bad HTTP/2 headers: {e}") from None
                if stream == STREAM:
                    self._on_headers(headers, bool(block_flags & END_STREAM))
            elif ftype == SETTINGS:
                if not flags & ACK:
                    self._writer.write(_frame(SETTINGS, ACK, 0))
            elif ftype == PING:
                if not flags & ACK:
                    self._writer.write(_frame(PING, ACK, 0, payload))
            elif ftype == RST_STREAM and stream == STREAM:
                code = _HDR.unpack_from(payload)[0] if len(payload) >= 4 else -1
                raise GrpcWatchError(f"server reset the stream (HTTP/2 error {code})")
            elif ftype == GOAWAY:
                code = _HDR.unpack_from(payload, 4)[0] if len(payload) >= 8 else -1
                debug = payload[8:].decode(errors="replace")
                raise GrpcWatchError(f"server is going away (HTTP/2 error {code}{': ' + debug if debug else ''})")
            # PRIORITY, WINDOW_UPDATE (we send nothing more), PUSH_PROMISE (disabled) and unknown types: ignored

    def _on_headers(self, headers: dict[str, str], end: bool) -> None:
        if not self._got_headers:  # the response's own headers: is this a gRPC answer at all?
            self._got_headers = True
            status = headers.get(":status", "")
            if status != "200":
                raise GrpcWatchError(f"HTTP {status or '(no status)'} for the Watch RPC")
            ctype = headers.get("content-type", "")
            if not ctype.startswith("application/grpc"):
                raise NotHTTP2(f"the Watch RPC answered with content-type {ctype!r}, not gRPC")
        if end:  # trailers (or a trailers-only answer): the RPC is over
            text = grpc_status_text(headers)
            raise GrpcWatchError(text or "server ended the watch")

    def _credit(self, n: int) -> None:
        # Flow control: the windows start at 2^31-1 (SETTINGS and WINDOW_UPDATE in the preface); give back
        # what was read once it is a gigabyte, so a long-lived watch never stalls.
        self._unacked += n
        if self._unacked >= WINDOW_REFILL:
            inc = _HDR.pack(self._unacked)
            self._writer.write(_frame(WINDOW_UPDATE, 0, 0, inc) + _frame(WINDOW_UPDATE, 0, STREAM, inc))
            self._unacked = 0

    def _messages(self, data: bytes) -> list[WatchResponse]:
        buf = self._message + data if self._message else data
        out = []
        pos = 0
        while len(buf) - pos >= 5:
            if buf[pos]:
                raise GrpcWatchError("server sent a compressed gRPC message without being asked to")
            n = _HDR.unpack_from(buf, pos + 1)[0]
            if n > MAX_MESSAGE:
                raise GrpcWatchError(f"gRPC message of {n} bytes is over the {MAX_MESSAGE} limit")
            if len(buf) - pos - 5 < n:
                break
            try:
                out.append(decode_watch_response(buf[pos + 5:pos + 5 + n]))
            except (ValueError, IndexError) as e:
                raise GrpcWatchError(f"bad WatchResponse: {e}") from None
            pos += 5 + n
        self._message = buf[pos:]
        return out


async def open_watch(url: str, *, tls: ssl.SSLContext | None, connect_timeout: float,
                     socket_options: Sequence[tuple[int, int, int]], message: bytes,
                     token: str | None) -> GrpcWatchStream:
    """Connect to the endpoint ``url`` (http:// or https://) and start the Watch RPC with ``message``.

    ``tls`` is required for https and must offer "h2" by ALPN (``h2_context``).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ctx = tls if parts.scheme == "https" else None
    try:
        reader, writer = await http1.open_stream(host, port, ctx, connect_timeout, socket_options)
    except http1.HTTPError as e:
        raise GrpcWatchError(str(e)) from e
    if ctx is not None:
        sslobj = writer.get_extra_info("ssl_object")
        proto = sslobj.selected_alpn_protocol() if sslobj is not None else None
        if proto != "h2":
            writer.close()
            raise NotHTTP2(f"{host}:{port} did not offer HTTP/2 in the TLS handshake (ALPN {proto!r})")
    writer.write(request_frames(parts.netloc, parts.scheme, message, token))
    return GrpcWatchStream(reader, writer)



def h2_context(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Offer HTTP/2 by ALPN on ``ctx``, which must be a context of its own.

    Go's TLS server picks its own first choice among what the client offers, so a context shared with
    the HTTP/1.1 client would get h2 for the gateway's requests too.
    """
    # http/1.1 as the second choice: a server without HTTP/2 then still completes the handshake, and
    # open_watch reports NotHTTP2 instead of a TLS failure.
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx
