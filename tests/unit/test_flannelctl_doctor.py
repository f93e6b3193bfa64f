"""doctor's checks and status's drift/MTU report as pure functions of made-up node facts.

``healthy()`` is a node as the netns cluster builds it (n1 of reference-state.md); each test breaks one
thing and expects exactly that check to turn warn or fail, with a fix hint.
"""

from __future__ import annotations

import dataclasses
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import SimpleNamespace
from typing import Any

import pytest

from pyflannel.adapters.netlink import LinkInfo
from pyflannel.adapters.registry import EtcdLease
from pyflannel.core.backends import vxlan
from pyflannel.core.config import parse_config
from pyflannel.core.lease import LeaseAttrs, VxlanData
from pyflannel.core.model import LiveVxlanLink, PeerState, Route
from pyflannel.core.rules import ChainSpec, forward_chain, masq_chain, quote
from pyflannel.ctl import doctor, status
from pyflannel.ctl.node import EndpointHealth, HostRoute, NodeFacts

NET = IPv4Network("100.64.0.0/16")
OWN = IPv4Network("100.64.67.0/24")
PEER = IPv4Network("100.64.81.0/24")
OPTS = SimpleNamespace(iptables_forward_rules=True, resync_period=10, subnet_lease_renew_margin=60)


def vx_lease(sub: IPv4Network, ip: str, mac: str, lease_id: int = 9) -> EtcdLease:
    attrs = LeaseAttrs(IPv4Address(ip), backend_type="vxlan", backend_data=VxlanData(1, mac).to_json())
    return EtcdLease.make(sub, attrs, None, lease_id, None, 5)


def save(table: str, specs: list[ChainSpec], policy: str = "ACCEPT") -> str:
    lines = [f"*{table}", f":{specs[0].parent} {policy} [0:0]"]
    for s in specs:
        lines.append(f":{s.chain} - [0:0]")
        lines.append(" ".join(["-A", s.parent, *map(quote, s.jump)]))
        lines += [" ".join(["-A", s.chain, *map(quote, r)]) for r in s.rules]
    return "\n".join([*lines, "COMMIT", ""])


def healthy() -> NodeFacts:
    own = vx_lease(OWN, "198.18.0.11", "b6:3a:f4:a5:6f:94")
    peer = vx_lease(PEER, "198.18.0.13", "2a:a3:22:0d:18:d9")
    eth0 = LinkInfo(2, "eth0", 1500, True, (IPv4Interface("198.18.0.11/24"),))
    dev = LiveVxlanLink("flannel.1", 5, "vxlan", 1, IPv4Address("198.18.0.11"), 2, 8472, False, False,
                        "b6:3a:f4:a5:6f:94", 1450, True, ("100.64.67.0/32",))
    docker0 = LinkInfo(6, "docker0", 1450, True, (IPv4Interface("100.64.67.1/24"),))
    peers, _ = vxlan.select_peers(own, [own, peer], NET, [eth0.addrs[0].network])
    desired = vxlan.desired_state("flannel.1", peers)
    return NodeFacts(
        subnet_file="/run/flannel/subnet.env",
        status_file="/run/flannel/pyflannel-status.json",
        env={"FLANNEL_NETWORK": str(NET), "FLANNEL_SUBNET": "100.64.67.1/24", "FLANNEL_MTU": "1450",
             "FLANNEL_IPMASQ": "true"},
        status={"pid": None, "last_sync": time.time() - 1, "last_sync_duration": 0.004, "passes": 3,
                "in_sync": True, "ready": True, "not_ready": []},
        config=parse_config('{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'),
        vopts=vxlan.VxlanOptions(),
        leases=[own, peer], own=own, own_ttl=86000,
        endpoints=[EndpointHealth("http://198.18.0.1:2379", True, "3.4.23", True, 20480, 9)],
        links=[LinkInfo(1, "lo", 65536, True, ()), eth0, LinkInfo(5, "flannel.1", 1450, True, ()), docker0],
        device=dev, uplink=eth0, peers=peers, desired=desired, actual=desired,
        routes=[
            HostRoute(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"), 2, "eth0", "default via 198.18.0.1"),
            HostRoute(IPv4Network("198.18.0.0/24"), None, 2, "eth0", "198.18.0.0/24 dev eth0"),
            HostRoute(OWN, None, 6, "docker0", "100.64.67.0/24 dev docker0"),
            HostRoute(PEER, IPv4Address("100.64.81.0"), 5, "flannel.1", "100.64.81.0/24 via 100.64.81.0"),
        ],
        peer_routes={"198.18.0.13": (2, "eth0")},
        sysctls={"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1",
                 "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.flannel.1.rp_filter": "0",
                 "net.ipv4.conf.eth0.rp_filter": "2"},
        iptables={"nat": save("nat", [masq_chain(NET, OWN, True)]), "filter": save("filter", [forward_chain(NET)])},
        tx_checksum=True, udp_ports={8472, 68}, kernel_release="6.1.0-18-amd64", now=time.time(),
    )


def by_name(f: NodeFacts) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(f, OPTS)}


