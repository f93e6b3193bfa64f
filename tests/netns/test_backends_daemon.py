"""host-gw and wireguard with the real daemon: three pyflannel flanneld processes per cluster (issue 13).

The adapter-level netns tests (test_hostgw_netns.py, test_wireguard_netns.py) drive the backends by hand;
these start ``flanneld`` itself, so the catalog's wiring, the reconciler's notification-driven repair, the
lease keeper's republish on a key change and the restart path are all in play.

host-gw: pods ping across nodes; every node holds exactly ``<peer subnet> via <peer PublicIP> dev eth0``
(proto boot, scope global, main table) and no flannel device; Go flanneld v0.28.9 started on the same node
over the same leases writes the identical rows; a route deleted or changed by hand is put back from the
kernel notification (the timer resync is set to an hour); a peer whose lease goes away loses its route.

wireguard (wireguard-go on this kernel): pods ping; a capture in the LAN namespace shows only UDP between
the nodes' ListenPorts and no pod address or ICMP; the log names wireguard-go; a replaced key file is
published (new PublicKey in etcd) and the peers switch to it; SIGTERM + start keeps the key. Each flanneld
runs behind ``support.wgagent.PRIVATE_WG_DIR`` (wireguard-go's UAPI socket directory is host-global).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from support import checks, peers
from support.cluster import Cluster, Node
from support.wgagent import PRIVATE_WG_DIR, wg_dump

from pyflannel.core.backends.wireguard import generate_private_key, public_key

pytestmark = pytest.mark.root

NETWORK = IPv4Network("100.64.0.0/16")
HOSTGW_CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}'
WG_CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "wireguard"}}'
WG_PORT = 51820
BR_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")

Row = tuple[Any, ...]


# --- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Iterator[Cluster]:
    c = make_cluster(nodes=3)
    c.start_etcd()
    yield c


def lease_map(c: Cluster) -> dict[IPv4Network, dict[str, Any]]:
    return {IPv4Network(k): v for k, v in c.leases().items()}


def route_rows(node: Node) -> set[Row]:
    """Every main-table IPv4 route inside the Network that leaves through eth0, with all its header fields."""
    with IPRoute(netns=node.ns, flags=0) as ipr:
        (eth0,) = ipr.link_lookup(ifname="eth0")
        out = set()
        for r in ipr.route("dump", family=2, table=254):
            dst = r.get("RTA_DST")
            if dst is None or r.get("RTA_OIF") != eth0 or IPv4Network(f"{dst}/{r['dst_len']}").network_address \
                    not in NETWORK:
                continue
            attrs = tuple(sorted((k, str(v)) for k, v in r["attrs"] if k not in ("RTA_TABLE", "RTA_CACHEINFO")))
            out.add((f"{dst}/{r['dst_len']}", r["proto"], r["scope"], r["type"], r["flags"], r["tos"], attrs))
    return out


def expected_hostgw(c: Cluster, node: Node) -> set[tuple[str, str]]:
    """(peer subnet, PublicIP) for every lease but the node's own: the host-gw routes it must hold."""
    own = checks.own_subnet(c, node)
    return {(str(net), v["PublicIP"]) for net, v in lease_map(c).items() if net != own}


def hostgw_summary(node: Node) -> set[tuple[str, str]]:
    """(dst, gateway) of the node's host-gw rows, checking the fixed fields Go flanneld writes on the way."""
    out = set()
    for dst, proto, scope, rtype, flags, _tos, attrs in route_rows(node):
        a = dict(attrs)
        assert (proto, scope, rtype, flags) == (3, 0, 1, 0), (node.name, dst, proto, scope, rtype, flags)
        out.add((dst, a.get("RTA_GATEWAY", "")))
    return out


def hostgw_converged(c: Cluster, nodes: list[Node] | None = None) -> bool:
    return all(hostgw_summary(n) == expected_hostgw(c, n) for n in (nodes or c.nodes))


def flannel_links(node: Node) -> list[str]:
    """Links a flannel backend would have made: vxlan/wireguard/tun kinds or a flannel* name."""
    with IPRoute(netns=node.ns, flags=0) as ipr:
        out = []
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if name.startswith("flannel") or kind in ("vxlan", "wireguard", "tun"):
                out.append(f"{name}({kind})")
    return out


