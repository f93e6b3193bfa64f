"""IPv6 on top of a support.cluster Cluster, applied after ``Cluster.up()`` (and after ``add_pods``).

Why separate: the cluster builder disables IPv6 in every namespace so no link-local or multicast chatter
appears in the IPv4 tests. Dual-stack tests turn it back on only where they need it: node i gets
``fd18::<10+i>/64`` on eth0, the LAN bridge ``fd18::1/64``; a node's pod bridge ``fd64:0:0:<i>::1/64`` and
its pods ``fd64:0:0:<i>::<1+j>/64`` with a default route to the bridge. Addresses are added with
``nodad`` so they are usable at once (a tentative address would make the first packets fail).
Addresses stay inside fd18::/16 (LAN) and fd64::/16 (pods).
"""

from __future__ import annotations

import os
import shutil
from ipaddress import IPv6Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from support.cluster import LAN_BRIDGE, NODE_IFACE, POD_BRIDGE, SUBNETS_PREFIX, Cluster, Node, Pod

LAN6 = IPv6Network("fd18::/64")
IFA_F_NODAD = 0x02


def node_ip6(node: Node) -> str:
    return f"fd18::{10 + node.index:x}"


def pod_subnet6(node: Node) -> IPv6Network:
    return IPv6Network(f"fd64:0:0:{node.index:x}::/64")