def only_bad(f: NodeFacts) -> dict[str, str]:
    return {c.name: c.level for c in doctor.run_checks(f, OPTS) if c.level != "ok"}


def test_healthy_node_passes_every_check() -> None:
    checks = doctor.run_checks(healthy(), OPTS)
    assert {c.name: c.level for c in checks if c.level != "ok"} == {}
    text = doctor.render(checks)
    assert text.splitlines()[-1] == "17 checks: 0 failed, 0 warnings"
    assert "[ OK ] ip_forward" in text


@pytest.mark.parametrize(
    ("breakage", "name", "level", "hint"),
    [
        (lambda f: f.sysctls.update({"net.ipv4.ip_forward": "0"}), "ip_forward", "fail",
         "sysctl -w net.ipv4.ip_forward=1"),
        (lambda f: f.sysctls.pop("net.bridge.bridge-nf-call-iptables"), "br_netfilter", "warn",
         "modprobe br_netfilter"),
        (lambda f: f.sysctls.update({"net.bridge.bridge-nf-call-iptables": "0"}), "br_netfilter", "warn",
         "bridge-nf-call-iptables=1"),
        (lambda f: f.sysctls.update({"net.ipv4.conf.all.rp_filter": "1"}), "rp_filter", "warn",
         "net.ipv4.conf.flannel.1.rp_filter=2"),
        (lambda f: setattr(f, "device", dataclasses.replace(f.device, mtu=1400)), "mtu", "fail",
         "ip link set flannel.1 mtu 1450"),
        (lambda f: f.env.update({"FLANNEL_MTU": "1500"}), "mtu", "fail", "ip link set flannel.1 mtu 1450"),
        (lambda f: setattr(f, "device", dataclasses.replace(f.device, up=False)), "vxlan_device", "fail", "restart"),
        (lambda f: setattr(f, "device", dataclasses.replace(f.device, mac="02:00:00:00:00:01")), "vxlan_device",
         "fail", "restart"),
        (lambda f: setattr(f, "own_ttl", -1), "lease", "fail", "re-acquires"),
        (lambda f: setattr(f, "own_ttl", 100), "lease", "warn", "renewed"),
        (lambda f: setattr(f, "actual", PeerState()), "kernel_peers", "fail", "-resync-period"),
        (lambda f: f.peer_routes.update({"198.18.0.13": (None, None)}), "peer_reachability", "fail", "-iface"),
        (lambda f: f.peer_routes.update({"198.18.0.13": (9, "wlan0")}), "peer_reachability", "fail", "-iface"),
        (lambda f: setattr(f, "udp_ports", {68}), "peer_reachability", "fail", "restart flanneld"),
        (lambda f: f.leases.append(vx_lease(IPv4Network("100.64.90.0/24"), "198.18.0.13", "0e:00:00:00:00:01")),
         "duplicate_public_ip", "fail", "-public-ip"),
        (lambda f: f.routes.append(HostRoute(IPv4Network("100.64.128.0/17"), None, 7, "eth1", "100.64.128.0/17")),
         "network_overlap", "fail", "flannelctl config set"),
        (lambda f: f.iptables.update({"filter": ":FORWARD DROP [0:0]\nCOMMIT\n"}), "forward_rules", "fail",
         "-iptables-resync"),
        (lambda f: f.iptables.update({"nat": f.iptables["nat"].replace("-A POSTROUTING", "-A OTHER")}),
         "masquerade", "fail", "-iptables-resync"),
        (lambda f: f.iptables.update({"nat": "\n".join(x for x in f.iptables["nat"].splitlines()
                                                        if "RETURN" not in x)}),
         "masquerade", "fail", "-iptables-resync"),
        (lambda f: setattr(f, "kernel_release", "5.4.0-150-generic"), "tx_checksum", "warn",
         "ethtool -K flannel.1 tx-checksum-ip-generic off"),
        (lambda f: setattr(f, "endpoints", [EndpointHealth("http://x:2379", False, error="connection refused")]),
         "etcd", "fail", "-etcd-endpoints"),
        (lambda f: f.status.update({"ready": False, "not_ready": ["no subnet lease"]}), "flanneld", "fail", "log"),
        (lambda f: f.status.update({"last_sync": time.time() - 600}), "flanneld", "warn", "stuck"),
    ],
    ids=["ip_forward", "no-br_netfilter", "bridge-nf-0", "rp_filter-strict", "device-mtu", "env-mtu", "device-down",
         "device-mac", "lease-gone", "lease-expiring", "drift", "no-route", "wrong-dev", "no-vxlan-socket",
         "dup-ip", "overlap", "forward-drop", "masq-jump", "masq-rules", "old-kernel", "etcd-down", "not-ready",
         "stale-sync"],
)
def test_each_breakage_is_reported_with_a_hint(breakage: Any, name: str, level: str, hint: str) -> None:
    f = healthy()
    breakage(f)
    bad = only_bad(f)
    assert bad.get(name) == level, bad
    c = by_name(f)[name]
    assert hint in c.hint
    assert f"-- fix: {c.hint}" in doctor.render([c])