def ping_all(c: Cluster, count: int = 1) -> list[str]:
    return [f"{s.name}->{d.name}" for s in c.pods for d in c.pods
            if s.node is not d.node and not c.ping(s, d.ip, count=count, timeout=3)]


def log_after(node: Node, offset: int) -> str:
    with node.flanneld_log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(node: Node) -> int:
    return node.flanneld_log.stat().st_size if node.flanneld_log.exists() else 0


def running_logged(node: Node, offset: int) -> bool:
    return "Running: lease" in log_after(node, offset)


def error_lines(node: Node, offset: int = 0) -> list[str]:
    return [x for x in log_after(node, offset).splitlines() if x[:1] in "EF" and x[1:5].isdigit()]


# --- host-gw ---------------------------------------------------------------------------------------------


def start_hostgw(c: Cluster, resync: int = 3600) -> None:
    c.put_config(HOSTGW_CONFIG)
    for n in c.nodes:
        c.start_flanneld(n, [f"-resync-period={resync}"])
    for n in c.nodes:
        c.wait_subnet_env(n)
    checks.wait_for(lambda: len(c.leases()) == 3 and hostgw_converged(c), 30, "host-gw routes on every node")


def test_hostgw_three_nodes(cluster: Cluster) -> None:
    c = cluster
    # An hour's timer resync: whatever is repaired below is repaired from kernel notifications.
    start_hostgw(c, resync=3600)
    for n in c.nodes:
        assert flannel_links(n) == [], n.name
        env = c.read_subnet_env(n)
        assert env["FLANNEL_MTU"] == "1500" and env["FLANNEL_NETWORK"] == str(NETWORK)
        assert len(hostgw_summary(n)) == 2
    for v in lease_map(c).values():
        assert v == {"PublicIP": v["PublicIP"], "PublicIPv6": None, "BackendType": "host-gw"}, v
    for n in c.nodes:
        c.add_pods(n, 2)
    assert ping_all(c) == []

    # A route deleted by hand comes back; so does one replaced with another gateway.
    n1, n2, n3 = c.nodes
    sub2, sub3 = str(checks.own_subnet(c, n2)), str(checks.own_subnet(c, n3))
    offset = log_size(n1)
    with IPRoute(netns=n1.ns, flags=0) as ipr:
        ipr.route("del", dst=sub2, table=254)
        ipr.route("replace", dst=sub3, gateway="198.18.0.1", table=254)
    checks.wait_for(lambda: hostgw_converged(c, [n1]), 30, "n1's host-gw routes to come back")
    repaired = log_after(n1, offset)
    assert f"replace route {sub2} via {n2.lan_ip} dev eth0" in repaired, repaired
    assert f"replace route {sub3} via {n3.lan_ip} dev eth0" in repaired, repaired
    assert "full resync" not in repaired, repaired  # from notifications, not the (hour-long) timer
    assert ping_all(c) == []

    # n3 leaves: its daemon stops (host-gw leaves its routes, as flannel does) and its lease is deleted.
    assert c.stop_flanneld(n3) == 0
    assert hostgw_converged(c), "a SIGTERM must leave every route in place"
    c.etcdctl("del", "/coreos.com/network/subnets/" + sub3.replace("/", "-"))
    checks.wait_for(lambda: hostgw_converged(c, [n1, n2]), 30, "n1 and n2 to drop n3's route")
    assert hostgw_summary(n1) == {(sub2, n2.lan_ip)}
    assert all(c.ping(s, d.ip, timeout=3) for s in n1.pods for d in n2.pods)
    for n in c.nodes:
        assert error_lines(n) == [], (n.name, error_lines(n))


def test_hostgw_rows_match_go_flanneld(cluster: Cluster) -> None:
    """n3's routes as pyflannel wrote them, removed, then written by Go flanneld v0.28.9 over the same leases."""
    go = peers.require("flanneld")
    if not BR_NF.exists():
        pytest.skip(f"{BR_NF} is missing (modprobe br_netfilter); Go flanneld refuses to start without it")
    c = cluster
    start_hostgw(c)
    n1, n2, n3 = c.nodes
    ours = route_rows(n3)
    assert len(ours) == 2
    subnet = c.read_subnet_env(n3)["FLANNEL_SUBNET"]
    assert c.stop_flanneld(n3) == 0
    with IPRoute(netns=n3.ns, flags=0) as ipr:
        for dst, *_ in ours:
            ipr.route("del", dst=dst, table=254)
    assert route_rows(n3) == set()
    c.start_flanneld(n3, ["-v=1"], binary=go)
    checks.wait_for(lambda: len(route_rows(n3)) == 2, 30, "Go flanneld to write n3's host-gw routes")
    theirs = route_rows(n3)
    assert theirs == ours, f"Go flanneld:\n{sorted(theirs)}\npyflannel:\n{sorted(ours)}"
    assert c.read_subnet_env(n3)["FLANNEL_SUBNET"] == subnet  # Go took over n3's lease
    assert flannel_links(n3) == []
    assert hostgw_converged(c), "the pyflannel nodes must keep their rows to Go's node"
    for n in c.nodes:
        c.add_pods(n, 1)
    assert ping_all(c) == []


