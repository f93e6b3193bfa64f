"""A mixed dual-stack etcd-mode vxlan cluster: n1 and n2 run pyflannel, n3 Go flanneld v0.28.9.

Shown: v4 and v6 pod pings in both directions across the implementation boundary; Go reads our dual-stack
keys (``<v4>-<len>&<v6>-<len6>``) and lease JSON (PublicIPv6, BackendV6Data) and installs the v6 entries
on its ``flannel-v6.1``; we do the same with its lease. The mixed fixture in conftest.py waits for the
IPv4 vxlan state only (support.checks parses v4 keys), so this file builds its cluster itself with
conftest's Mixed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from ipaddress import IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from support import dualstack
from support.cluster import SUBNETS_PREFIX, Cluster, Node

from pyflannel.core.ipnet import parse_subnet_key
from pyflannel.core.lease import parse_lease_attrs

from .conftest import Mixed, _require_env, complaints

CONFIG = ('{"Network": "100.64.0.0/16", "EnableIPv6": true, "IPv6Network": "fd64::/48", '
          '"Backend": {"Type": "vxlan"}}')


def _pods6(c: Cluster, node: Node, subnet6: IPv6Interface) -> list[str]:
    sn = subnet6.network
    with IPRoute(netns=node.ns, flags=0) as ipr:
        (br,) = ipr.link_lookup(ifname="docker0")
        ipr.addr("add", index=br, address=str(subnet6.ip), prefixlen=sn.prefixlen, flags=dualstack.IFA_F_NODAD)
    ips = []
    for j, pod in enumerate(node.pods, start=1):
        dualstack._enable(c, pod.ns, forwarding=False)
        ip = str(sn.network_address + 1 + j)
        dualstack._addr(pod.ns, "eth0", ip, sn.prefixlen)
        with IPRoute(netns=pod.ns, flags=0) as ipr:
            ipr.route("add", dst="::/0", gateway=str(subnet6.ip), family=10)
        ips.append(ip)
    return ips


def _raw(c: Cluster) -> dict[str, str]:
    out = c.etcdctl("get", "--prefix", SUBNETS_PREFIX).stdout.splitlines()
    return {k.removeprefix(SUBNETS_PREFIX): v for k, v in zip(out[0::2], out[1::2], strict=False)}


@pytest.fixture
def dual(interop_prefix: str, tmp_path: Path) -> Iterator[tuple[Mixed, dict[str, list[str]]]]:
    go = _require_env()
    c = Cluster(prefix=interop_prefix, nodes=3, workdir=tmp_path / "cluster")
    m = Mixed(c, go, {"n3"})
    try:
        c.up()
        dualstack.enable_lan6(c)
        c.start_etcd()
        c.put_config(CONFIG)
        for n in c.nodes:
            m.start(n)
        for n in c.nodes:
            m.wait_ready(n)
        pods6 = {}
        for n in c.nodes:
            env = c.read_subnet_env(n)
            assert "FLANNEL_IPV6_SUBNET" in env, (m.label(n), env)
            c.add_pods(n, 1)
            pods6[n.name] = _pods6(c, n, IPv6Interface(env["FLANNEL_IPV6_SUBNET"]))
        yield m, pods6
    finally:
        m.close()
        c.down()


def test_dual_stack_mixed_pings_v4_and_v6_both_ways(dual: tuple[Mixed, dict[str, list[str]]]) -> None:
    m, pods6 = dual
    c = m.c
    deadline = time.monotonic() + 60
    while True:
        res = {}
        for a in c.pods:
            for b in c.pods:
                if a.node is b.node:
                    continue
                res[(m.label(a.node), m.label(b.node), "v4")] = c.ping(a, b.ip, count=1, timeout=1)
                res[(m.label(a.node), m.label(b.node), "v6")] = dualstack.ping6(c, a.ns, pods6[b.node.name][0],
                                                                                timeout=1)
        if all(res.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    text = "\n".join(f"{s:>7} -> {d:<7} {fam}: {'ok' if ok else 'FAIL'}" for (s, d, fam), ok in sorted(res.items()))
    print("\n" + text)
    raw = _raw(c)
    print("etcd leases:", json.dumps(raw, indent=1))
    assert all(res.values()), text
    kinds = {(s[-3:-1], d[-3:-1], fam) for s, d, fam in res}
    assert {("py", "go", "v6"), ("go", "py", "v6"), ("py", "go", "v4"), ("go", "py", "v4")} <= kinds


def test_dual_stack_leases_read_across(dual: tuple[Mixed, dict[str, list[str]]]) -> None:
    m, _ = dual
    c = m.c
    raw = _raw(c)
    assert len(raw) == 3, raw
    shapes = {}
    by_ip = {}
    for key, value in raw.items():
        sn4, sn6 = parse_subnet_key(key)
        assert sn6 is not None and sn6.subnet_of(IPv6Network("fd64::/48")), key
        attrs = parse_lease_attrs(value)
        assert attrs.public_ipv6 is not None and attrs.vxlan_v6_data().vni == 1
        by_ip[str(attrs.public_ip)] = (key, value)
    for n in c.nodes:
        key, value = by_ip[n.lan_ip]
        doc = json.loads(value)
        shapes[m.kind(n)] = (list(doc), sorted(doc["BackendV6Data"]))
        assert doc["PublicIPv6"] == dualstack.node_ip6(n)
        env = c.read_subnet_env(n)
        assert key.endswith(str(IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network.network_address) + "-64")
        shapes[m.kind(n) + "-env"] = sorted(env)
    assert shapes["go"] == shapes["py"], shapes
    assert shapes["go-env"] == shapes["py-env"], shapes
    go_node = m.go[0]
    go_log = go_node.flanneld_log.read_text()
    assert not complaints(go_node, about=tuple(p.lan_ip for p in m.py)), go_log[-3000:]
    for p in m.py:
        assert not complaints(p, about=(go_node.lan_ip,)), p.name
    # Go installed the v6 entries for our leases on its flannel-v6.1.
    with IPRoute(netns=go_node.ns, flags=0) as ipr:
        (idx,) = ipr.link_lookup(ifname="flannel-v6.1")
        fdb = {(f.get("NDA_LLADDR"), f.get("NDA_DST")) for f in ipr.fdb("dump", ifindex=idx) if f.get("NDA_DST")}
    for p in m.py:
        doc = json.loads(by_ip[p.lan_ip][1])
        assert (doc["BackendV6Data"]["VtepMAC"], doc["PublicIPv6"]) in fdb, (p.name, fdb)
