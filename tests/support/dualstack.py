"""IPv6 on top of a support.cluster Cluster, applied after ``Cluster.up()`` (and after ``add_pods``).

Why separate: the cluster builder disables IPv6 in every namespace so no link-local or multicast chatter
appears in the IPv4 tests. Dual-stack tests turn it back on only where they need it: node i gets
``fd18::<10+i>/64`` on eth0, the LAN bridge ``fd18::1/64``; a node's pod bridge ``fd64:0:0:<i>::1/64`` and
its pods ``fd64:0:0:<i>::<1+j>/64`` with a default route to the bridge. Addresses are added with
``nodad`` so they are usable at once (a tentative address would make the first packets fail).
Addresses stay inside fd18::/16 (LAN) and fd64::/16 (pods).
"""

from __future__ import annotations

from ipaddress import IPv6Network

from pyroute2 import IPRoute

from support.cluster import LAN_BRIDGE, NODE_IFACE, POD_BRIDGE, Cluster, Node, Pod

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
