"""The vxlan data plane on a real kernel: 3 nodes in network namespaces, a real etcd, real flanneld.

Checks what reference-state.md says Go flanneld v0.20.2 produces (etcd values, device, address, routes,
neighbours, FDB, iptables-save, subnet.env), plus connectivity, NAT, hitless restarts, peers leaving,
bursts of lease changes and hand-made drift.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from support.checks import (
    etcd_py,
    expected,
    kernel,
    leases,
    own_subnet,
    start_cluster,
    wait_converged,
    wait_for,
)
from support.cluster import Cluster, destroy_prefix

pytestmark = pytest.mark.root
LEASE_RE = re.compile(
    r'^\{"PublicIP":"(198\.18\.0\.\d+)","PublicIPv6":null,"BackendType":"vxlan",'
    r'"BackendData":\{"VNI":1,"VtepMAC":"([0-9a-f]{2}(?::[0-9a-f]{2}){5})"\}\}$'
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    import os
    import shutil

    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("etcd"):
        pytest.skip("needs root, iproute2 and etcd (creates network namespaces)")
    prefix = f"pfv{secrets.token_hex(2)}"
    c = start_cluster(prefix, tmp_path_factory.mktemp("vx"))
    try:
        for n in c.nodes:
            c.add_pods(n, 2)
        yield c
    finally:
        c.down()
        destroy_prefix(prefix)


@pytest.fixture
def fresh(netns_prefix: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def factory(nodes: int = 3, extra: tuple[str, ...] = ()) -> Cluster:
        c = start_cluster(netns_prefix, tmp_path / "c", nodes, extra)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.down()


def test_every_pod_pings_every_pod_on_other_nodes(cluster: Cluster) -> None:
    failures = [
        (a.name, b.name)
        for a in cluster.pods
        for b in cluster.pods
        if a.node is not b.node and not cluster.ping(a, b.ip, count=2, timeout=2)
    ]
    assert failures == []


def test_state_matches_reference(cluster: Cluster) -> None:
    ls = leases(cluster)
    assert len(ls) == 3
    macs = {}
    for key, value in ls.items():
        m = LEASE_RE.match(value)
        assert m, f"lease value not in flanneld's byte format: {value}"
        macs[m.group(1)] = m.group(2)
        assert re.fullmatch(r"/coreos\.com/network/subnets/100\.64\.\d+\.0-24", key)
    for n in cluster.nodes:
        sn = own_subnet(cluster, n)
        assert n.subnet_file.read_text() == (
            f"FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET={sn.network_address + 1}/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        )
        assert (n.subnet_file.stat().st_mode & 0o777) == 0o644
        with IPRoute(netns=n.ns, flags=0) as ipr:
            (link,) = ipr.link("get", ifname="flannel.1")
            data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
            (eth0,) = ipr.link_lookup(ifname="eth0")
            addrs = [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.addr("dump", family=2, index=link["index"])]
        assert link.get("IFLA_LINKINFO").get("IFLA_INFO_KIND") == "vxlan"
        assert data.get("IFLA_VXLAN_ID") == 1
        assert data.get("IFLA_VXLAN_LOCAL") == n.lan_ip
        assert data.get("IFLA_VXLAN_LINK") == eth0
        assert data.get("IFLA_VXLAN_PORT") == 8472
        assert data.get("IFLA_VXLAN_LEARNING") == 0
        assert link.get("IFLA_MTU") == 1450
        assert link.get("IFLA_ADDRESS") == macs[n.lan_ip]
        assert int(link.get("IFLA_ADDRESS")[:2], 16) & 0x03 == 0x02  # locally administered unicast
        assert addrs == [(str(sn.network_address), 32)]
        assert kernel(n.ns) == expected(cluster, n, ls)
        save = cluster.exec(n.ns, ["iptables-save"]).stdout
        body = [line for line in save.splitlines() if "flanneld" in line]
        assert body == [
            '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
            '-A FLANNEL-FWD -s 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
            '-A FLANNEL-FWD -d 100.64.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
            '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
            '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
            '-A FLANNEL-POSTRTG -s 100.64.0.0/16 -d 100.64.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
            '-A FLANNEL-POSTRTG -s 100.64.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
            "-j MASQUERADE --random-fully",
            f'-A FLANNEL-POSTRTG ! -s 100.64.0.0/16 -d {sn} -m comment --comment "flanneld masq" -j RETURN',
            '-A FLANNEL-POSTRTG ! -s 100.64.0.0/16 -d 100.64.0.0/16 -m comment --comment "flanneld masq" '
            "-j MASQUERADE --random-fully",
        ]
        assert ":FORWARD ACCEPT" in save


def _udp_source(cluster: Cluster, src_ns: str, dst_ns: str, dst_ip: str) -> str:
    """Send one UDP datagram src->dst and return the source address the receiver saw."""
    port = 40000 + secrets.randbelow(20000)
    recv = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.bind(('0.0.0.0',{port}));s.settimeout(5);d,a=s.recvfrom(64);print(a[0])"
    )
    p = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", recv], stdout=subprocess.PIPE,
                         text=True)
    try:
        time.sleep(0.3)
        send = (
            "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for _ in range(5):\n    s.sendto(b'x',('{dst_ip}',{port}));time.sleep(0.1)"
        )
        cluster.exec(src_ns, [sys.executable, "-c", send])
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    return out.strip()


def test_pod_to_pod_is_not_natted_but_pod_to_lan_is(cluster: Cluster) -> None:
    a, b = cluster.nodes[0].pods[0], cluster.nodes[2].pods[0]
    assert _udp_source(cluster, a.ns, b.ns, b.ip) == a.ip
    n3 = cluster.nodes[2]
    assert _udp_source(cluster, a.ns, n3.ns, n3.lan_ip) == cluster.nodes[0].lan_ip


def test_restart_keeps_subnet_and_mac_and_loses_no_packet(cluster: Cluster) -> None:
    n1 = cluster.nodes[0]
    src, dst = cluster.nodes[1].pods[0], n1.pods[0]
    before_env = n1.subnet_file.read_text()
    before_lease = leases(cluster)
    ping = subprocess.Popen(
        ["ip", "netns", "exec", src.ns, "ping", "-q", "-i", "0.01", "-c", "600", "-W", "1", dst.ip],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            rc = cluster.stop_flanneld(n1, sig)
            assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
            cluster.start_flanneld(n1)
            wait_for(lambda: "Running: lease" in n1.flanneld_log.read_text().split("CLI flags config")[-1], 15,
                     "flanneld to be running again")
        out, _ = ping.communicate(timeout=30)
    finally:
        if ping.poll() is None:
            ping.kill()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m and m.group(1) == m.group(2) == "600", out
    assert n1.subnet_file.read_text() == before_env
    assert leases(cluster) == before_lease  # same subnet, same VtepMAC
    wait_converged(cluster)


def test_node_leaves_and_peers_drop_it(fresh: Callable[..., Cluster]) -> None:
    c = fresh()
    n1, n2, n3 = c.nodes
    gone = own_subnet(c, n3)
    c.stop_flanneld(n3)
    c.etcdctl("del", f"/coreos.com/network/subnets/{gone.network_address}-24")
    wait_converged(c, nodes=[n1, n2])
    for n in (n1, n2):
        assert str(gone) not in {r[0] for r in kernel(n.ns)["routes"]}
        assert len(kernel(n.ns)["routes"]) == 1


def test_peer_that_left_while_node_was_down_is_removed_at_start(fresh: Callable[..., Cluster]) -> None:
    c = fresh()
    n1, n2, n3 = c.nodes
    gone = own_subnet(c, n3)
    assert str(gone) in {r[0] for r in kernel(n1.ns)["routes"]}
    c.stop_flanneld(n1)
    c.stop_flanneld(n3)
    c.etcdctl("del", f"/coreos.com/network/subnets/{gone.network_address}-24")
    time.sleep(0.5)
    assert str(gone) in {r[0] for r in kernel(n1.ns)["routes"]}  # nobody cleaned it while n1 was down
    c.start_flanneld(n1)
    wait_converged(c, nodes=[n1])
    k = kernel(n1.ns)
    assert {r[0] for r in k["routes"]} == {str(own_subnet(c, n2))}
    assert len(k["neigh"]) == 1 and len(k["fdb"]) == 1


def test_bursts_of_fifty_in_one_txn_and_fifty_deletes(fresh: Callable[..., Cluster]) -> None:
    c = fresh()
    taken = {own_subnet(c, n) for n in c.nodes}
    free = [IPv4Network(f"100.64.{i}.0/24") for i in range(1, 256)]
    synth = [s for s in free if s not in taken][:50]
    puts = ",".join(
        f'{{"request_put": {{"key": _b64("/coreos.com/network/subnets/{s.network_address}-24"), '
        f'"value": _b64(\'{{"PublicIP":"198.18.1.{i + 1}","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:01:{i + 1:02x}"}}}}\'), "lease": str(lid)}}}}'
        for i, s in enumerate(synth)
    )
    etcd_py(c, f"lid, _ = await c.lease_grant(3600)\nawait c.txn({{'compare': [], 'success': [{puts}], "
               "'failure': []})")
    wait_converged(c)
    for n in c.nodes:
        assert len(kernel(n.ns)["routes"]) == 52
    keys = [f"/coreos.com/network/subnets/{s.network_address}-24" for s in synth]
    etcd_py(c, f"for k in {keys!r}:\n    await c.delete(k)")
    wait_converged(c)
    for n in c.nodes:
        assert len(kernel(n.ns)["routes"]) == 2


def test_hand_deleted_entries_come_back(fresh: Callable[..., Cluster]) -> None:
    c = fresh(nodes=2)
    n1, n2 = c.nodes
    peer = own_subnet(c, n2)
    want = kernel(n1.ns)
    with IPRoute(netns=n1.ns, flags=0) as ipr:
        (i,) = ipr.link_lookup(ifname="flannel.1")
        ipr.route("del", dst=str(peer), gateway=str(peer.network_address), oif=i)
        (mac, dst, _, _) = next(iter(want["fdb"]))
        ipr.fdb("del", ifindex=i, lladdr=mac, dst=dst)
        ipr.neigh("del", dst=str(peer.network_address), lladdr=mac, ifindex=i)
    # Repaired from the rtnetlink notifications, not by a periodic dump (the resync timer is minutes).
    wait_for(lambda: kernel(n1.ns) == want, 5, "the deletion notifications to restore the entries")
    log = n1.flanneld_log.read_text()
    for what in (f"replace route {peer}", f"replace fdb {mac}", f"replace neigh {peer.network_address}"):
        assert what in log, f"no repair logged for {what}"


def _vtep(ns: str) -> tuple[int, str]:
    with IPRoute(netns=ns, flags=0) as ipr:
        (i,) = ipr.link_lookup(ifname="flannel.1")
        return i, ipr.link("get", index=i)[0].get("IFLA_ADDRESS")


def test_vtep_mac_changed_by_hand_is_set_back(fresh: Callable[..., Cluster]) -> None:
    """The published VtepMAC is what peers send to: a device MAC changed by hand is put back, the lease unchanged."""
    c = fresh(nodes=2)
    n1, n2 = c.nodes
    i, published = _vtep(n1.ns)
    with IPRoute(netns=n1.ns, flags=0) as ipr:
        ipr.link("set", index=i, address="0a:11:22:33:44:55")
    wait_for(lambda: _vtep(n1.ns)[1] == published, 5, "the daemon to set the published VtepMAC back")
    assert "setting it back" in n1.flanneld_log.read_text()
    assert cluster_ping(c, n2, n1)


def test_vtep_recreated_by_hand_with_another_mac_is_mended(fresh: Callable[..., Cluster]) -> None:
    c = fresh(nodes=2)
    n1, n2 = c.nodes
    i, published = _vtep(n1.ns)
    with IPRoute(netns=n1.ns, flags=0) as ipr:
        (eth0,) = ipr.link_lookup(ifname="eth0")
        ipr.link("del", index=i)
        ipr.link("add", ifname="flannel.1", kind="vxlan", vxlan_id=1, vxlan_link=eth0, vxlan_local=n1.lan_ip,
                 vxlan_learning=0, address="0a:66:77:88:99:aa")
    wait_for(lambda: _vtep(n1.ns)[1] == published and kernel(n1.ns)["routes"], 10,
             "the daemon to mend the re-created device and reinstall its routes")
    assert cluster_ping(c, n2, n1)


def cluster_ping(c: Cluster, a_node: object, b_node: object) -> bool:
    """n2 -> n1's flannel.1 address (through the overlay)."""
    sn = own_subnet(c, b_node)  # type: ignore[arg-type]
    return bool(c.exec(a_node.ns, ["ping", "-c", "2", "-W", "2", str(sn.network_address)],  # type: ignore[attr-defined]
                       check=False).returncode == 0)