# --- wireguard -------------------------------------------------------------------------------------------


def start_wg(c: Cluster, node: Node) -> subprocess.Popen[bytes]:
    # A 2 s full resync: a replaced key file is noticed by WireguardBackend.check_devices on that pass.
    return c.start_flanneld(node, ["-resync-period=2"], {"WIREGUARD_KEY_FILE": str(node.dir / "wgkey")},
                            wrapper=PRIVATE_WG_DIR)


def wg_peers(c: Cluster, node: Node) -> dict[str, tuple[str, str]]:
    """The node's WireGuard peers as its wireguard-go reports them: {public key: (endpoint, allowed ips)}."""
    proc = c.flanneld_process(node)
    assert proc is not None and proc.poll() is None, f"{node.name}: flanneld is not running"
    rows = wg_dump(proc.pid)
    return {r[0]: (r[2], r[3]) for r in rows[1:]}


def wg_expected(c: Cluster, node: Node) -> dict[str, tuple[str, str]]:
    own = checks.own_subnet(c, node)
    return {v["BackendData"]["PublicKey"]: (f"{v['PublicIP']}:{v['BackendData']['Port']}", str(net))
            for net, v in lease_map(c).items() if net != own}


def wg_converged(c: Cluster, nodes: list[Node] | None = None) -> bool:
    return all(wg_peers(c, n) == wg_expected(c, n) for n in (nodes or c.nodes))


def lease_key_of(c: Cluster, node: Node) -> str:
    return str(lease_map(c)[checks.own_subnet(c, node)]["BackendData"]["PublicKey"])


@pytest.fixture
def wg_cluster(cluster: Cluster) -> Cluster:
    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        pytest.skip("needs wireguard-go and wg (Debian packages wireguard-go, wireguard-tools)")
    c = cluster
    c.put_config(WG_CONFIG)
    for n in c.nodes:
        start_wg(c, n)
    for n in c.nodes:
        c.wait_subnet_env(n)
    checks.wait_for(lambda: len(c.leases()) == 3 and wg_converged(c), 30, "every node's WireGuard peers")
    for n in c.nodes:
        c.add_pods(n, 1)
    return c


