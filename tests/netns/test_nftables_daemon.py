"""flanneld in nftables mode, end to end: real etcd, real daemons, pods, and the traffic the rules are for.

What tests/netns/test_nftables.py checks of the Firewall adapter alone, checked here of the running daemon
(issue 14):

1. three nodes with ``"EnableNFTables": true`` and ``-ip-masq``: pods reach each other across nodes with
   their own source address (not NATed) and reach the LAN as their node (NATed); no iptables FLANNEL-*
   chain exists on those nodes;
2. a running node switched iptables -> nftables -> iptables through the config in etcd, while pings and a
   stream of new connections (each a new conntrack entry, so a fresh NAT decision) run pod -> pod and
   pod -> LAN: nothing is lost, nothing goes out un-NATed, and the other mode's state is gone afterwards;
3. a node whose iptables binaries are hidden (private mount namespace over /usr/sbin) picks nftables by
   itself, says why once, and its pods work;
4. a flannel table deleted by hand comes back within the -iptables-resync period.

Traffic checks use :class:`support.nft.SourceEcho`, a TCP server that answers with the source address it
saw, in the destination pod or in the LAN namespace (198.18.0.1).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_interface
from typing import Any

import pytest
from support import dualstack
from support.checks import wait_converged, wait_for
from support.cluster import LAN_GATEWAY, Cluster, Node, Pod, destroy_prefix, prefix_namespaces
from support.nft import (
    IPTABLES_MISSING,
    NFT_MISSING,
    FlowProbe,
    SourceEcho,
    TimedPing,
    firewall,
    flannel_tables,
    have,
    hidden_iptables,
    iptables_flannel_chains,
    run_in,
    seen_source,
    wallclock,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have("nft"), reason=NFT_MISSING),
]

NFT_CONFIG = '{"Network": "100.64.0.0/16", "EnableNFTables": true, "Backend": {"Type": "vxlan"}}'
IPT_CONFIG = '{"Network": "100.64.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}'
UNSET_CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}'
RESYNC = ["-iptables-resync=1"]
BOTH_TABLES = {("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")}
IPT_CHAINS = ["iptables-save: FLANNEL-FWD", "iptables-save: FLANNEL-POSTRTG"]


@pytest.fixture
def netns_prefix() -> Iterator[str]:
    """Like the shared fixture (tests/netns/conftest.py), with this module's own prefix (``nfd....``)."""
    if os.geteuid() != 0 or not have("ip"):
        pytest.skip("needs root and iproute2's `ip` (creates network namespaces)")
    prefix = f"nfd{secrets.token_hex(2)}"
    destroy_prefix(prefix)
    yield prefix
    left = prefix_namespaces(prefix)
    destroy_prefix(prefix)
    assert not left, f"test left network namespaces behind: {left}"


def start(c: Cluster, config: str, nodes: list[Node] | None = None, pods: int = 1,
          wrappers: dict[str, list[str]] | None = None) -> None:
    """etcd, ``config``, flanneld (-ip-masq, -iptables-resync=1) on ``nodes``, converged, ``pods`` pods each."""
    c.start_etcd()
    c.put_config(config)
    nodes = nodes or c.nodes
    for n in nodes:
        c.start_flanneld(n, RESYNC, wrapper=(wrappers or {}).get(n.name, []))
    for n in nodes:
        c.wait_subnet_env(n)
    wait_converged(c, timeout=30, nodes=nodes)
    for n in nodes:
        c.add_pods(n, pods)


def spec_of(c: Cluster, node: Node) -> dict[str, Any]:
    env = c.read_subnet_env(node)
    return {"network": env["FLANNEL_NETWORK"], "subnet": str(ip_interface(env["FLANNEL_SUBNET"]).network),
            "ip_masq": True}


def log_count(node: Node, text: str) -> int:
    return node.flanneld_log.read_text(errors="replace").count(text)


def nft_mode_ok(c: Cluster, node: Node) -> bool:
    """flannel's tables exactly as the spec says, and no iptables FLANNEL-* chain."""
    return (set(flannel_tables(node.ns)) == BOTH_TABLES and firewall(node.ns, "nftables", "missing",
                                                                     spec_of(c, node)) == []
            and iptables_flannel_chains(node.ns) == [])


def ipt_mode_ok(node: Node) -> bool:
    return iptables_flannel_chains(node.ns) == IPT_CHAINS and not flannel_tables(node.ns)


def cross_pairs(c: Cluster) -> list[tuple[Pod, Pod]]:
    pods = [p for n in c.nodes for p in n.pods]
    return [(s, d) for s in pods for d in pods if s.node is not d.node]


