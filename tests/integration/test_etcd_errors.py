"""The etcd client's error counter (flannel_etcd_errors) counts every failed request and watch, against a
real etcd 3.4: refused endpoints, a failover, an error answer, a broken watch; compaction is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from support.etcd import EtcdServer, free_port

from pyflannel.adapters.etcd import Compacted, EtcdClient, EtcdError, transport_warning, uses_system_ca
from pyflannel.daemon.metrics import etcd_errors


def test_refused_endpoints_count_each_attempt() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def go() -> int:
        async with EtcdClient([dead], rng=random.Random(1)) as c:
            try:
                await c.get("/x")
            except EtcdError:
                pass
            else:
                raise AssertionError("a dead endpoint answered")
            return c.errors

    assert asyncio.run(go()) == 2  # two rounds over one endpoint


def test_failover_counts_the_dead_member_only(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def go() -> tuple[int, int]:
        async with EtcdClient([dead, etcd.client_url]) as c:
            await c.put("/pyflannel-test/a", "1")
            first = c.errors
            await c.get("/pyflannel-test/a")  # now on the live member
            return first, c.errors

    assert asyncio.run(go()) == (1, 1)


def test_error_answer_and_broken_watch_count_compaction_does_not(etcd: EtcdServer) -> None:
    async def go() -> dict[str, int]:
        async with EtcdClient([etcd.client_url]) as c:
            out = {"start": c.errors}
            with contextlib.suppress(EtcdError):
                await c.call("/v3/kv/range", {"key": "not base64!"})  # the gateway answers 400
            out["after_bad_request"] = c.errors
            rev = await c.put("/pyflannel-test/w", "1")
            await c.put("/pyflannel-test/w", "2")
            await c.compact(rev + 1)
            try:
                async for _ in c.watch("/pyflannel-test/", rev):
                    break
            except Compacted:
                pass
            out["after_compacted_watch"] = c.errors
            return out

    got = asyncio.run(go())
    assert got["start"] == 0
    assert got["after_bad_request"] >= 1
    assert got["after_compacted_watch"] == got["after_bad_request"]


def test_watch_stream_to_dead_endpoint_counts() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def go() -> int:
        async with EtcdClient([dead]) as c:
            try:
                async for _ in c.watch("/x/", 1):
                    pass
            except EtcdError:
                pass
            return c.errors

    assert asyncio.run(go()) == 1


class _Holder:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def test_metric_reads_the_client_where_the_daemon_keeps_it() -> None:
    client = _Holder(errors=7)
    assert etcd_errors(_Holder(subnet_manager=_Holder(client=client))) == 7
    assert etcd_errors(_Holder(subnet_manager=_Holder(registry=_Holder(client=client)))) == 7
    assert etcd_errors(_Holder(client=client)) == 7
    assert etcd_errors(_Holder(watcher=_Holder(errors=3))) == 3
    assert etcd_errors(_Holder()) == 0


def test_https_with_system_ca_is_not_called_plain() -> None:
    assert transport_warning(["https://198.18.0.1:2379"]) == ""
    assert uses_system_ca(["https://198.18.0.1:2379"])
    w = transport_warning(["https://198.18.0.1:2379", "http://198.18.0.2:2379"])
    assert w == "etcd connection is not secured with TLS: http://198.18.0.2:2379 (use https:// endpoints)"