def test_missing_or_foreign_config() -> None:
    f = healthy()
    f.config, f.config_error = None, "flannel config not found in etcd store: /coreos.com/network/config is missing"
    c = by_name(f)["config"]
    assert c.level == "fail" and "flannelctl config set" in c.hint
    assert by_name(f)["forward_rules"].level == "skip" and by_name(f)["network_overlap"].level == "skip"
    f.config = parse_config('{"Network":"100.64.0.0/16","Backend":{"Type":"ipip"}}')  # host-gw/wireguard run now
    assert by_name(f)["config"].level == "warn"


def test_random_fully_is_optional_for_masquerade() -> None:
    f = healthy()
    f.iptables["nat"] = save("nat", [masq_chain(NET, OWN, False)])
    assert by_name(f)["masquerade"].level == "ok"


def test_masquerade_not_expected_without_ipmasq() -> None:
    f = healthy()
    f.env["FLANNEL_IPMASQ"] = "false"
    f.iptables["nat"] = "*nat\nCOMMIT\n"
    assert by_name(f)["masquerade"].level == "ok"


def test_tx_checksum_off_is_ok_and_unreadable_is_skip() -> None:
    f = healthy()
    f.tx_checksum = False
    assert by_name(f)["tx_checksum"].detail == "tx checksum offload off on flannel.1"
    f.tx_checksum, f.tx_checksum_error = None, "ethtool ioctl on flannel.1: Operation not supported"
    assert by_name(f)["tx_checksum"].level == "skip"


