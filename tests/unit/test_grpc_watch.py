"""The gRPC watch's protobuf decoding and HTTP/2 framing, fed by hand-built server bytes (no socket)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.adapters import grpc_watch as gw
from pyflannel.adapters.etcd import KeyValue, WatchEvent

# --- protobuf helpers for building server messages ----------------------------------------------


def vint(num: int, value: int) -> bytes:
    return gw._varint(num << 3) + gw._varint(value)


def blob(num: int, value: bytes) -> bytes:
    return gw._field_bytes(num, value)


def kv(key: bytes, value: bytes, mod: int, create: int = 0, version: int = 1, lease: int = 0) -> bytes:
    return (blob(1, key) + vint(2, create) + vint(3, mod) + vint(4, version) + blob(5, value)
            + vint(6, lease))


def response(*, rev: int = 0, created: bool = False, canceled: bool = False, compact: int = 0,
             reason: str = "", events: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    out = blob(1, vint(1, 77) + vint(3, rev)) + vint(2, 0)
    if created:
        out += vint(3, 1)
    if canceled:
        out += vint(4, 1)
    if compact:
        out += vint(5, compact)
    if reason:
        out += blob(6, reason.encode())
    for ev in events:
        out += blob(11, ev)
    return out


def test_watch_response_decodes_every_field_the_watcher_reads() -> None:
    put = vint(1, 0) + blob(2, kv(b"/k/a", b'{"x":1}', mod=12, create=10, version=3, lease=0x7FFF_0000_1234))
    delete = vint(1, 1) + blob(2, kv(b"/k/b", b"", mod=13)) + blob(3, kv(b"/k/b", b"old", mod=9))
    # Fields this client does not know (a fixed64, a fixed32, a string) are skipped.
    unknown = b"\x99\x06" + bytes(8) + b"\xa5\x06" + bytes(4) + blob(90, b"later")
    r = gw.decode_watch_response(response(rev=13, created=True, events=[put, delete]) + unknown)
    assert r.header_revision == 13 and r.created and not r.canceled and r.compact_revision == 0
    assert r.events == (
        WatchEvent("PUT", KeyValue("/k/a", b'{"x":1}', 10, 12, 3, 0x7FFF_0000_1234)),
        WatchEvent("DELETE", KeyValue("/k/b", b"", 0, 13, 1, 0), KeyValue("/k/b", b"old", 0, 9, 1, 0)),
    )


def test_negative_int64_and_cancel_fields() -> None:
    r = gw.decode_watch_response(response(rev=-1, canceled=True, compact=5, reason="etcdserver: mvcc: required "
                                                                                    "revision has been compacted"))
    assert r.header_revision == -1 and r.canceled and r.compact_revision == 5
    assert r.cancel_reason.endswith("compacted")


def test_a_known_field_with_another_wire_type_is_skipped() -> None:
    # version (4) as bytes and value (5) as a varint: neither is taken, and the fields after them still are.
    odd = blob(1, b"/k") + blob(4, b"\x07") + vint(5, 9) + vint(3, 21)
    r = gw.decode_watch_response(response(rev=21, events=[vint(1, 1) + blob(2, odd)]))
    assert r.events == (WatchEvent("DELETE", KeyValue("/k", b"", 0, 21, 0, 0)),)


@pytest.mark.parametrize("bad", [
    blob(11, b"\x12\x10abc"),  # a field longer than its message
    b"\x08",  # a tag with no value
    b"\x0b",  # wire type 3 (groups) is not used by etcd
    b"\x08" + b"\xff" * 11,  # a varint over 10 bytes
])
def test_bad_protobuf_is_a_value_error(bad: bytes) -> None:
    with pytest.raises((ValueError, IndexError)):
        gw.decode_watch_response(bad)


def fields(buf: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int, int]]:
    """(number, wire type, value or start, end) of each varint or length-delimited field: enough to read
    back what the client encodes."""
    end = len(buf) if end is None else end
    out = []
    pos = start
    while pos < end:
        tag, pos = gw._read_varint(buf, pos)
        if tag & 7 == 0:
            val, pos = gw._read_varint(buf, pos)
            out.append((tag >> 3, 0, val, 0))
        else:
            assert tag & 7 == 2
            n, pos = gw._read_varint(buf, pos)
            out.append((tag >> 3, 2, pos, pos + n))
            pos += n
    assert pos == end
    return out


def test_create_request_encoding() -> None:
    msg = gw.create_request(b"/coreos.com/network/", b"/coreos.com/network0", 300)
    outer = fields(msg)
    assert [(n, w) for n, w, _a, _b in outer] == [(1, 2)]
    inner = fields(msg, outer[0][2], outer[0][3])
    assert msg[inner[0][2]:inner[0][3]] == b"/coreos.com/network/"
    assert msg[inner[1][2]:inner[1][3]] == b"/coreos.com/network0"
    assert (inner[2][0], inner[2][2]) == (3, 300)


def test_request_frames_carry_the_headers_and_one_message() -> None:
    token = "t" * 300  # longer than an HPACK one-byte string length
    raw = gw.request_frames("127.0.0.1:2379", "https", b"MSG", token)
    assert raw.startswith(gw.PREFACE)
    frames = list(_split(raw[len(gw.PREFACE):]))
    assert [(t, f, s) for t, f, s, _p in frames] == [
        (gw.SETTINGS, 0, 0), (gw.WINDOW_UPDATE, 0, 0), (gw.HEADERS, gw.END_HEADERS, 1), (gw.DATA, 0, 1)]
    headers = dict(hpack.Decoder().decode(frames[2][3]))
    assert headers == {":method": "POST", ":scheme": "https", ":path": "/etcdserverpb.Watch/Watch",
                       ":authority": "127.0.0.1:2379", "content-type": "application/grpc", "te": "trailers",
                       "token": token}
    assert frames[3][3] == b"\x00\x00\x00\x00\x03MSG"
    assert struct.unpack(">I", frames[1][3])[0] + 65535 == gw.MAX_WINDOW


def _split(raw: bytes) -> Any:
    pos = 0
    while pos < len(raw):
        length = int.from_bytes(raw[pos:pos + 3], "big")
        yield raw[pos + 3], raw[pos + 4], int.from_bytes(raw[pos + 5:pos + 9], "big"), raw[pos + 9:pos + 9 + length]
        pos += 9 + length


# --- the stream, fed by hand --------------------------------------------------------------------


class Writer:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, b: bytes) -> None:
        self.data += b

    def close(self) -> None:
        self.closed = True


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return gw._frame(ftype, flags, stream, payload)


def grpc_message(body: bytes, compressed: bool = False) -> bytes:
    return bytes([compressed]) + struct.pack(">I", len(body)) + body


def server_bytes(enc: hpack.Encoder, *parts: bytes) -> bytes:
    head = frame(gw.SETTINGS, 0, 0, struct.pack(">HI", 3, 100))
    return head + b"".join(parts)


def headers_frames(enc: hpack.Encoder, headers: list[tuple[str, str]], end_stream: bool = False,
                   split: bool = False) -> bytes:
    block = enc.encode(headers)
    end = gw.END_STREAM if end_stream else 0
    if not split:
        return frame(gw.HEADERS, gw.END_HEADERS | end, 1, block)
    return frame(gw.HEADERS, end, 1, block[:3]) + frame(gw.CONTINUATION, gw.END_HEADERS, 1, block[3:])


OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


async def _drive(raw: bytes, chunk: int = 1 << 20) -> tuple[list[gw.WatchResponse], BaseException | None, Writer]:
    reader = asyncio.StreamReader()
    for i in range(0, len(raw), chunk):
        reader.feed_data(raw[i:i + chunk])
    reader.feed_eof()
    writer = Writer()
    stream = gw.GrpcWatchStream(reader, writer)  # type: ignore[arg-type]
    got: list[gw.WatchResponse] = []
    err: BaseException | None = None
    try:
        async for r in stream.responses():
            got.append(r)
    except gw.GrpcWatchError as e:
        err = e
    return got, err, writer


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_stream_reassembles_frames_and_messages_at_any_read_size(chunk: int) -> None:
    enc = hpack.Encoder()
    m1 = grpc_message(response(rev=5, created=True))
    m2 = grpc_message(response(rev=6, events=[vint(1, 0) + blob(2, kv(b"/k", b"v" * 40, mod=6))]))
    padded = bytes([3]) + m2[:10] + b"\x00\x00\x00"
    raw = server_bytes(
        enc,
        frame(gw.PING, 0, 0, b"12345678"),
        headers_frames(enc, OK_HEADERS, split=True),
        frame(gw.DATA, 0, 1, m1),
        frame(gw.DATA, gw.PADDED, 1, padded),  # one message over two DATA frames, the first padded
        frame(gw.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)),
        frame(gw.DATA, 0, 1, m2[10:]),
        headers_frames(enc, [("grpc-status", "9"), ("grpc-message", "etcdserver%3A no leader")], end_stream=True),
    )
    got, err, writer = asyncio.run(_drive(raw, chunk))
    assert [r.header_revision for r in got] == [5, 6]
    assert got[1].events[0].kv == KeyValue("/k", b"v" * 40, 0, 6, 1, 0)
    assert str(err) == "gRPC status 9: etcdserver: no leader"
    # Both acks went out: SETTINGS first (it came first), then the PING with its payload.
    assert writer.data == frame(gw.SETTINGS, gw.ACK, 0) + frame(gw.PING, gw.ACK, 0, b"12345678")


def test_trailers_only_answer_is_an_error_with_its_status() -> None:
    enc = hpack.Encoder()
    raw = server_bytes(enc, headers_frames(enc, OK_HEADERS + [("grpc-status", "16"),
                                                              ("grpc-message", "etcdserver: invalid auth token")],
                                           end_stream=True))
    got, err, _w = asyncio.run(_drive(raw))
    assert got == [] and str(err) == "gRPC status 16: etcdserver: invalid auth token"


@pytest.mark.parametrize(("parts", "text"), [
    (lambda enc: [frame(gw.GOAWAY, 0, 0, struct.pack(">II", 1, 2) + b"too_many_pings")],
     "server is going away (HTTP/2 error 2: too_many_pings)"),
    (lambda enc: [headers_frames(enc, OK_HEADERS), frame(gw.RST_STREAM, 0, 1, struct.pack(">I", 8))],
     "server reset the stream (HTTP/2 error 8)"),
    (lambda enc: [headers_frames(enc, [(":status", "503"), ("content-type", "text/plain")])],
     "HTTP 503 for the Watch RPC"),
    (lambda enc: [headers_frames(enc, OK_HEADERS), frame(gw.DATA, 0, 1, grpc_message(b"x", compressed=True))],
     "server sent a compressed gRPC message without being asked to"),
    (lambda enc: [headers_frames(enc, OK_HEADERS), frame(gw.DATA, 0, 1, grpc_message(b"\x08"))],
     "bad WatchResponse"),
    (lambda enc: [headers_frames(enc, OK_HEADERS), frame(gw.DATA, gw.END_STREAM, 1, b"")],
     "server ended the stream without trailers"),
    (lambda enc: [headers_frames(enc, OK_HEADERS)], "server closed the connection"),
    (lambda enc: [headers_frames(enc, OK_HEADERS), frame(gw.DATA, gw.PADDED, 1, b"\x09abc")],
     "padding longer than the frame"),
])
def test_stream_failures_say_what_happened(parts: Any, text: str) -> None:
    enc = hpack.Encoder()
    _got, err, _w = asyncio.run(_drive(server_bytes(enc, *parts(enc))))
    assert err is not None and text in str(err)


def test_an_http1_answer_is_not_http2() -> None:
    _got, err, _w = asyncio.run(_drive(b"HTTP/1.1 505 HTTP Version Not Supported\r\n\r\n"))
    assert isinstance(err, gw.NotHTTP2)
    enc = hpack.Encoder()
    _got, err, _w = asyncio.run(_drive(server_bytes(enc, headers_frames(enc, [(":status", "200"),
                                                                              ("content-type", "text/html")]))))
    assert isinstance(err, gw.NotHTTP2) and "text/html" in str(err)


def test_windows_are_given_back_after_a_refill_worth_of_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gw, "WINDOW_REFILL", 150)
    enc = hpack.Encoder()
    msgs = [grpc_message(response(rev=i, events=[vint(1, 0) + blob(2, kv(b"/k", b"v" * 50, mod=i))]))
            for i in range(1, 4)]
    raw = server_bytes(enc, headers_frames(enc, OK_HEADERS), *(frame(gw.DATA, 0, 1, m) for m in msgs))
    got, _err, writer = asyncio.run(_drive(raw))
    assert len(got) == 3 and all(len(m) == 83 for m in msgs)
    updates = [(s, struct.unpack(">I", p)[0]) for t, _f, s, p in _split(writer.data) if t == gw.WINDOW_UPDATE]
    # Two frames (166 bytes) pass the 150-byte mark and are given back on both windows; the third waits.
    assert updates == [(0, 166), (1, 166)]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 299), st.binary(max_size=4))
def test_any_bytes_decode_or_fail_with_a_value_error(noise: bytes, at: int, patch: bytes) -> None:
    """A corrupted message becomes GrpcWatchError in _messages (which catches these two), never a crash."""
    good = response(rev=9, events=[vint(1, 0) + blob(2, kv(b"/k/a", b"v", mod=9))])
    mutated = good[:at % (len(good) + 1)] + patch + good[at % (len(good) + 1) + len(patch):]
    for buf in (noise, mutated):
        with contextlib.suppress(ValueError, IndexError):
            gw.decode_watch_response(buf)