def check_traffic(c: Cluster, nodes: list[Node] | None = None) -> None:
    """Pod -> pod across nodes keeps the pod's address; pod -> LAN leaves with the node's address."""
    nodes = nodes or c.nodes
    pods = [p for n in nodes for p in n.pods]
    echoes = [SourceEcho(p.ns, p.ip) for p in pods] + [SourceEcho(c.lan_ns, LAN_GATEWAY)]
    try:
        pairs = [(s, d) for s in pods for d in pods if s.node is not d.node]
        assert pairs
        no_ping = [f"{s.name}->{d.name}" for s, d in pairs if not c.ping(s, d.ip, count=2, timeout=3)]
        assert no_ping == [], f"pods that cannot ping across nodes: {no_ping}"
        natted = {f"{s.name}->{d.name}": seen for s, d in pairs if (seen := seen_source(s.ns, d.ip)) != s.ip}
        assert natted == {}, f"pod-to-pod traffic was NATed (destination saw these sources): {natted}"
        lan = {p.name: seen_source(p.ns, LAN_GATEWAY) for p in pods}
        assert lan == {p.name: p.node.lan_ip for p in pods}, "pod-to-LAN traffic must leave as the node's address"
    finally:
        for e in echoes:
            e.stop()


# --- 1. three nodes in nftables mode ----------------------------------------------------------------------


def test_three_nodes_nftables_mode(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=3)
    start(c, NFT_CONFIG)
    for n in c.nodes:
        assert nft_mode_ok(c, n), (n.name, flannel_tables(n.ns), iptables_flannel_chains(n.ns))
        assert log_count(n, "using nftables: EnableNFTables is true in the network config") == 1
    check_traffic(c)


DUAL_CONFIG = ('{"Network": "100.64.0.0/16", "EnableIPv6": true, "IPv6Network": "fd64::/48", "IPv6SubnetLen": 64, '
               '"EnableNFTables": true, "Backend": {"Type": "vxlan"}}')


