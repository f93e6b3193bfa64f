"""Dual-stack clusters of pyflannel flanneld on a real kernel: 3 nodes, real etcd, v4 and v6 pod pings.

The nodes get fd18:: LAN addresses after ``Cluster.up()`` (support.dualstack) and no IPv6 default route:
flanneld is started with ``-iface=eth0`` (support.cluster always passes it), and the v6 address is the
interface's own (pyflannel/daemon/iface.py ``select_v6``). Pods get a v4 address from FLANNEL_SUBNET and a
v6 one from FLANNEL_IPV6_SUBNET (the lease's v6 subnet, which is random inside IPv6Network).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from support import dualstack
from support.cluster import POD_BRIDGE, Cluster, Node, destroy_prefix

pytestmark = pytest.mark.root

VXLAN_CONFIG = ('{"Network": "100.64.0.0/16", "EnableIPv6": true, "IPv6Network": "fd64::/48", '
                '"Backend": {"Type": "vxlan"}}')
HOSTGW_CONFIG = ('{"Network": "100.64.0.0/16", "EnableIPv6": true, "IPv6Network": "fd64::/48", '
                 '"Backend": {"Type": "host-gw"}}')
KEY_RE = re.compile(r"^100\.64\.\d+\.0-24&fd64:0:0:[0-9a-f]{1,4}::-64$")
MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
VXLAN_LEASE_RE = re.compile(
    r'^\{"PublicIP":"198\.18\.0\.\d+","PublicIPv6":"fd18::[0-9a-f]+","BackendType":"vxlan",'
    rf'"BackendData":\{{"VNI":1,"VtepMAC":"{MAC}"\}},"BackendV6Data":\{{"VNI":1,"VtepMAC":"{MAC}"\}}\}}$'
)
HOSTGW_LEASE_RE = re.compile(
    r'^\{"PublicIP":"198\.18\.0\.\d+","PublicIPv6":"fd18::[0-9a-f]+","BackendType":"host-gw"\}$'
)


def _need() -> None:
    dualstack.need_v6_cluster(ip6tables=False)


def wait_env6(c: Cluster, node: Node, timeout: float = 30.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        env = c.wait_subnet_env(node, timeout=timeout)
        if "FLANNEL_IPV6_SUBNET" in env:
            return env
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.name}: no FLANNEL_IPV6_SUBNET in {env}")
        time.sleep(0.1)


def add_pods6(c: Cluster, node: Node, subnet6: IPv6Interface) -> list[str]:
    """v6 addresses on the node's pod bridge and pods, from FLANNEL_IPV6_SUBNET; returns the pod IPs."""
    sn = subnet6.network
    with IPRoute(netns=node.ns, flags=0) as ipr:
        (br,) = ipr.link_lookup(ifname=POD_BRIDGE)
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


def start(prefix: str, workdir: Path, config: str) -> tuple[Cluster, dict[str, list[str]]]:
    c = Cluster(prefix=prefix, nodes=3, workdir=workdir)
    try:
        c.up()
        dualstack.enable_lan6(c)
        c.start_etcd()
        c.put_config(config)
        for n in c.nodes:
            c.start_flanneld(n)
        pods6: dict[str, list[str]] = {}
        for n in c.nodes:
            env = wait_env6(c, n)
            c.add_pods(n, 1)
            pods6[n.name] = add_pods6(c, n, IPv6Interface(env["FLANNEL_IPV6_SUBNET"]))
    except BaseException:
        c.down()
        raise
    return c, pods6


def ping_matrix(c: Cluster, pods6: dict[str, list[str]], timeout: float = 60.0) -> tuple[list[str], list[str]]:
    """Every pod to every pod on other nodes, v4 and v6; waits for convergence, returns the failures."""
    deadline = time.monotonic() + timeout
    while True:
        f4 = [f"{a.name}->{b.name}" for a in c.pods for b in c.pods
              if a.node is not b.node and not c.ping(a, b.ip, count=1, timeout=1)]
        f6 = [f"{a.name}->{b.node.name}:{ip6}" for a in c.pods for b in c.pods if a.node is not b.node
              for ip6 in pods6[b.node.name][: 1] if not dualstack.ping6(c, a.ns, ip6, timeout=1)]
        if (not f4 and not f6) or time.monotonic() > deadline:
            return f4, f6
        time.sleep(0.5)


@pytest.fixture(scope="module")
def vxlan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, list[str]]]]:
    _need()
    prefix = f"pfd{secrets.token_hex(2)}"
    c, pods6 = start(prefix, tmp_path_factory.mktemp("dsvx"), VXLAN_CONFIG)
    try:
        yield c, pods6
    finally:
        c.down()
        destroy_prefix(prefix)


