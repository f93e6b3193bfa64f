"""Bad input from outside on a running cluster: corrupt leases in etcd, an unwritable subnet file.

Anyone with write access to the etcd prefix can put any key and any value there. None of it may
crash a daemon, install a route over the node's own subnet or its LAN, or stop pods from talking;
each bad key is logged once (not on every resync), naming the key.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2 import IPRoute
from support.cluster import Cluster, Node

from pyflannel.core.backends.vxlan import select_peers
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData

from .conftest import (
    LAN,
    NETWORK,
    SUBNETS,
    RouteMonitor,
    alive,
    assert_alive,
    bad_route_lines,
    etcd_py,
    etcdctl,
    expected,
    flanneld_log,
    kernel,
    leases,
    missing_routes,
    own_subnet,
    ping_pods,
    scenario,
    wait_for,
)

pytestmark = pytest.mark.root
RESYNC = 3  # seconds; short so that "once" is checked across several periodic passes


def vx(public_ip: str, mac: str = "0e:00:00:00:aa:01", **extra: object) -> str:
    d: dict[str, object] = {"PublicIP": public_ip, "PublicIPv6": None, "BackendType": "vxlan",
                            "BackendData": {"VNI": 1, "VtepMAC": mac}}
    d.update(extra)
    return json.dumps(d, separators=(",", ":"))


def name_re(name: str) -> re.Pattern[str]:
    """Lines naming a key by its last path element (not a longer key that contains it).

    The daemon logs a key longer than about 100 characters shortened, so such a name is matched on
    its start.
    """
    if len(name) > 80:
        return re.compile(r"(?<![\w.])" + re.escape(name[:60]))
    return re.compile(r"(?<![\w.])" + re.escape(name) + r"(?![\w])")


def count_lines(text: str, name: str) -> int:
    rx = name_re(name)
    return sum(1 for line in text.splitlines() if rx.search(line))


def restore_by_hand_deleted_route(c: Cluster, node: Node, peer: IPv4Network, timeout: float) -> float:
    """Delete the route to ``peer`` by hand and wait until a periodic pass puts it back; returns the delay.

    A hand deletion makes no etcd event, so only the periodic full resync can restore it: this proves
    at least one resync ran after the bad leases went in.
    """
    with IPRoute(netns=node.ns, flags=0) as ipr:
        (i,) = ipr.link_lookup(ifname="flannel.1")
        ipr.route("del", dst=str(peer), gateway=str(peer.network_address), oif=i)
    t0 = time.monotonic()
    wait_for(lambda: str(peer) in {r[0] for r in kernel(node.ns)["routes"]}, timeout,
             f"{node.name}: the periodic resync to restore the route to {peer}")
    return time.monotonic() - t0


def test_corrupt_peer_leases_are_ignored_once_and_pods_keep_talking(
    cluster_factory: Callable[..., Cluster],
) -> None:
    with scenario("8a corrupt peer leases (18 bad keys) on a running cluster", peers=2) as row:
        c = cluster_factory(nodes=3, extra_args=(f"-resync-period={RESYNC}",))
        for n in c.nodes:
            c.add_pods(n, 1)
        n1, n2, n3 = c.nodes
        own = {n.name: own_subnet(c, n) for n in c.nodes}
        s1 = own["n1"]
        free = [s for s in NETWORK.subnets(new_prefix=24) if s not in own.values()][150:]

        def key(sn: IPv4Network) -> str:
            return f"{sn.network_address}-{sn.prefixlen}"

        # name (last path element) -> value; plus which nodes must log it (all, unless said otherwise)
        bad: dict[str, str] = {
            key(free[0]): "this is not JSON {",
            key(free[1]): '"a JSON string, not an object"',
            key(free[2]): '{"PublicIP": 5, "BackendType": "vxlan"}',
            key(free[3]): vx("198.18.0.300"),
            key(free[4]): vx("198.18.0.61", mac="zz:zz:zz:zz:zz:zz"),
            key(free[5]): '{"PublicIP":"198.18.0.62","BackendType":"vxlan","BackendData":{"VNI":"1","VtepMAC":42}}',
            key(free[6]): vx("198.18.0.63", Pad="A" * (1 << 20)),  # 1 MiB value
            key(free[7]): '{"PublicIP":"198.18.0.64","BackendType":"vxlan","BackendData":'
                          + "[" * 5000 + "]" * 5000 + "}",
            "not-a-subnet": vx("198.18.0.65"),
            "100.64.300.0-24": vx("198.18.0.66"),
            "100.64.7.0-99": vx("198.18.0.67"),
            "1." + "1" * 3000: vx("198.18.0.68"),  # made the key regex backtrack for seconds
            "100.64.7.0-" + "9" * 5000: vx("198.18.0.69"),  # int() refused it with a bare ValueError
            key(IPv4Network(f"{s1.network_address + 128}/25")): vx("198.18.0.70", mac="0e:00:00:00:aa:02"),
            key(NETWORK): vx("198.18.0.71", mac="0e:00:00:00:aa:03"),  # covers every node's subnet
            key(LAN): vx("198.18.0.72", mac="0e:00:00:00:aa:04"),  # the node LAN
        }
        binary_name = key(free[8])  # a value that is not UTF-8 at all
        impostor = key(free[9])  # another key claiming n1's PublicIP, with an etcd lease like a real node's
        mon = RouteMonitor(c)
        try:
            for name, value in bad.items():
                etcdctl(c, "put", SUBNETS + name, input=value)
            etcd_py(c, f"await c.put('{SUBNETS}{binary_name}', b'\\xff\\xfe{{\"PublicIP\":\\x00')")
            lease_id = etcdctl(c, "lease", "grant", "600").stdout.split()[1]
            etcdctl(c, "put", f"--lease={lease_id}", SUBNETS + impostor, vx(n1.lan_ip, mac="0e:00:00:00:aa:05"))
            names = [*bad, binary_name]

            time.sleep(1.0)
            assert_alive(c)
            # Prove periodic passes ran after the bad input: a hand-deleted route comes back only then.
            delay = restore_by_hand_deleted_route(c, n1, own["n2"], RESYNC + 3)
            time.sleep(RESYNC + 0.5)  # and one more full period on every node
            assert_alive(c)
        finally:
            seen = mon.stop()

        for n in c.nodes:
            lines = bad_route_lines(seen[n.name], own[n.name], [LAN])
            assert lines == [], f"{n.name} installed routes over its own subnet or the LAN: {lines}"
            for r in kernel(n.ns)["routes"]:
                dst = IPv4Network(r[0])
                assert not dst.overlaps(own[n.name]) and not dst.overlaps(LAN), (n.name, r)

        logs = {n.name: flanneld_log(n) for n in c.nodes}
        problems = []
        for n in c.nodes:
            for name in names:
                got = count_lines(logs[n.name], name)
                if got != 1:
                    problems.append(f"{n.name}: {name[:40]!r} named in {got} log lines, want 1")
            got = count_lines(logs[n.name], impostor)
            want = 1 if n is n1 else 0  # only n1 sees its own PublicIP claimed; to n2/n3 it is a valid peer
            if got != want:
                problems.append(f"{n.name}: impostor {impostor} named in {got} log lines, want {want}")
        assert problems == [], "\n".join(problems)
        assert "PublicIP 198.18.0.11 is our own" in logs["n1"]
        assert "Traceback" not in "".join(logs.values())

        row.routes_lost = missing_routes(c)
        sent, lost, failed = ping_pods(c, count=3)
        row.pings_sent, row.pings_lost = sent, lost
        row.note = (f"{len(names) + 1} bad keys; each logged once per node over >=2 resyncs of {RESYNC}s "
                    f"(hand-deleted route restored after {delay:.1f}s); no route over own subnet/LAN")
        assert row.routes_lost == 0
        assert failed == [], f"pods that could not reach each other: {failed}"

    with scenario("8b node restart while an impostor lease claims its PublicIP", peers=2) as row:
        log_mark = len(flanneld_log(n1))
        before_env = n1.subnet_file.read_text()
        assert c.stop_flanneld(n1, signal.SIGTERM) == 0
        c.start_flanneld(n1, (f"-resync-period={RESYNC}",))
        wait_for(lambda: "Running: lease" in flanneld_log(n1)[log_mark:], 20, "n1's flanneld to be running again")
        assert n1.subnet_file.read_text() == before_env
        ls = leases(c)
        assert json.loads(ls[SUBNETS + key(s1)])["PublicIP"] == n1.lan_ip  # n1 kept its own subnet
        assert json.loads(ls[SUBNETS + impostor])["PublicIP"] == n1.lan_ip  # the impostor is left alone
        wait_for(lambda: expected(c, n1)["routes"] <= kernel(n1.ns)["routes"], 15, "n1's routes")
        assert count_lines(flanneld_log(n1)[log_mark:], impostor) == 1
        assert_alive(c)
        row.routes_lost = missing_routes(c)
        sent, lost, failed = ping_pods(c, count=3)
        row.pings_sent, row.pings_lost = sent, lost
        row.note = f"n1 kept {s1} (impostor {impostor} with n1's PublicIP and an etcd lease left in place)"
        assert row.routes_lost == 0
        assert failed == [], f"pods that could not reach each other: {failed}"


def test_unwritable_subnet_file_is_retried(cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    with scenario("10b subnet file unwritable (parent is a regular file), then fixed", peers=0) as row:
        node_dir = tmp_path / "cluster" / "n1"  # where cluster_factory's node n1 keeps its files
        node_dir.mkdir(parents=True)
        blocker = node_dir / "blocked"
        blocker.write_text("I am a file, not a directory\n")
        target = blocker / "subnet.env"
        c = cluster_factory(nodes=1, extra_args=(f"-subnet-file={target}",), config=None)
        n1 = c.nodes[0]
        assert n1.dir == node_dir
        log_mark = 0
        c.put_config('{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}')
        wait_for(lambda: f"Failed to write subnet file {target}" in flanneld_log(n1)[log_mark:], 20,
                 "the subnet file error")
        wait_for(lambda: "Running: lease" in flanneld_log(n1)[log_mark:], 20, "flanneld to be running")
        time.sleep(11)  # past one default resync period (10 s): still running, error not repeated
        assert alive(c, n1)
        text = flanneld_log(n1)[log_mark:]
        errors = [line for line in text.splitlines() if "Failed to write subnet file" in line]
        assert len(errors) == 1, errors
        assert str(target) in errors[0] and ("Not a directory" in errors[0] or "File exists" in errors[0])
        assert "Traceback" not in text
        assert len(leases(c)) == 1  # the lease is held meanwhile

        blocker.unlink()
        t0 = time.monotonic()
        wait_for(target.exists, 12, "the subnet file to appear within a resync period")
        took = time.monotonic() - t0
        assert (target.stat().st_mode & 0o777) == 0o644
        assert target.read_text().startswith("FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.")
        wait_for(lambda: "can be written again" in flanneld_log(n1)[log_mark:], 5, "the recovery line")
        assert alive(c, n1)
        row.note = f"one error line naming {target.name}'s path; file written {took:.1f}s after the fix"


# ------------------------------------------------------------------------------------------------
# A lease of another size over a node's subnet (no root needed for the first two)


def _vx_lease(subnet: str, public_ip: str, mac: str) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(public_ip), backend_type="vxlan",
                                                 backend_data=VxlanData(1, mac).to_json()))


def test_prefer_len_keeps_node_sized_leases_over_a_supernet_or_a_sliver() -> None:
    own = _vx_lease("100.64.67.0/24", "198.18.0.11", "02:00:00:00:00:11")
    n2 = _vx_lease("100.64.6.0/24", "198.18.0.12", "02:00:00:00:00:12")
    n3 = _vx_lease("100.64.9.0/24", "198.18.0.13", "02:00:00:00:00:13")
    supernet = _vx_lease("100.64.6.0/23", "198.18.0.99", "02:00:00:00:00:99")
    sliver = _vx_lease("100.64.9.4/30", "198.18.0.98", "02:00:00:00:00:98")
    free = _vx_lease("100.64.40.0/23", "198.18.0.97", "02:00:00:00:00:97")  # overlaps no node: kept
    leases = [supernet, n2, sliver, n3, free]
    # The default keeps the first by subnet order: the supernet wins over n2 (the pinned behaviour).
    peers, _ = select_peers(own, leases, NETWORK)
    assert supernet in [p.lease for p in peers] and n2 not in [p.lease for p in peers]
    peers, rejected = select_peers(own, leases, NETWORK, prefer_len=24)
    assert [p.lease for p in peers] == [n2, n3, free]
    assert sorted(r.reason for r in rejected) == [
        "subnet 100.64.6.0/23 overlaps peer 100.64.6.0/24",
        "subnet 100.64.9.4/30 overlaps peer 100.64.9.0/24",
    ]


# Any aligned block inside 100.64.0.0/16, from /16 to /30.
_any_subnet = st.builds(
    lambda a, n: IPv4Network(((0x64400000 | a) & (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF, n)),
    st.integers(0, 0xFFFF), st.integers(16, 30),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_any_subnet, st.integers(12, 250)), max_size=12))
def test_prefer_len_never_keeps_overlapping_peers(items: list[tuple[IPv4Network, int]]) -> None:
    own = _vx_lease("100.64.255.0/24", "198.18.0.11", "02:00:00:00:00:11")
    leases = [_vx_lease(str(sn), f"198.18.1.{h}", f"02:00:00:00:01:{h:02x}") for sn, h in items]
    peers, rejected = select_peers(own, leases, NETWORK, prefer_len=24)
    subnets = [p.lease.subnet for p in peers]
    assert all(a is b or not a.overlaps(b) for a in subnets for b in subnets)
    assert len(peers) + len(rejected) == len([le for le in leases if le.subnet != own.subnet])
    # Every /24 is kept unless it duplicates another /24 (same subnet) or overlaps our own subnet.
    for le in leases:
        if le.subnet.prefixlen == 24 and not le.subnet.overlaps(own.subnet):
            assert le.subnet in subnets
    assert subnets == sorted(subnets, key=lambda s: (int(s.network_address), s.prefixlen))


def test_supernet_lease_over_a_node_does_not_cut_it_off(cluster_factory: Callable[..., Cluster]) -> None:
    with scenario("8c supernet lease (/23) over a node's /24", peers=1) as row:
        c = cluster_factory(nodes=2)
        for n in c.nodes:
            c.add_pods(n, 1)
        n1, n2 = c.nodes
        s1 = own_subnet(c, n1)
        sup = s1.supernet(new_prefix=23)
        etcdctl(c, "put", f"{SUBNETS}{sup.network_address}-23", vx("198.18.0.99", mac="0e:00:00:00:bb:01"))
        time.sleep(2)
        assert_alive(c)
        row.routes_lost = missing_routes(c)
        sent, lost, failed = ping_pods(c, count=3)
        row.pings_sent, row.pings_lost = sent, lost
        row.note = (f"{sup} put by hand over n1's {s1}: the node-sized lease wins on n2, the /23 is reported "
                    "as overlapping; n1 stays reachable")
        assert row.routes_lost == 0 and failed == []