def add_pods6(c: Cluster, node: Node, subnet6: str) -> dict[str, str]:
    """IPv6 on the node's pod bridge and pods, inside the node's FLANNEL_IPV6_SUBNET; pod name -> address."""
    net = ip_interface(subnet6).network
    out: dict[str, str] = {}
    c.exec(node.ns, ["ip", "-6", "addr", "add", f"{net.network_address + 1}/{net.prefixlen}", "dev", "docker0",
                     "nodad"])
    for j, pod in enumerate(node.pods, start=2):
        ip6 = str(net.network_address + j)
        c.exec(pod.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.eth0.disable_ipv6=0"])
        c.exec(pod.ns, ["ip", "-6", "addr", "add", f"{ip6}/{net.prefixlen}", "dev", "eth0", "nodad"])
        c.exec(pod.ns, ["ip", "-6", "route", "add", "default", "via", str(net.network_address + 1)])
        out[pod.name] = ip6
    return out


def test_three_nodes_nftables_mode_dual_stack(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=3)
    dualstack.enable_lan6(c)
    c.start_etcd()
    c.put_config(DUAL_CONFIG)
    for n in c.nodes:
        c.start_flanneld(n, RESYNC)
    for n in c.nodes:
        c.wait_subnet_env(n)
    # The first thing that is missing today: an IPv6 subnet for the node.
    envs = {n.name: wait_for(lambda n=n: "FLANNEL_IPV6_SUBNET" in (e := c.read_subnet_env(n)) and e, 10,
                             f"{n.name}: FLANNEL_IPV6_SUBNET in subnet.env") for n in c.nodes}
    wait_converged(c, timeout=30)
    ip6: dict[str, str] = {}
    for n in c.nodes:
        c.add_pods(n, 1)
        ip6 |= add_pods6(c, n, envs[n.name]["FLANNEL_IPV6_SUBNET"])
        spec = {**spec_of(c, n), "network6": envs[n.name]["FLANNEL_IPV6_NETWORK"],
                "subnet6": str(ip_interface(envs[n.name]["FLANNEL_IPV6_SUBNET"]).network)}
        wait_for(lambda n=n, spec=spec: firewall(n.ns, "nftables", "missing", spec) == [], 10,
                 f"{n.name}: flannel-ipv4 and flannel-ipv6 as the dual-stack spec says")
        assert iptables_flannel_chains(n.ns) == []
    check_traffic(c)
    pods = [p for n in c.nodes for p in n.pods]
    echoes = [SourceEcho(p.ns, ip6[p.name]) for p in pods] + [SourceEcho(c.lan_ns, "fd18::1")]
    try:
        pairs = [(s, d) for s in pods for d in pods if s.node is not d.node]
        assert [f"{s.name}->{d.name}" for s, d in pairs if not dualstack.ping6(c, s.ns, ip6[d.name])] == []
        assert {f"{s.name}->{d.name}": seen_source(s.ns, ip6[d.name]) for s, d in pairs} == {
            f"{s.name}->{d.name}": ip6[s.name] for s, d in pairs}
        assert {p.name: seen_source(p.ns, "fd18::1") for p in pods} == {
            p.name: dualstack.node_ip6(p.node) for p in pods}
    finally:
        for e in echoes:
            e.stop()


# --- 2. iptables -> nftables -> iptables on running nodes ----------------------------------------------------


@pytest.mark.skipif(not have("iptables-save"), reason=IPTABLES_MISSING)
def test_switch_modes_via_etcd_without_loss(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=2)
    n1, n2 = c.nodes
    start(c, UNSET_CONFIG)
    for n in c.nodes:
        assert ipt_mode_ok(n), (n.name, iptables_flannel_chains(n.ns), flannel_tables(n.ns))
    src, dst = n1.pods[0], n2.pods[0]
    echoes = [SourceEcho(dst.ns, dst.ip), SourceEcho(c.lan_ns, LAN_GATEWAY)]
    probes: dict[str, Any] = {}
    try:
        probes = {
            "ping pod->pod": TimedPing(src.ns, dst.ip),
            "ping pod->LAN": TimedPing(src.ns, LAN_GATEWAY),
            "ping pod->LAN (n2)": TimedPing(dst.ns, LAN_GATEWAY),
            "flows pod->pod": FlowProbe(src.ns, dst.ip, expect=src.ip),
            "flows pod->LAN": FlowProbe(src.ns, LAN_GATEWAY, expect=n1.lan_ip),
            "flows pod->LAN (n2)": FlowProbe(dst.ns, LAN_GATEWAY, expect=n2.lan_ip),
        }
        time.sleep(2)
        c.put_config(NFT_CONFIG)
        for n in c.nodes:
            wait_for(lambda n=n: nft_mode_ok(c, n), 30, f"{n.name} to switch to nftables")
        time.sleep(3)
        c.put_config(IPT_CONFIG)
        for n in c.nodes:
            wait_for(lambda n=n: ipt_mode_ok(n), 30, f"{n.name} to switch back to iptables")
        time.sleep(3)
    finally:
        results = {name: p.stop() for name, p in probes.items()}
        for e in echoes:
            e.stop()
    report: dict[str, Any] = {}
    for name, r in results.items():
        if name.startswith("ping"):
            report[name] = {"sent": r["sent"], "lost": len(r["lost"]),
                            "lost_at": [f"seq {q} {wallclock(t)}" for q, t in r["lost"][:10]]}
        else:
            report[name] = {"tried": r["tried"], "bad": len(r["bad"]), "seen": r["seen"],
                            "bad_at": [f"{wallclock(t)} {s}" for t, s in r["bad"][:10]]}
    print("mode switch traffic:", json.dumps(report, indent=1))
    for n in c.nodes:
        assert log_count(n, "switching firewall mode in place") == 2, n.name
        assert c.flanneld_process(n).poll() is None, f"{n.name}: flanneld exited"  # type: ignore[union-attr]
    assert all(v.get("lost", 0) == 0 and v.get("bad", 0) == 0 for v in report.values()), report
    assert all(v.get("sent", 21) > 20 and v.get("tried", 21) > 20 for v in report.values()), report
    check_traffic(c)


# --- 3. no iptables on the node ------------------------------------------------------------------------------


def test_node_without_iptables_picks_nftables(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(nodes=2)
    n1, n2 = c.nodes
    start(c, UNSET_CONFIG, wrappers={"n2": hidden_iptables()})
    why = "using nftables: EnableNFTables is not set and iptables is unusable here (iptables not found on PATH)"
    assert log_count(n2, why) == 1, n2.flanneld_log.read_text()[-2000:]
    assert log_count(n2, "iptables is unusable") == 1
    assert nft_mode_ok(c, n2), (flannel_tables(n2.ns), iptables_flannel_chains(n2.ns))
    if have("iptables-save"):
        assert ipt_mode_ok(n1), (iptables_flannel_chains(n1.ns), flannel_tables(n1.ns))
    check_traffic(c)
    time.sleep(2.5)  # a few resync periods: the reason is not repeated, nothing is rewritten
    assert log_count(n2, "iptables is unusable") == 1
    assert log_count(n2, "recreating") == 0


# --- 4. a table deleted by hand comes back ---------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["ip flannel-ipv4", "ip6 flannel-ipv6"])
def test_deleted_table_comes_back_within_resync(make_cluster: Callable[..., Cluster], victim: str) -> None:
    c = make_cluster(nodes=1)
    (n1,) = c.nodes
    start(c, NFT_CONFIG)
    before = flannel_tables(n1.ns)
    assert set(before) == BOTH_TABLES
    run_in(n1.ns, ["nft", "delete", "table", *victim.split()])
    assert set(flannel_tables(n1.ns)) == BOTH_TABLES - {tuple(victim.split())}
    # -iptables-resync=1: back within a period or two; the bound is only there so a broken daemon fails.
    wait_for(lambda: flannel_tables(n1.ns) == before, 15, f"table {victim} to come back")
    assert firewall(n1.ns, "nftables", "missing", spec_of(c, n1)) == []
    wait_for(lambda: log_count(n1, f"table {victim} is missing; recreating") == 1, 5, "the repair to be logged")
    (pod,) = n1.pods
    echo = SourceEcho(c.lan_ns, LAN_GATEWAY)
    try:
        assert seen_source(pod.ns, LAN_GATEWAY) == n1.lan_ip
    finally:
        echo.stop()