def test_drift_lists_missing_and_stale_entries() -> None:
    f = healthy()
    assert f.actual is not None
    stale = Route(IPv4Network("100.64.99.0/24"), IPv4Address("100.64.99.0"), "flannel.1", True)
    f.actual = PeerState(frozenset({stale}), f.actual.neighs, f.actual.fdbs)
    d = status.drift(f)
    assert d == ["missing route 100.64.81.0/24 via 100.64.81.0 dev flannel.1 onlink",
                 "stale route 100.64.99.0/24 via 100.64.99.0 dev flannel.1 onlink"]
    rows = status.peer_rows(f)
    assert rows == [{"subnet": "100.64.81.0/24", "public_ip": "198.18.0.13", "vtep_mac": "2a:a3:22:0d:18:d9",
                     "kernel": "missing route"}]
    assert status.kernel_peer_count(f) == 1


def test_drift_accepts_the_fdb_entry_of_either_lease_with_a_shared_vtep_mac() -> None:
    # A node came back with a new PublicIP and the same MAC while its old lease lives on: the daemon keeps
    # one FDB entry for the MAC, the newer lease's. That is not drift; an FDB entry no lease wants is.
    f = healthy()
    own = f.own
    assert own is not None
    old = vx_lease(IPv4Network("100.64.90.0/24"), "198.18.0.13", "2a:a3:22:0d:18:d9")
    new = vx_lease(PEER, "198.18.0.14", "2a:a3:22:0d:18:d9")
    f.leases = [own, old, new]
    f.peers, _ = vxlan.select_peers(own, f.leases, NET, [IPv4Network("198.18.0.0/24")])
    f.desired = vxlan.desired_state("flannel.1", f.peers)
    keep = {e for e in f.desired.fdbs if str(e.dst) == "198.18.0.14"}
    f.actual = PeerState(f.desired.routes, f.desired.neighs, frozenset(keep))
    assert status.drift(f) == []
    assert [r["kernel"] for r in status.peer_rows(f)] == ["ok", "ok"]
    wrong = {dataclasses.replace(e, dst=IPv4Address("198.18.0.99")) for e in keep}
    f.actual = PeerState(f.desired.routes, f.desired.neighs, frozenset(wrong))
    assert status.drift(f) == ["missing fdb 2a:a3:22:0d:18:d9 dst 198.18.0.13 dev flannel.1",
                               "missing fdb 2a:a3:22:0d:18:d9 dst 198.18.0.14 dev flannel.1",
                               "stale fdb 2a:a3:22:0d:18:d9 dst 198.18.0.99 dev flannel.1"]


def test_status_report_text_and_json() -> None:
    f = healthy()
    data = status.status_data(f)
    assert data["lease"]["subnet"] == "100.64.67.0/24" and data["peers"]["etcd"] == 1 and data["peers"]["kernel"] == 1
    assert data["mtu"] == {"uplink": "eth0", "uplink_mtu": 1500, "device": "flannel.1", "device_mtu": 1450,
                           "subnet_env_mtu": 1450, "expected": 1450, "consistent": True, "problems": []}
    text = status.render(data)
    assert "lease:     100.64.67.0/24, PublicIP 198.18.0.11, expires in 23h53m20s" in text
    assert "peers:     etcd 1, kernel 1, drift none" in text
    assert "mtu:       uplink eth0 1500, flannel.1 1450, subnet.env 1450: consistent" in text
    assert "http://198.18.0.1:2379  ok      3.4.23   yes     20 kB" in text


def test_status_without_a_lease_says_why() -> None:
    f = healthy()
    f.own, f.leases = None, f.leases[1:]
    data = status.status_data(f)
    assert data["lease"] is None
    assert "lease:     none in etcd for 100.64.67.0/24 (from /run/flannel/subnet.env)" in status.render(data)
    assert by_name(f)["lease"].level == "fail"
