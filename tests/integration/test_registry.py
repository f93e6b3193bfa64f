"""The etcd subnet manager against a real etcd 3.4: config, leases, reservations, watch."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

import pytest
from support.etcd import EtcdServer, etcdctl, put_v2, start_etcd

from pyflannel.adapters.etcd import Compacted, EtcdClient, EtcdError, _b64
from pyflannel.adapters.etcd_keeper import LeaseKeeper
from pyflannel.adapters.etcd_watcher import LeaseWatcher
from pyflannel.adapters.registry import ConfigEvent, ConfigNotFound, LeaseEvent, SubnetRegistry
from pyflannel.core.config import parse_config
from pyflannel.core.errors import ConfigError, OutOfSubnets
from pyflannel.core.lease import LeaseAttrs, VxlanData

T = TypeVar("T")
PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'
REF_VALUE = '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:94"}}'  # noqa: E501


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def attrs(ip: str, mac: str = "0e:00:00:00:00:01") -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(ip), backend_type="vxlan", backend_data=VxlanData(1, mac).to_json())


def client_for(server: EtcdServer, **kw: Any) -> EtcdClient:
    return EtcdClient([server.client_url], **kw)


def test_lease_written_byte_compatible_with_flanneld(etcd: EtcdServer) -> None:
    async def go() -> tuple[str, int]:
        async with client_for(etcd) as c:
            await c.put(f"{PREFIX}/config", CONFIG)
            reg = SubnetRegistry(c, PREFIX)
            lease = await reg.create_lease(IPv4Network("100.64.67.0/24"), attrs("198.18.0.11", "b6:3a:f4:a5:6f:94"))
            assert lease is not None
            ttl, granted = await c.lease_ttl(lease.lease_id)
            return ttl, granted

    ttl, granted = run(go)
    assert granted == 86400 and 86300 < ttl <= 86400
    out = etcdctl(etcd, "get", f"{PREFIX}/subnets/100.64.67.0-24", "--print-value-only", check=True).stdout
    assert out.strip() == REF_VALUE


def test_config_missing_and_v2_only_are_explained(tmp_path: Any) -> None:
    server = start_etcd(tmp_path / "v2", enable_v2=True)
    try:
        async def missing() -> str:
            async with client_for(server) as c:
                with pytest.raises(ConfigNotFound) as ei:
                    await SubnetRegistry(c, PREFIX).get_config()
                return str(ei.value)

        msg = run(missing)
        assert "missing under the v3 API" in msg and "\n" not in msg
        put_v2(server, f"{PREFIX}/config", CONFIG)
        msg = run(missing)
        assert "exists only under the v2 API" in msg
        assert "ETCDCTL_API=3 etcdctl put /coreos.com/network/config" in msg
    finally:
        server.stop()


def test_bad_config_names_field_and_value(etcd: EtcdServer) -> None:
    async def go() -> str:
        async with client_for(etcd) as c:
            await c.put(f"{PREFIX}/config", '{"Network":"100.64.0.0/16","SubnetLen":31}')
            with pytest.raises(ConfigError) as ei:
                await SubnetRegistry(c, PREFIX).get_config()
            return str(ei.value)

    msg = run(go)
    assert "SubnetLen must be less than /31" in msg and "31" in msg and "/coreos.com/network/config" in msg


def _keeper(reg: SubnetRegistry, ip: str, seed: int = 1) -> LeaseKeeper:
    return LeaseKeeper(reg, IPv4Address(ip), lambda: attrs(ip), renew_margin=3600, rng=random.Random(seed))


def test_acquire_renew_and_reclaim(etcd: EtcdServer) -> None:
    cfg = parse_config(CONFIG)

    async def go() -> None:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            k = _keeper(reg, "198.18.0.11")
            first = await k.acquire(cfg, None)
            assert cfg.subnet_fits(first.subnet) and first.lease_id
            # renew: keepalive keeps the key and its value, pushes expiry
            renewed = await reg.renew_lease(first)
            assert renewed is not None and renewed.subnet == first.subnet and renewed.lease_id == first.lease_id
            # reclaim by PublicIP: a restarted node (new keeper, no subnet file) gets the same subnet
            again = await _keeper(reg, "198.18.0.11", seed=99).acquire(cfg, None)
            assert again.subnet == first.subnet
            leases, _, _ = await reg.list_leases()
            assert [le.subnet for le in leases] == [first.subnet]
            # reclaim by previous subnet: the key is gone (expired), the subnet file remembers it
            await reg.delete_lease(first.subnet)
            prev = IPv4Network("100.64.200.0/24")
            third = await _keeper(reg, "198.18.0.11", seed=7).acquire(cfg, prev)
            assert third.subnet == prev
            # previous subnet taken by someone else -> a different one
            await reg.delete_lease(prev)
            other = await reg.create_lease(prev, attrs("198.18.0.99"))
            assert other is not None
            fourth = await _keeper(reg, "198.18.0.11", seed=7).acquire(cfg, prev)
            assert fourth.subnet != prev

    run(go)


def test_fifty_concurrent_acquirers_get_distinct_subnets(etcd: EtcdServer) -> None:
    # 50 nodes on a network with room for 62: races are certain, every one must be retried.
    cfg = parse_config('{"Network":"100.64.0.0/18","SubnetLen":24,"Backend":{"Type":"vxlan"}}')

    async def go() -> list[IPv4Network]:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            keepers = [_keeper(reg, f"198.18.1.{i + 1}", seed=i) for i in range(50)]
            results = await asyncio.gather(*(k.acquire(cfg, None) for k in keepers))
            leases, _, _ = await reg.list_leases()
            assert len(leases) == 50
            return [r.subnet for r in results]

    subnets = run(go)
    assert len(set(subnets)) == 50
    for a in subnets:
        assert sum(a.overlaps(b) for b in subnets) == 1


def test_out_of_subnets_is_clear(etcd: EtcdServer) -> None:
    cfg = parse_config('{"Network":"100.64.0.0/24","SubnetLen":26,"Backend":{"Type":"vxlan"}}')  # 3 usable

    async def go() -> None:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            for i in range(3):
                await _keeper(reg, f"198.18.2.{i + 1}").acquire(cfg, None)
            with pytest.raises(OutOfSubnets, match="^out of subnets$"):
                await _keeper(reg, "198.18.2.9").acquire(cfg, None)

    run(go)


def test_reservation_is_respected_and_never_gets_a_ttl(etcd: EtcdServer) -> None:
    cfg = parse_config('{"Network":"100.64.0.0/24","SubnetLen":26,"Backend":{"Type":"vxlan"}}')
    reserved = IPv4Network("100.64.0.64/26")
    etcdctl(etcd, "put", f"{PREFIX}/subnets/100.64.0.64-26", '{"PublicIP":"198.18.3.50","PublicIPv6":null}',
            check=True)

    async def go() -> None:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            got = [await _keeper(reg, f"198.18.3.{i + 1}", seed=i).acquire(cfg, reserved) for i in range(2)]
            assert reserved not in [g.subnet for g in got]  # not even as a "previous subnet"
            with pytest.raises(OutOfSubnets):
                await _keeper(reg, "198.18.3.9").acquire(cfg, None)
            owner = await _keeper(reg, "198.18.3.50").acquire(cfg, None)
            assert owner.subnet == reserved and owner.reserved
            kv = await c.get(f"{PREFIX}/subnets/100.64.0.64-26")
            assert kv is not None and kv.lease == 0  # still no TTL
            assert json.loads(kv.value)["BackendType"] == "vxlan"  # but the owner's attrs are published
            assert await reg.renew_lease(owner) == owner

    run(go)


def test_own_key_deleted_is_acquired_again(etcd: EtcdServer) -> None:
    cfg = parse_config(CONFIG)

    async def go() -> None:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            k = _keeper(reg, "198.18.0.11")
            first = await k.acquire(cfg, None)
            changed: list[IPv4Network] = []
            w = LeaseWatcher(reg, lambda: k.check_own(w.leases, w.revision))
            tasks = [asyncio.create_task(w.run()),
                     asyncio.create_task(k.run(lambda: cfg, lambda le: changed.append(le.subnet)))]
            await w.synced.wait()
            await reg.delete_lease(first.subnet)  # an operator revokes it
            for _ in range(100):
                if changed:
                    break
                await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert changed == [first.subnet]
            kv = await c.get(reg.lease_key(first.subnet))
            assert kv is not None and kv.lease != 0

    run(go)


async def _collect_events(reg: SubnetRegistry, start: int, want: int, timeout: float = 10) -> list[LeaseEvent]:
    got: list[LeaseEvent] = []

    async def consume() -> None:
        async for evs in reg.watch(start):
            got.extend(e for e in evs if isinstance(e, LeaseEvent))
            if len(got) >= want:
                return

    await asyncio.wait_for(consume(), timeout)
    return got


def test_watch_sees_txn_of_fifty_and_fifty_deletes(etcd: EtcdServer) -> None:
    async def go() -> None:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            start = (await c.get_prefix(PREFIX)).revision + 1
            keys = [reg.lease_key(IPv4Network(f"100.64.{i}.0/24")) for i in range(1, 51)]
            value = attrs("198.18.0.12").to_json()
            await c.txn({"compare": [], "success": [{"request_put": {"key": _b64(k), "value": _b64(value)}}
                                                    for k in keys], "failure": []})
            for k in keys:
                await c.delete(k)
            events = await _collect_events(reg, start, 100)
            puts = [e for e in events if e.lease is not None]
            dels = [e for e in events if e.lease is None and e.bad is None]
            assert sorted(e.key for e in puts) == sorted(keys)
            assert sorted(e.key for e in dels) == sorted(keys)
            assert len({e.revision for e in puts}) == 1  # one txn, one revision

    run(go)


def test_watcher_resyncs_after_compaction_without_losing_events(etcd: EtcdServer) -> None:
    async def go() -> None:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            changes = asyncio.Event()
            w = LeaseWatcher(reg, changes.set)
            await w.resync()
            # Changes happen while the watcher is not connected, then history is compacted.
            for i in range(1, 21):
                await reg.create_lease(IPv4Network(f"100.64.{i}.0/24"), attrs(f"198.18.4.{i}"))
            for i in range(1, 6):
                await reg.delete_lease(IPv4Network(f"100.64.{i}.0/24"))
            rev = (await c.get_prefix(PREFIX)).revision
            await c.compact(rev)
            with pytest.raises(Compacted):
                async for _ in reg.watch(w.revision):
                    pass
            task = asyncio.create_task(w.run())
            for _ in range(100):
                if len(w.leases) == 15:
                    break
                await asyncio.sleep(0.05)
            assert len(w.leases) == 15 and w.watch_restarts >= 1
            # and the resumed watch still sees new events
            await reg.create_lease(IPv4Network("100.64.99.0/24"), attrs("198.18.4.99"))
            for _ in range(100):
                if len(w.leases) == 16:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert reg.lease_key(IPv4Network("100.64.99.0/24")) in w.leases

    run(go)


def test_corrupt_values_are_skipped_and_named(etcd: EtcdServer) -> None:
    etcdctl(etcd, "put", f"{PREFIX}/subnets/100.64.9.0-24", "not json", check=True)
    etcdctl(etcd, "put", f"{PREFIX}/subnets/garbage", REF_VALUE, check=True)
    etcdctl(etcd, "put", f"{PREFIX}/subnets/100.64.10.0-24", REF_VALUE, check=True)

    async def go() -> None:
        async with client_for(etcd) as c:
            leases, bad, _ = await SubnetRegistry(c, PREFIX).list_leases()
            assert [str(le.subnet) for le in leases] == ["100.64.10.0/24"]
            assert sorted(b.key.rsplit("/", 1)[-1] for b in bad) == ["100.64.9.0-24", "garbage"]
            assert all(b.key in b.reason for b in bad)

    run(go)


def test_config_events_come_through_the_same_watch(etcd: EtcdServer) -> None:
    async def go() -> None:
        async with client_for(etcd) as c:
            reg = SubnetRegistry(c, PREFIX)
            start = (await c.get_prefix(PREFIX)).revision + 1
            await c.put(f"{PREFIX}/config", CONFIG)
            async for evs in reg.watch(start):
                if not evs:  # the "created" acknowledgement
                    continue
                assert evs and isinstance(evs[0], ConfigEvent) and evs[0].text == CONFIG
                break

    run(go)


def test_tls_with_client_certs(etcd_tls: Any, tmp_path: Any) -> None:
    from support.etcd import make_other_ca

    from pyflannel.adapters.etcd import TLSConfig

    server, tls = etcd_tls
    good = TLSConfig(str(tls.ca), str(tls.client_cert), str(tls.client_key))

    async def ok() -> None:
        async with EtcdClient([server.client_url], tls=good) as c:
            await c.put(f"{PREFIX}/config", CONFIG)
            reg = SubnetRegistry(c, PREFIX)
            assert (await reg.get_config()).network == IPv4Network("100.64.0.0/16")
            lease = await _keeper(reg, "198.18.0.11").acquire(parse_config(CONFIG), None)
            assert lease.lease_id

    run(ok)
    wrong = TLSConfig(str(make_other_ca(tmp_path / "other")), str(tls.client_cert), str(tls.client_key))

    async def bad() -> str:
        async with EtcdClient([server.client_url], tls=wrong) as c:
            with pytest.raises(EtcdError) as ei:
                await c.get(f"{PREFIX}/config")
            return str(ei.value)

    msg = run(bad)
    assert "TLS handshake failed" in msg and "certificate verify failed" in msg and server.client_url in msg


def test_auth_with_expiring_token(etcd_auth: EtcdServer) -> None:
    async def go() -> None:
        async with EtcdClient([etcd_auth.client_url], username="flannel", password="flannelpw") as c:
            await c.put(f"{PREFIX}/config", CONFIG)
            reg = SubnetRegistry(c, PREFIX)
            lease = await _keeper(reg, "198.18.0.11").acquire(parse_config(CONFIG), None)
            await asyncio.sleep(3.5)  # token TTL is 2 s
            assert await reg.renew_lease(lease) is not None
            assert (await reg.get_config()).network is not None
            with pytest.raises(EtcdError, match="permission denied"):
                await c.put("/outside/the/prefix", "x")
        async with EtcdClient([etcd_auth.client_url], username="flannel", password="wrong") as c:
            with pytest.raises(EtcdError, match="authentication"):
                await c.get(f"{PREFIX}/config")

    run(go)


def test_cluster_survives_losing_a_member(etcd_cluster: Any) -> None:
    cfg = parse_config(CONFIG)

    async def go() -> None:
        async with EtcdClient(etcd_cluster.endpoints) as c:
            await c.put(f"{PREFIX}/config", CONFIG)
            reg = SubnetRegistry(c, PREFIX)
            first = await _keeper(reg, "198.18.0.11").acquire(cfg, None)
            etcd_cluster.members[0].kill()  # the endpoint the client is using
            await asyncio.sleep(1.0)
            again = await _keeper(reg, "198.18.0.11").acquire(cfg, None)
            assert again.subnet == first.subnet
            second = await _keeper(reg, "198.18.0.12").acquire(cfg, None)
            assert second.subnet != first.subnet
            assert c.endpoint != etcd_cluster.members[0].client_url

    run(go)


def test_listing_in_pages_is_one_snapshot(etcd: EtcdServer) -> None:
    """prefix_pages asks for the next page before handing this one over; the pages still come from one
    revision, a key written between two pages is not in the listing, and stopping early leaves no request."""
    async def go() -> None:
        async with client_for(etcd) as c:
            base = f"{PREFIX}/pages/"
            for i in range(25):
                await c.put(f"{base}k{i:02d}", f"v{i}")
            full = await c.get_prefix(base, page=10)
            assert [kv.key for kv in full.kvs] == [f"{base}k{i:02d}" for i in range(25)]
            pages: list[list[str]] = []
            revs = set()
            async for kvs, rev in c.prefix_pages(base, page=10):
                pages.append([kv.key for kv in kvs])
                revs.add(rev)
                if len(pages) == 1:
                    await c.put(f"{base}k99", "late")  # after the snapshot's revision
            assert [len(p) for p in pages] == [10, 10, 5]
            assert revs == {full.revision}
            assert f"{base}k99" not in sum(pages, [])
            stream = c.prefix_pages(base, page=10)
            async for _ in stream:
                break  # the second page's request is in flight: closing cancels it
            await stream.aclose()  # type: ignore[attr-defined]
            assert len((await c.get_prefix(base)).kvs) == 26

    run(go)
