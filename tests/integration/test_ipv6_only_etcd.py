"""IPv6-only leases (EnableIPv4=false, issue 13) against a real etcd: acquire, renew, watch, reservations.

The keys are ``<prefix>/subnets/<v6>-<len6>`` and every node publishes PublicIP 0.0.0.0, so the keeper
must find its own lease by PublicIPv6. Runs on etcd 3.4 and 3.6 (tests/integration/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import TypeVar

import pytest
from support.etcd import EtcdServer, etcdctl

from pyflannel.adapters.etcd import EtcdClient
from pyflannel.adapters.etcd_keeper import LeaseKeeper
from pyflannel.adapters.etcd_watcher import LeaseWatcher
from pyflannel.adapters.registry import SubnetRegistry
from pyflannel.cli.flannelctl import main
from pyflannel.core.config import parse_config
from pyflannel.core.lease import LeaseAttrs, VxlanData

T = TypeVar("T")
PREFIX = "/pyfl-v6only/network"
CONFIG = ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd64:0:6::/56","IPv6SubnetLen":64,'
          '"Backend":{"Type":"vxlan"}}')
CFG = parse_config(CONFIG)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def attrs6(ip6: str, mac: str = "0e:00:00:00:06:01") -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(0), IPv6Address(ip6), "vxlan", None, VxlanData(1, mac).to_json())


def keeper(reg: SubnetRegistry, ip6: str, seed: int = 1) -> LeaseKeeper:
    return LeaseKeeper(reg, IPv4Address(0), lambda: attrs6(ip6), renew_margin=3600, rng=random.Random(seed),
                       public_ipv6=IPv6Address(ip6))


def ctl(capsys: pytest.CaptureFixture[str], server: EtcdServer, *argv: str) -> tuple[int, str, str]:
    rc = main([f"-etcd-endpoints={server.client_url}", f"-etcd-prefix={PREFIX}", *argv], {})
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_acquire_renew_and_reclaim_a_v6_only_lease(etcd: EtcdServer) -> None:
    async def go() -> None:
        async with EtcdClient([etcd.client_url]) as c:
            await c.put(f"{PREFIX}/config", CONFIG)
            reg = SubnetRegistry(c, PREFIX)
            first = await keeper(reg, "fd18::11").acquire(CFG, None)
            assert first.subnet is None and first.subnet6 is not None and first.lease_id
            assert first.subnet6.subnet_of(IPv6Network("fd64:0:6::/56")) and first.subnet6.prefixlen == 64
            key = f"{PREFIX}/subnets/{first.subnet6.network_address.compressed}-64"
            kv = await c.get(key)
            assert kv is not None and kv.lease == first.lease_id
            assert kv.value.decode() == ('{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::11","BackendType":"vxlan",'
                                         '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:01"}}')
            ttl, granted = await c.lease_ttl(first.lease_id)
            assert granted == 86400 and 86300 < ttl <= 86400
            renewed = await reg.renew_lease(first)
            assert renewed is not None and (renewed.subnet6, renewed.lease_id) == (first.subnet6, first.lease_id)
            # a second node (also PublicIP 0.0.0.0) gets another subnet, not ours
            other = await keeper(reg, "fd18::12", seed=first.lease_id % 97).acquire(CFG, None)
            assert other.subnet6 != first.subnet6
            # a restart (new keeper, no subnet file) finds our lease by PublicIPv6
            again = await keeper(reg, "fd18::11", seed=5).acquire(CFG, None)
            assert again.subnet6 == first.subnet6
            leases, bad, _ = await reg.list_leases()
            assert bad == [] and sorted(str(le.subnet6) for le in leases) == sorted(
                [str(first.subnet6), str(other.subnet6)])
            # the key expired: FLANNEL_IPV6_SUBNET from subnet.env brings the same subnet back
            await reg.delete_lease(None, first.subnet6)
            back = await keeper(reg, "fd18::11", seed=77).acquire(CFG, None, first.subnet6)
            assert back.subnet6 == first.subnet6 and back.lease_id != first.lease_id

    run(go)


def test_watch_and_own_key_deleted(etcd: EtcdServer) -> None:
    async def go() -> None:
        async with EtcdClient([etcd.client_url]) as c:
            reg = SubnetRegistry(c, PREFIX)
            k = keeper(reg, "fd18::11")
            first = await k.acquire(CFG, None)
            changed: list[IPv6Network | None] = []
            w = LeaseWatcher(reg, lambda: k.check_own(w.leases, w.revision))
            tasks = [asyncio.create_task(w.run()),
                     asyncio.create_task(k.run(lambda: CFG, lambda le: changed.append(le.subnet6)))]
            await w.synced.wait()
            peer = f"{PREFIX}/subnets/fd64:0:6:42::-64"
            await c.put(peer, attrs6("fd18::12").to_json())
            await c.put(f"{PREFIX}/subnets/fd64:0:6:43::1-64", attrs6("fd18::13").to_json())  # host bits: junk
            for _ in range(100):
                if "fd64:0:6:42::-64" in {key.rsplit("/", 1)[-1] for key in w.leases}:
                    break
                await asyncio.sleep(0.05)
            got = {key.rsplit("/", 1)[-1]: le for key, le in w.leases.items()}
            assert got["fd64:0:6:42::-64"].attrs.public_ipv6 == IPv6Address("fd18::12")
            assert got["fd64:0:6:42::-64"].subnet is None
            assert not any("43" in key for key in got)
            await reg.delete_lease(None, first.subnet6)  # an operator revokes ours
            for _ in range(100):
                if changed:
                    break
                await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert changed == [first.subnet6]
            kv = await c.get(reg.lease_key(None, first.subnet6))
            assert kv is not None and kv.lease != 0

    run(go)


def test_flannelctl_on_a_v6_only_network(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    bad = CONFIG.replace('{"Type":"vxlan"}', '{"Type":"wireguard","Mode":"ipv4"}')
    rc, _, err = ctl(capsys, etcd, "config", "set", bad)
    assert rc == 1 and err.strip().endswith("invalid config: wireguard Mode ipv4 needs EnableIPv4 (EnableIPv4=false)")
    assert "\n" not in err.strip()
    rc, out, err = ctl(capsys, etcd, "config", "set", CONFIG)
    assert rc == 0 and "Go flanneld cannot run IPv6-only in etcd mode" in err
    assert ("IPv6-only (EnableIPv4=false): IPv6Network fd64:0:6::/56, IPv6SubnetLen 64, IPv6SubnetMin fd64:0:6:1::, "
            "IPv6SubnetMax fd64:0:6:ff:: (255 subnets), backend vxlan") in out, out
    rc, out, err = ctl(capsys, etcd, "config", "validate")
    assert rc == 0, err
    rc, out, _ = ctl(capsys, etcd, "config", "get", "--json")
    eff = json.loads(out)["effective"]
    assert (eff["Network"], eff["EnableIPv4"], eff["IPv6Network"], eff["IPv6Subnets"]) == (None, False,
                                                                                            "fd64:0:6::/56", 255)
    # a reservation of a v6-only key: no etcd lease, PublicIP 0.0.0.0, the node's PublicIPv6
    rc, out, err = ctl(capsys, etcd, "reserve", "fd64:0:6:9::/64", "--public-ip", "fd18::50")
    key = f"{PREFIX}/subnets/fd64:0:6:9::-64"
    assert (rc, out) == (0, f"reserved fd64:0:6:9::/64 for fd18::50 ({key}, no TTL)\n"), err
    kvs = json.loads(etcdctl(etcd, "get", key, "-w", "json", check=True).stdout)["kvs"]
    assert "lease" not in kvs[0] or kvs[0]["lease"] == 0
    assert etcdctl(etcd, "get", key, "--print-value-only", check=True).stdout.strip() == \
        '{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::50"}'
    rc, _, err = ctl(capsys, etcd, "reserve", "100.64.9.0/24", "--public-ip", "198.18.0.50")
    assert rc == 1 and "is an IPv4 subnet, but the network is IPv6-only" in err and "\n" not in err.strip()

    async def node() -> None:
        async with EtcdClient([etcd.client_url]) as c:
            reg = SubnetRegistry(c, PREFIX)
            owner = await keeper(reg, "fd18::50").acquire(CFG, None)
            assert owner.subnet6 == IPv6Network("fd64:0:6:9::/64") and owner.reserved
            kv = await c.get(key)
            assert kv is not None and kv.lease == 0 and json.loads(kv.value)["BackendType"] == "vxlan"
            assert await reg.renew_lease(owner) == owner  # never given a TTL
            other = await keeper(reg, "fd18::51").acquire(CFG, None)
            assert other.subnet6 != owner.subnet6

    run(node)
    rc, out, _ = ctl(capsys, etcd, "leases", "--json")
    rows = {r["subnet6"]: r for r in json.loads(out)["leases"]}
    res = rows["fd64:0:6:9::/64"]
    assert res["subnet"] is None and res["reserved"] and res["public_ipv6"] == "fd18::50"
    assert res["vtep_mac"] == "0e:00:00:00:06:01" and res["backend_v6_data"]["VtepMAC"] == "0e:00:00:00:06:01"
    assert len(rows) == 2 and all(not r["reserved"] for s, r in rows.items() if s != "fd64:0:6:9::/64")
    rc, out, _ = ctl(capsys, etcd, "leases")
    assert rc == 0 and "fd64:0:6:9::/64" in out and "fd18::50" in out
    rc, out, err = ctl(capsys, etcd, "unreserve", "fd64:0:6:9::-64")
    assert rc == 0 and "removed the reservation fd64:0:6:9::/64 of fd18::50" in out, err
    assert etcdctl(etcd, "get", key, "--print-value-only").stdout.strip() == ""