def _enable(c: Cluster, ns: str, forwarding: bool) -> None:
    c.exec(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                f"net.ipv6.conf.all.forwarding={int(forwarding)}", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0"])
    for dev in c.exec(ns, ["ls", "/proc/sys/net/ipv6/conf"]).stdout.split():
        if dev not in ("all", "default"):
            c.exec(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=0"])


def _addr(ns: str, ifname: str, ip: str, plen: int) -> None:
    with IPRoute(netns=ns, flags=0) as ipr:
        (idx,) = ipr.link_lookup(ifname=ifname)
        ipr.addr("add", index=idx, address=ip, prefixlen=plen, flags=IFA_F_NODAD)


def enable_lan6(c: Cluster) -> None:
    """IPv6 on the LAN: the bridge and every node's eth0."""
    _enable(c, c.lan_ns, forwarding=False)
    _addr(c.lan_ns, LAN_BRIDGE, "fd18::1", 64)
    for node in c.nodes:
        _enable(c, node.ns, forwarding=True)
        _addr(node.ns, NODE_IFACE, node_ip6(node), 64)


def pod_ip6(pod: Pod) -> str:
    j = pod.node.pods.index(pod) + 1
    return str(pod_subnet6(pod.node).network_address + 1 + j)


def enable_pods6(c: Cluster, node: Node) -> None:
    """IPv6 on a node's pod bridge and its pods (call after add_pods)."""
    sn = pod_subnet6(node)
    _addr(node.ns, POD_BRIDGE, str(sn.network_address + 1), 64)
    for pod in node.pods:
        _enable(c, pod.ns, forwarding=False)
        _addr(pod.ns, "eth0", pod_ip6(pod), 64)
        with IPRoute(netns=pod.ns, flags=0) as ipr:
            ipr.route("add", dst="::/0", gateway=str(sn.network_address + 1), family=10)


def ping6(c: Cluster, src_ns: str, dst: str, count: int = 1, timeout: float = 3) -> bool:
    """``ping -6``; only fd18::/16 and fd64::/16 destinations."""
    from ipaddress import IPv6Address

    ip = IPv6Address(dst)
    if not (ip in IPv6Network("fd18::/16") or ip in IPv6Network("fd64::/16")):
        raise ValueError(f"refusing to ping {dst}: outside fd18::/16 and fd64::/16")
    proc = c.exec(src_ns, ["ping", "-6", "-n", "-q", "-c", str(count), "-W", f"{timeout:g}", dst], check=False,
                  timeout=timeout * count + 10)
    return proc.returncode == 0


def need_v6_cluster(ip6tables: bool = False) -> None:
    """Skip (with the reason) unless root, iproute2, etcd and an IPv6 kernel (and ip6tables) are here."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (creates network namespaces)")
    if not shutil.which("etcd"):
        pytest.skip("needs etcd on PATH (Debian package etcd-server, or build/testdeps/etcd)")
    if not Path("/proc/sys/net/ipv6").exists():
        pytest.skip("needs a kernel with IPv6")
    if ip6tables and not shutil.which("ip6tables"):
        pytest.skip("needs ip6tables (Debian package iptables)")


def raw_leases(c: Cluster) -> dict[str, str]:
    """The subnet keys (last path element) and their values, as stored."""
    out = c.etcdctl("get", "--prefix", SUBNETS_PREFIX).stdout.splitlines()
    return {k.removeprefix(SUBNETS_PREFIX): v for k, v in zip(out[0::2], out[1::2], strict=False)}


# --- IPv6-only networks (EnableIPv4=false): no FLANNEL_SUBNET, pods with only an IPv6 address ---------------


def wait_env6_only(c: Cluster, node: Node, timeout: float = 30.0) -> dict[str, str]:
    """The node's subnet file once flanneld has written the IPv6 lines (there is no FLANNEL_SUBNET to wait for)."""
    return c.wait_subnet_env(node, timeout, subnet_key="FLANNEL_IPV6_SUBNET")


def add_pods6_only(c: Cluster, node: Node, count: int = 1) -> list[Pod]:
    """Pods with only an IPv6 address from FLANNEL_IPV6_SUBNET, on the node's pod bridge (.1 is the gateway)."""
    from ipaddress import IPv6Interface

    env = c.read_subnet_env(node)
    gw = IPv6Interface(env["FLANNEL_IPV6_SUBNET"])
    mtu = int(env["FLANNEL_MTU"])
    sn = gw.network
    with IPRoute(netns=node.ns, flags=0) as ipr:
        if not ipr.link_lookup(ifname=POD_BRIDGE):
            ipr.link("add", ifname=POD_BRIDGE, kind="bridge")
            (br,) = ipr.link_lookup(ifname=POD_BRIDGE)
            ipr.link("set", index=br, mtu=mtu)
            ipr.addr("add", index=br, address=str(gw.ip), prefixlen=sn.prefixlen, flags=IFA_F_NODAD)
            ipr.link("set", index=br, state="up")
    new: list[Pod] = []
    for _ in range(count):
        j = len(node.pods) + 1
        pod = Pod(name=f"{node.name}p{j}", ns=f"{c.prefix}-{node.name}p{j}", ip=str(sn.network_address + 1 + j),
                  gateway=str(gw.ip), host_ifname=f"veth{j}", node=node)
        c._create_netns(pod.ns, ip_forward=False)
        _enable(c, pod.ns, forwarding=False)
        with IPRoute(netns=node.ns, flags=0) as ipr:
            ipr.link("add", ifname=pod.host_ifname, kind="veth", mtu=mtu,
                     peer={"ifname": "eth0", "mtu": mtu, "net_ns_fd": pod.ns})
            (idx,) = ipr.link_lookup(ifname=pod.host_ifname)
            (br,) = ipr.link_lookup(ifname=POD_BRIDGE)
            ipr.link("set", index=idx, master=br, state="up")
        with IPRoute(netns=pod.ns, flags=0) as ipr:
            (eth,) = ipr.link_lookup(ifname="eth0")
            ipr.link("set", index=eth, state="up")
            ipr.addr("add", index=eth, address=pod.ip, prefixlen=sn.prefixlen, flags=IFA_F_NODAD)
            ipr.route("add", dst="::/0", gateway=pod.gateway, family=10)
        node.pods.append(pod)
        new.append(pod)
    return new


def vxlan6_state(ns: str, device: str = "flannel-v6.1") -> tuple[set[tuple[str, int, str]], set[tuple[str, str]],
                                                                  set[tuple[str, str]], set[str]]:
    """``device``'s gateway routes (dst, len, via), permanent neighbours (ip, mac), FDB entries (mac, dst) and
    IPv6 addresses, read from the kernel."""
    with IPRoute(netns=ns, flags=0) as ipr:
        (link,) = ipr.link("get", ifname=device)
        idx = link["index"]
        addrs = {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", family=10, index=idx)}
        routes = {(r.get("RTA_DST"), r["dst_len"], r.get("RTA_GATEWAY"))
                  for r in ipr.route("dump", family=10, table=254, oif=idx) if r.get("RTA_GATEWAY")}
        neighs = {(nb.get("NDA_DST"), nb.get("NDA_LLADDR")) for nb in ipr.neigh("dump", family=10, ifindex=idx)
                  if nb["state"] & 0x80}
        fdbs = {(nb.get("NDA_LLADDR"), nb.get("NDA_DST")) for nb in ipr.fdb("dump", ifindex=idx) if nb.get("NDA_DST")}
    return routes, neighs, fdbs, addrs


def ping6_matrix(c: Cluster, timeout: float = 60.0) -> list[str]:
    """Every pod to every pod on the other nodes over IPv6 (pod.ip is the v6 address); waits for convergence,
    returns the failures."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        fails = [f"{a.name}->{b.name}" for a in c.pods for b in c.pods
                 if a.node is not b.node and not ping6(c, a.ns, b.ip, timeout=1)]
        if not fails or time.monotonic() > deadline:
            return fails
        time.sleep(0.5)