def test_vxlan_dual_stack_pods_ping_v4_and_v6(vxlan: tuple[Cluster, dict[str, list[str]]]) -> None:
    c, pods6 = vxlan
    f4, f6 = ping_matrix(c, pods6)
    assert (f4, f6) == ([], [])


def test_vxlan_dual_stack_etcd_keys_and_values(vxlan: tuple[Cluster, dict[str, list[str]]]) -> None:
    c, _ = vxlan
    raw = dualstack.raw_leases(c)
    print("etcd leases:", json.dumps(raw, indent=1))
    assert len(raw) == 3
    for key, value in raw.items():
        assert KEY_RE.match(key), key
        assert VXLAN_LEASE_RE.match(value), value
        d = json.loads(value)
        assert d["BackendData"]["VtepMAC"] != d["BackendV6Data"]["VtepMAC"]


def test_vxlan_v6_device_and_peer_entries(vxlan: tuple[Cluster, dict[str, list[str]]]) -> None:
    c, _ = vxlan
    leases = {k: json.loads(v) for k, v in dualstack.raw_leases(c).items()}
    for n in c.nodes:
        env = c.read_subnet_env(n)
        own6 = IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network
        with IPRoute(netns=n.ns, flags=0) as ipr:
            (link,) = ipr.link("get", ifname="flannel-v6.1")
            data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
            assert data.get("IFLA_VXLAN_LOCAL6") == dualstack.node_ip6(n)
            assert data.get("IFLA_VXLAN_ID") == 1
            idx = link["index"]
            addrs = {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", family=10, index=idx)}
            assert f"{own6.network_address}/128" in addrs
            routes = {(r.get("RTA_DST"), r["dst_len"], r.get("RTA_GATEWAY"))
                      for r in ipr.route("dump", family=10, table=254, oif=idx) if r.get("RTA_GATEWAY")}
            neighs = {(nb.get("NDA_DST"), nb.get("NDA_LLADDR")) for nb in ipr.neigh("dump", family=10, ifindex=idx)
                      if nb["state"] & 0x80}
            fdbs = {(nb.get("NDA_LLADDR"), nb.get("NDA_DST")) for nb in ipr.fdb("dump", ifindex=idx)
                    if nb.get("NDA_DST")}
        want_routes, want_neighs, want_fdbs = set(), set(), set()
        for key, d in leases.items():
            sn6 = IPv6Network(key.split("&")[1].replace("-", "/"))
            if sn6 == own6:
                continue
            vtep = str(sn6.network_address)
            want_routes.add((vtep, 64, vtep))
            want_neighs.add((vtep, d["BackendV6Data"]["VtepMAC"]))
            want_fdbs.add((d["BackendV6Data"]["VtepMAC"], d["PublicIPv6"]))
        assert routes == want_routes, n.name
        assert neighs == want_neighs, n.name
        assert fdbs == want_fdbs, n.name


def test_vxlan_subnet_env_has_v6_keys(vxlan: tuple[Cluster, dict[str, list[str]]]) -> None:
    c, _ = vxlan
    env = c.read_subnet_env(c.nodes[0])
    assert env["FLANNEL_IPV6_NETWORK"] == "fd64::/48"
    sn6 = IPv6Interface(env["FLANNEL_IPV6_SUBNET"])
    assert sn6.network.prefixlen == 64 and sn6.ip == sn6.network.network_address + 1
    assert IPv6Address(str(sn6.ip)) in IPv6Network("fd64::/48")


def test_hostgw_dual_stack_pods_ping_v4_and_v6(netns_prefix: str, tmp_path: Path) -> None:
    _need()
    c, pods6 = start(netns_prefix, tmp_path / "hg", HOSTGW_CONFIG)
    try:
        f4, f6 = ping_matrix(c, pods6)
        raw = dualstack.raw_leases(c)
        print("etcd leases:", json.dumps(raw, indent=1))
        assert (f4, f6) == ([], [])
        for key, value in raw.items():
            assert KEY_RE.match(key), key
            assert HOSTGW_LEASE_RE.match(value), value
        # Per peer: <v6 subnet> via <PublicIPv6> dev eth0.
        n1 = c.nodes[0]
        with IPRoute(netns=n1.ns, flags=0) as ipr:
            (eth,) = ipr.link_lookup(ifname="eth0")
            got = {(r.get("RTA_DST"), r.get("RTA_GATEWAY")) for r in ipr.route("dump", family=10, table=254, oif=eth)
                   if r.get("RTA_GATEWAY")}
        own6 = IPv6Interface(c.read_subnet_env(n1)["FLANNEL_IPV6_SUBNET"]).network
        want = {(key.split("&")[1].split("-")[0], json.loads(v)["PublicIPv6"]) for key, v in raw.items()
                if IPv6Network(key.split("&")[1].replace("-", "/")) != own6}
        assert got == want
    finally:
        c.down()
