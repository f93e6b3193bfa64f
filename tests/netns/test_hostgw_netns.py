"""host-gw at adapter level on a real kernel: routes from HostGwBackend applied with pyroute2 in 3 nodes.

No daemon: each node's backend is set up with its uplink, asked for the entries of the other nodes'
leases, and the routes are written as the data plane would (``replace``). Shown: pods ping across nodes
(IPv4, and IPv6 in a dual-stack variant), the kernel rows are the ones Go flanneld writes
(``<subnet> via <PublicIP> dev eth0``, proto boot, scope global), and a conflicting route to the same
destination is replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from pyroute2 import IPRoute
from support import dualstack
from support.cluster import Cluster, Node

from pyflannel.adapters.hostgw_backend import HostGwBackend
from pyflannel.core.config import parse_config
from pyflannel.core.lease import Lease
from pyflannel.core.model import Route
from pyflannel.ports import Uplink

pytestmark = pytest.mark.root

LAN = IPv4Network("198.18.0.0/24")


def write_env(node: Node) -> None:
    node.subnet_file.write_text(
        f"FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.{node.index}.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
    )


def backends(c: Cluster, config: str, v6: bool = False) -> tuple[list[HostGwBackend], list[Lease]]:
    cfg = parse_config(config)
    bes, leases = [], []
    for node in c.nodes:
        with IPRoute(netns=node.ns, flags=0) as ipr:
            (idx,) = ipr.link_lookup(ifname="eth0")
        ip6 = IPv6Address(dualstack.node_ip6(node)) if v6 else None
        up = Uplink("eth0", idx, 1500, IPv4Address(node.lan_ip), IPv4Address(node.lan_ip), ip6, ip6,
                    networks=(LAN, dualstack.LAN6) if v6 else (LAN,))
        be = HostGwBackend(cfg)
        asyncio.run(be.setup(up))
        attrs = be.lease_attrs(up)
        le = Lease(IPv4Network(f"100.64.{node.index}.0/24"), attrs,
                   subnet6=dualstack.pod_subnet6(node) if v6 else None)
        asyncio.run(be.on_lease(le))
        bes.append(be)
        leases.append(le)
    return bes, leases


def apply_routes(node: Node, routes: list[Route]) -> None:
    with IPRoute(netns=node.ns, flags=0) as ipr:
        for r in routes:
            (idx,) = ipr.link_lookup(ifname=r.dev)
            # proto boot, as nlbulk and Go's netlink write routes
            ipr.route("replace", dst=str(r.dst), gateway=str(r.via), oif=idx, proto=3,
                      family=10 if r.dst.version == 6 else 2)


def peer_routes(be: HostGwBackend, leases: list[Lease], own: Lease) -> list[Route]:
    out: list[Route] = []
    for le in leases:
        if le is own:
            continue
        pe = be.peer_entries(le)
        assert pe.rejected == ""
        out += [e for e in pe.entries if isinstance(e, Route)]
    return out


def ping_all(c: Cluster) -> list[str]:
    return [
        f"{s.name}->{d.name}"
        for s in c.pods
        for d in c.pods
        if s.node is not d.node and not c.ping(s, d.ip, count=1, timeout=3)
    ]


def test_three_nodes_ping_and_kernel_rows(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=3)
    for node in c.nodes:
        write_env(node)
        c.add_pods(node, 1)
    bes, leases = backends(c, '{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}')
    assert leases[0].attrs.to_json() == '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}'
    n1 = c.nodes[0]
    # A conflicting route to n2's subnet (wrong gateway) must be replaced, not duplicated.
    c.exec(n1.ns, ["ip", "route", "add", "100.64.2.0/24", "via", "198.18.0.13", "dev", "eth0"])
    for node, be, own in zip(c.nodes, bes, leases, strict=True):
        apply_routes(node, peer_routes(be, leases, own))
    rows = c.exec(n1.ns, ["ip", "route", "show", "root", "100.64.0.0/16"]).stdout.splitlines()
    # What Go flanneld's RouteNetwork writes (netlink.Route{Dst, Gw, LinkIndex}): proto boot, scope global.
    assert sorted(x.strip() for x in rows) == [
        "100.64.1.0/24 dev docker0 proto kernel scope link src 100.64.1.1",
        "100.64.2.0/24 via 198.18.0.12 dev eth0",
        "100.64.3.0/24 via 198.18.0.13 dev eth0",
    ]
    assert ping_all(c) == []
    assert bes[0].scope().uplink_routes == (IPv4Network("100.64.0.0/16"),)


def test_dual_stack_ping(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=3)
    dualstack.enable_lan6(c)
    for node in c.nodes:
        write_env(node)
        c.add_pods(node, 1)
        dualstack.enable_pods6(c, node)
    cfg = ('{"Network": "100.64.0.0/16", "EnableIPv6": true, "IPv6Network": "fd64::/48", '
           '"Backend": {"Type": "host-gw"}}')
    bes, leases = backends(c, cfg, v6=True)
    for node, be, own in zip(c.nodes, bes, leases, strict=True):
        routes = peer_routes(be, leases, own)
        assert len(routes) == 4
        apply_routes(node, routes)
    rows6 = c.exec(c.nodes[0].ns, ["ip", "-6", "route", "show", "root", "fd64::/48"]).stdout
    assert "fd64:0:0:2::/64 via fd18::c dev eth0" in rows6
    assert ping_all(c) == []
    bad = [
        f"{s.name}->{d.name}"
        for s in c.pods
        for d in c.pods
        if s.node is not d.node and not dualstack.ping6(c, s.ns, dualstack.pod_ip6(d))
    ]
    assert bad == []
