"""The etcd watch over gRPC (pyflannel/adapters/grpc_watch.py) against a real etcd: it gives exactly what
the JSON gateway gives, over plain TCP, TLS and with auth, and an endpoint behind an HTTP/1.1-only proxy
is watched through the gateway instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from support.etcd import EtcdServer, TLSFiles, free_port, make_other_ca

from pyflannel.adapters.etcd import Compacted, EtcdClient, EtcdError, TLSConfig, WatchEvent, _b64

PREFIX = "/coreos.com/network/"
T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(fn(), 60))  # type: ignore[arg-type]


async def _collect(c: EtcdClient, start: int, count: int, prefix: str = PREFIX) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with contextlib.aclosing(c.watch(prefix, start)) as it:
        async for batch in it:
            out.extend(batch.events)
            if len(out) >= count:
                return out
    raise AssertionError("the watch ended")


async def _writes(c: EtcdClient) -> tuple[int, int]:
    """A mix of writes: plain puts, a binary and a 200 kB value, one txn of two puts, a delete.

    Returns (first revision, number of events).
    """
    first = await c.put(PREFIX + "subnets/100.64.1.0-24", '{"PublicIP":"198.18.0.1"}')
    await c.put(PREFIX + "subnets/100.64.2.0-24", bytes(range(256)))
    await c.put(PREFIX + "subnets/100.64.3.0-24", "x" * 200_000)
    await c.txn({"success": [
        {"request_put": {"key": _b64(PREFIX + "subnets/100.64.4.0-24"), "value": _b64("a")}},
        {"request_put": {"key": _b64(PREFIX + "subnets/100.64.5.0-24"), "value": _b64("b")}},
    ]})
    await c.delete(PREFIX + "subnets/100.64.1.0-24")
    await c.put("/outside/the/prefix", "not watched")
    return first, 6


def test_grpc_watch_gives_what_the_gateway_gives(etcd: EtcdServer) -> None:
    async def go() -> tuple[list[WatchEvent], list[WatchEvent], set[str]]:
        async with EtcdClient([etcd.client_url]) as writer:
            first, n = await _writes(writer)
        async with EtcdClient([etcd.client_url]) as g, EtcdClient([etcd.client_url], grpc_watch=False) as j:
            via_grpc = await _collect(g, first, n)
            via_gateway = await _collect(j, first, n)
            return via_grpc, via_gateway, g._gateway_only

    via_grpc, via_gateway, fell_back = run(go)
    assert fell_back == set()
    assert via_grpc == via_gateway
    assert [e.type for e in via_grpc] == ["PUT"] * 5 + ["DELETE"]
    assert via_grpc[1].kv.value == bytes(range(256)) and len(via_grpc[2].kv.value) == 200_000
    assert via_grpc[3].kv.mod_revision == via_grpc[4].kv.mod_revision  # one txn, one revision


def test_grpc_watch_sees_live_events_and_compaction(etcd: EtcdServer) -> None:
    async def go() -> tuple[list[WatchEvent], int]:
        async with EtcdClient([etcd.client_url]) as c:
            rev = await c.put(PREFIX + "config", "{}")
            task = asyncio.create_task(_collect(c, rev + 1, 2))
            await asyncio.sleep(0.3)
            await c.put(PREFIX + "subnets/100.64.9.0-24", "live")
            await c.delete(PREFIX + "subnets/100.64.9.0-24")
            events = await task
            await c.compact(await c.put(PREFIX + "config", "{ }"))
            with pytest.raises(Compacted) as ei:
                await _collect(c, rev, 1)
            return events, ei.value.revision

    events, compacted_at = run(go)
    assert [(e.type, e.kv.key) for e in events] == [("PUT", PREFIX + "subnets/100.64.9.0-24"),
                                                    ("DELETE", PREFIX + "subnets/100.64.9.0-24")]
    assert compacted_at > 0


def test_grpc_watch_over_tls(etcd_tls: tuple[EtcdServer, TLSFiles]) -> None:
    server, files = etcd_tls
    tls = TLSConfig(str(files.ca), str(files.client_cert), str(files.client_key))

    async def go() -> tuple[list[WatchEvent], set[str]]:
        async with EtcdClient([server.client_url], tls=tls) as c:
            first, n = await _writes(c)
            # The gateway's requests still work after the watch set up its own h2 context.
            events = await _collect(c, first, n)
            assert await c.get(PREFIX + "subnets/100.64.4.0-24") is not None
            return events, c._gateway_only

    events, fell_back = run(go)
    assert fell_back == set() and len(events) == 6


def test_grpc_watch_names_a_failed_tls_handshake(etcd_tls: tuple[EtcdServer, TLSFiles], tmp_path: Any) -> None:
    server, files = etcd_tls
    wrong = TLSConfig(str(make_other_ca(tmp_path / "other")), str(files.client_cert), str(files.client_key))

    async def go() -> str:
        async with EtcdClient([server.client_url], tls=wrong) as c:
            with pytest.raises(EtcdError) as ei:
                await _collect(c, 1, 1)
            return str(ei.value)

    msg = run(go)
    assert server.client_url in msg and "watch: TLS handshake failed" in msg and "certificate verify failed" in msg


def test_grpc_watch_with_auth_and_an_expired_token(etcd_auth: EtcdServer) -> None:
    async def go() -> tuple[int, str]:
        async with EtcdClient([etcd_auth.client_url], username="flannel", password="flannelpw") as c:
            rev = await c.put(PREFIX + "config", "{}")
            assert len(await _collect(c, rev, 1)) == 1
            await asyncio.sleep(3.5)  # the fixture's simple tokens expire after 2 s
            # The first watch after expiry may be refused; the refusal drops the token, so the next one
            # authenticates again (what LeaseWatcher's retry does).
            tries = 0
            while True:
                tries += 1
                try:
                    await _collect(c, rev, 1)
                    break
                except EtcdError as e:
                    assert "invalid auth token" in str(e) and tries == 1, e
            with pytest.raises(EtcdError) as ei:
                await _collect(c, 1, 1, prefix="/outside/")
            return tries, str(ei.value)

    tries, denied = run(go)
    assert tries <= 2
    assert "permission denied" in denied and etcd_auth.client_url in denied


async def _http1_only_proxy(target_port: int) -> tuple[asyncio.Server, int, list[bytes]]:
    """A TCP proxy to etcd that, like an HTTP/1.1-only load balancer, answers an HTTP/2 preface with 505."""
    seen: list[bytes] = []

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readexactly(4)
        seen.append(head)
        if head == b"PRI ":
            w.write(b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n\r\n")
            await w.drain()
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", target_port)
        uw.write(head)
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, port, seen


def test_an_http1_only_endpoint_is_watched_through_the_gateway(etcd: EtcdServer, caplog: Any) -> None:
    etcd_port = int(etcd.client_url.rsplit(":", 1)[1])

    async def go() -> tuple[int, set[str], list[bytes], str]:
        server, port, seen = await _http1_only_proxy(etcd_port)
        url = f"http://127.0.0.1:{port}"
        try:
            async with EtcdClient([url]) as c:
                first, n = await _writes(c)
                events = await _collect(c, first, n)
                again = await _collect(c, first, n)  # remembered: no second HTTP/2 attempt
                assert events == again
                return len(events), c._gateway_only, seen, url
        finally:
            server.close()

    with caplog.at_level("INFO", logger="pyflannel.adapters.etcd"):
        n, fell_back, seen, url = run(go)
    assert n == 6 and fell_back == {url}
    assert seen.count(b"PRI ") == 1
    assert any("watching it through the JSON gateway" in r.getMessage() for r in caplog.records)


def test_a_dead_endpoint_fails_the_grpc_watch_with_its_name() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def go() -> str:
        async with EtcdClient([dead]) as c:
            with pytest.raises(EtcdError) as ei:
                await _collect(c, 1, 1)
            return str(ei.value)

    msg = run(go)
    assert dead in msg and "watch" in msg and "refused" in msg.lower()


def test_etcd_stopping_ends_the_grpc_watch_with_an_error(etcd: EtcdServer) -> None:
    async def go() -> str:
        async with EtcdClient([etcd.client_url]) as c:
            rev = await c.put(PREFIX + "config", "{}")
            task = asyncio.create_task(_collect(c, rev + 1, 1))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(etcd.stop)
            with pytest.raises(EtcdError) as ei:
                await task
            return str(ei.value)

    msg = run(go)
    assert etcd.client_url in msg and "watch" in msg