def test_wireguard_three_nodes_encrypted(wg_cluster: Cluster) -> None:
    c = wg_cluster
    for n in c.nodes:
        text = n.flanneld_log.read_text()
        assert "this kernel has no WireGuard; using userspace wireguard-go" in text, text[-2000:]
        assert "devices flannel-wg via wireguard-go" in text
        key_file = n.dir / "wgkey"
        assert key_file.stat().st_mode & 0o777 == 0o400
        wg_pub = subprocess.run(["wg", "pubkey"], input=key_file.read_text(), capture_output=True, text=True,
                                check=True).stdout.strip()
        lease = lease_map(c)[checks.own_subnet(c, n)]
        assert lease["BackendType"] == "wireguard" and lease["BackendData"] == {"PublicKey": wg_pub, "Port": WG_PORT}
        assert c.read_subnet_env(n)["FLANNEL_MTU"] == "1420"
        # The device: the lease's .0/32, the Network route through it (proto boot, as Go's netlink writes it).
        with IPRoute(netns=n.ns, flags=0) as ipr:
            (idx,) = ipr.link_lookup(ifname="flannel-wg")
            addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)]
            routes = [(f"{r.get_attr('RTA_DST')}/{r['dst_len']}", r["scope"], r["proto"])
                      for r in ipr.route("dump", family=2, table=254) if r.get_attr("RTA_OIF") == idx]
        assert addrs == [f"{checks.own_subnet(c, n).network_address}/32"]
        assert routes == [(str(NETWORK), 253, 3)], routes

    pcap = c.workdir / "lan.pcap"
    # -i any in the LAN namespace: the bridge br-lan and its ports (the bridge device alone does not see
    # unicast it forwards between ports).
    dump = subprocess.Popen(
        ["ip", "netns", "exec", c.lan_ns, "tcpdump", "-Z", "root", "-i", "any", "-n", "--immediate-mode", "-U",
         "-w", str(pcap), "not arp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert dump.stderr is not None
        while "listening on" not in (line := dump.stderr.readline()):
            assert line, "tcpdump exited before it listened"
        assert ping_all(c, count=2) == []
        deadline = time.monotonic() + 10  # let tcpdump flush what it has buffered
        while pcap.stat().st_size < 24 + 12 * 100 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    text = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True).stdout
    lines = [x for x in text.splitlines() if " IP " in x]
    nodes = {n.lan_ip for n in c.nodes}
    between = [x for x in lines if _hosts(x) and _hosts(x) <= nodes]
    assert len(between) >= 12, text[-3000:]  # 2 pings each way on 6 pairs, plus handshakes
    assert not [x for x in lines if "ICMP" in x], text[-3000:]
    assert not [x for x in lines if "100.64." in x], text[-3000:]
    bad = [x for x in between if f".{WG_PORT} > " not in x or not x.rstrip().split(": ")[-1].startswith("UDP")
           or not x.split(" > ")[1].split(":")[0].endswith(f".{WG_PORT}")]
    assert not bad, "\n".join(bad[:20])
    # Everything else on the LAN is the nodes talking to etcd.
    others = [x for x in lines if x not in between]
    assert all(".2379" in x for x in others), "\n".join(others[:20])
    for n in c.nodes:
        assert error_lines(n) == [], (n.name, error_lines(n))


def _hosts(line: str) -> set[str]:
    """The two IP addresses of a tcpdump line ``... IP a.b.c.d.port > e.f.g.h.port: ...``."""
    try:
        src, dst = line.split(" IP ", 1)[1].split(": ", 1)[0].split(" > ")
    except (IndexError, ValueError):
        return set()
    return {".".join(src.split(".")[:4]), ".".join(dst.split(".")[:4])}


def test_wireguard_key_rotation_and_restart(wg_cluster: Cluster) -> None:
    c = wg_cluster
    n1, n2, n3 = c.nodes
    assert ping_all(c) == []
    old = lease_key_of(c, n1)
    subnet = checks.own_subnet(c, n1)

    # Replace the key file as an operator would: a new file renamed over the old one.
    new_key = generate_private_key()
    tmp = n1.dir / "wgkey.new"
    tmp.write_text(new_key + "\n")
    tmp.chmod(0o400)
    offset = log_size(n1)
    tmp.rename(n1.dir / "wgkey")
    new = public_key(new_key)
    checks.wait_for(lambda: lease_key_of(c, n1) == new, 30, "n1's new PublicKey in its lease")
    assert f"PublicKey {old} -> {new}" in log_after(n1, offset)
    checks.wait_for(lambda: wg_converged(c), 30, "n2 and n3 to follow n1's new key")
    for n in (n2, n3):
        keys = wg_peers(c, n)
        assert new in keys and old not in keys, (n.name, keys)
    assert checks.own_subnet(c, n1) == subnet
    checks.wait_for(lambda: ping_all(c) == [], 30, "pings across nodes with n1's new key")

    # A restart keeps the key: SIGTERM (exit 0, flannel-wg deleted), then start again.
    assert c.stop_flanneld(n1) == 0
    with IPRoute(netns=n1.ns, flags=0) as ipr:
        assert ipr.link_lookup(ifname="flannel-wg") == []
    offset = log_size(n1)
    start_wg(c, n1)
    checks.wait_for(lambda: running_logged(n1, offset), 30, "n1 to run again")
    assert f"PublicKey {new} (existing key file" in log_after(n1, offset)
    assert lease_key_of(c, n1) == new
    assert checks.own_subnet(c, n1) == subnet
    checks.wait_for(lambda: wg_converged(c), 30, "every node's WireGuard peers after n1's restart")
    checks.wait_for(lambda: ping_all(c) == [], 30, "pings across nodes after n1's restart")
    for n in c.nodes:
        assert error_lines(n) == [], (n.name, error_lines(n))
