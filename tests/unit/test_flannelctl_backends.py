"""doctor's and status's backend-specific parts as pure functions of made-up host-gw, wireguard and IPv6 node facts.

Why: the backend is data (the config's Backend.Type), so each backend's node must get its own checks and
peer table, and none of vxlan's. ``hostgw_node()``/``wg_node()`` are healthy nodes as the netns clusters
build them; each test breaks one thing and expects that check to turn warn or fail with a hint.
"""

from __future__ import annotations

import dataclasses
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network
from types import SimpleNamespace

import pytest
from test_flannelctl_doctor import healthy, save

from pyflannel.adapters.netlink import LinkInfo
from pyflannel.adapters.wireguard import DeviceStatus, PeerStatus
from pyflannel.core.backends import hostgw
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.config import parse_config
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.rules import forward_chain, masq_chain
from pyflannel.ctl import doctor, status
from pyflannel.ctl.node import EndpointHealth, HostGwPeer, HostRoute, NodeFacts, RouteLookup, WgDevice, WgKeyFile

NET = IPv4Network("100.64.0.0/16")
OWN = IPv4Network("100.64.67.0/24")
PEER = IPv4Network("100.64.81.0/24")
OPTS = SimpleNamespace(iptables_forward_rules=True, resync_period=10, subnet_lease_renew_margin=60)
ETH0 = LinkInfo(2, "eth0", 1500, True, (IPv4Interface("198.18.0.11/24"),))


def base(backend: str, config: str, own: Lease, peers: list[Lease], mtu: str) -> NodeFacts:
    return NodeFacts(
        subnet_file="/run/flannel/subnet.env", status_file="/run/flannel/pyflannel-status.json",
        env={"FLANNEL_NETWORK": str(NET), "FLANNEL_SUBNET": "100.64.67.1/24", "FLANNEL_MTU": mtu,
             "FLANNEL_IPMASQ": "true"},
        status={"pid": None, "last_sync": time.time() - 1, "last_sync_duration": 0.004, "passes": 3,
                "in_sync": True, "ready": True, "not_ready": [], "uplink": "eth0", "device": None},
        config=parse_config(config), leases=[own, *peers], own=own, own_ttl=86000,
        endpoints=[EndpointHealth("http://198.18.0.1:2379", True, "3.4.23", True, 20480, 9)],
        links=[LinkInfo(1, "lo", 65536, True, ()), ETH0], uplink=ETH0,
        routes=[HostRoute(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"), 2, "eth0", "default"),
                HostRoute(IPv4Network("198.18.0.0/24"), None, 2, "eth0", "198.18.0.0/24 dev eth0")],
        sysctls={"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1",
                 "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.eth0.rp_filter": "2"},
        iptables={"nat": save("nat", [masq_chain(NET, OWN, True)]), "filter": save("filter", [forward_chain(NET)])},
        udp_ports={68}, kernel_release="6.1.0", now=time.time(),
    )  # fmt: skip


# --- host-gw ---------------------------------------------------------------------------------------------


def hg_lease(sub: IPv4Network, ip: str) -> Lease:
    return Lease(sub, LeaseAttrs(IPv4Address(ip), backend_type="host-gw"))


def hostgw_node() -> NodeFacts:
    own, peer = hg_lease(OWN, "198.18.0.11"), hg_lease(PEER, "198.18.0.13")
    f = base("host-gw", '{"Network":"100.64.0.0/16","Backend":{"Type":"host-gw"}}', own, [peer], "1500")
    pr = hostgw.peer_routes(peer, "eth0", hostgw.HostGwOptions(), own=own)
    f.hostgw_peers = [HostGwPeer(peer, pr.routes)]
    f.uplink_prefixes = [IPv4Network("198.18.0.0/24")]
    f.lookups = {"198.18.0.13": RouteLookup(2, "eth0", None)}
    f.routes.append(HostRoute(PEER, IPv4Address("198.18.0.13"), 2, "eth0", "100.64.81.0/24 via 198.18.0.13"))
    return f


def names(f: NodeFacts) -> list[str]:
    return [c.name for c in doctor.run_checks(f, OPTS)]


def levels(f: NodeFacts) -> dict[str, str]:
    return {c.name: c.level for c in doctor.run_checks(f, OPTS) if c.level != "ok"}


def by_name(f: NodeFacts) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(f, OPTS)}


def test_vxlan_keeps_its_seventeen_checks_in_order() -> None:
    assert [c.name for c in doctor.run_checks(healthy(), OPTS)] == [
        "config", "ip_forward", "br_netfilter", "rp_filter", "mtu", "vxlan_device", "lease", "kernel_peers",
        "peer_reachability", "duplicate_public_ip", "network_overlap", "firewall_mode", "forward_rules",
        "masquerade", "tx_checksum", "etcd", "flanneld"]


def test_hostgw_healthy_node_runs_its_checks_and_none_of_vxlans() -> None:
    f = hostgw_node()
    assert levels(f) == {}
    got = names(f)
    assert "hostgw_l2" in got and "hostgw_routes" in got
    assert not {"vxlan_device", "kernel_peers", "peer_reachability", "tx_checksum"} & set(got)
    c = by_name(f)
    assert c["hostgw_l2"].detail == "1 peer gateway(s) on-link on eth0 (198.18.0.0/24)"
    assert c["mtu"].detail == "uplink eth0 1500, subnet.env 1500"
    assert doctor.render(doctor.run_checks(f, OPTS)).splitlines()[-1] == "15 checks: 0 failed, 0 warnings"


def test_hostgw_peer_off_the_l2_fails_naming_the_peer() -> None:
    f = hostgw_node()
    f.uplink_prefixes = [IPv4Network("198.18.1.0/24")]
    f.lookups["198.18.0.13"] = RouteLookup(2, "eth0", "198.18.1.1")
    c = by_name(f)["hostgw_l2"]
    assert c.level == "fail"
    assert "peer 100.64.81.0/24 (198.18.0.13): 198.18.0.13 is in none of eth0's prefixes (198.18.1.0/24)" in c.detail
    assert "route get 198.18.0.13 gives via 198.18.1.1 dev eth0, not on-link on eth0" in c.detail
    assert "one L2 segment" in c.hint
    # Only the lookup wrong (a more specific route through a router) is a failure too.
    f = hostgw_node()
    f.lookups["198.18.0.13"] = RouteLookup(3, "eth1", None)
    assert "gives dev eth1" in by_name(f)["hostgw_l2"].detail


def test_hostgw_missing_and_stale_routes() -> None:
    f = hostgw_node()
    f.routes = [r for r in f.routes if r.dst != PEER]
    f.routes.append(HostRoute(IPv4Network("100.64.99.0/24"), IPv4Address("198.18.0.99"), 2, "eth0", "stale"))
    c = by_name(f)["hostgw_routes"]
    assert c.level == "fail" and "route(s) differ" in c.detail
    assert status.drift(f) == ["missing route 100.64.81.0/24 via 198.18.0.13 dev eth0",
                               "stale route 100.64.99.0/24 via 198.18.0.99 dev eth0"]
    d = status.status_data(f)
    assert d["peers"]["rows"] == [{"subnet": "100.64.81.0/24", "subnet6": None, "public_ip": "198.18.0.13",
                                   "public_ipv6": None, "route": False, "on_l2": True, "rejected": None}]
    assert d["peers"]["etcd"] == 1 and d["peers"]["kernel"] == 0
    text = status.render(d)
    assert "backend:   host-gw, routes via the peers' PublicIPs on eth0" in text
    assert "100.64.81.0/24  198.18.0.13  NO     yes" in text


def test_hostgw_mtu_must_equal_the_uplinks() -> None:
    f = hostgw_node()
    assert f.env is not None
    f.env["FLANNEL_MTU"] = "1450"
    c = by_name(f)["mtu"]
    assert c.level == "fail" and "host-gw adds no header" in c.detail


# --- wireguard -------------------------------------------------------------------------------------------

KEY = wgcore.generate_private_key()
PUB = wgcore.public_key(KEY)
PEER_PUB = wgcore.public_key(wgcore.generate_private_key())


def wg_lease(sub: IPv4Network, ip: str, pub: str) -> Lease:
    return Lease(sub, LeaseAttrs(IPv4Address(ip), backend_type="wireguard",
                                 backend_data=wgcore.WireguardData(pub, 51820).to_json()))


def wg_node(handshake_age: float | None = 5.0) -> NodeFacts:
    own, peer = wg_lease(OWN, "198.18.0.11", PUB), wg_lease(PEER, "198.18.0.13", PEER_PUB)
    f = base("wireguard", '{"Network":"100.64.0.0/16","Backend":{"Type":"wireguard"}}', own, [peer], "1420")
    f.wg_opts = wgcore.parse_options({})
    f.wg_desired = list(wgcore.peer_entries(peer, f.wg_opts, own_key=PUB).peers)
    hs = int(f.now - handshake_age) if handshake_age is not None else 0
    st = DeviceStatus("flannel-wg", PUB, 51820, (PeerStatus(PEER_PUB, "198.18.0.13:51820", ("100.64.81.0/24",), 0,
                                                            "", hs, 2048, 4096),))
    f.wg_devices = [WgDevice("flannel-wg", 51820, 7, "wireguard-go", True, 1420, ("100.64.67.0/32",),
                             "/var/run/wireguard/flannel-wg.sock", st)]
    f.wg_key = WgKeyFile("/run/flannel/wgkey", 0o400, PUB)
    f.links.append(LinkInfo(7, "flannel-wg", 1420, True, (IPv4Interface("100.64.67.0/32"),)))
    f.routes.append(HostRoute(NET, None, 7, "flannel-wg", "100.64.0.0/16 dev flannel-wg"))
    f.udp_ports.add(51820)
    return f


def test_wireguard_healthy_node() -> None:
    f = wg_node()
    assert levels(f) == {}
    got = names(f)
    assert {"wg_device", "wg_listen_port", "wg_public_key", "wg_key_file", "wg_peers", "wg_handshake"} <= set(got)
    assert not {"vxlan_device", "kernel_peers", "tx_checksum", "hostgw_l2"} & set(got)
    c = by_name(f)
    assert c["wg_device"].detail == "flannel-wg up (wireguard-go, UAPI /var/run/wireguard/flannel-wg.sock), MTU 1420"
    assert c["wg_listen_port"].detail.startswith("flannel-wg UDP 51820 (UAPI answers)")
    assert c["mtu"].detail == "uplink eth0 1500, flannel-wg 1420, subnet.env 1420"
    assert c["network_overlap"].level == "ok"  # the Network route through flannel-wg is flannel's own


def test_wireguard_drift_accepts_either_lease_with_a_shared_key() -> None:
    # Two leases with one public key: the daemon gives the peer to the newest; the device matching either
    # lease is not drift, matching neither is.
    f = wg_node()
    other = wg_lease(IPv4Network("100.64.90.0/24"), "198.18.0.14", PEER_PUB)
    f.wg_desired = [*f.wg_desired, *wgcore.peer_entries(other, f.wg_opts, own_key=PUB).peers]
    assert doctor.wg_drift(f) == []
    f.wg_desired.reverse()
    assert doctor.wg_drift(f) == []
    dev = f.wg_devices[0]
    assert dev.status is not None
    moved = dataclasses.replace(dev.status.peers[0], endpoint="198.18.0.99:51820")
    f.wg_devices[0] = dataclasses.replace(dev, status=dataclasses.replace(dev.status, peers=(moved,)))
    (line,) = doctor.wg_drift(f)
    assert line.startswith(f"peer {PEER_PUB} on flannel-wg: endpoint 198.18.0.99:51820")


def test_wireguard_status_rows_and_text() -> None:
    d = status.status_data(wg_node())
    (row,) = d["peers"]["rows"]
    assert row["endpoint"] == "198.18.0.13:51820" and row["allowed_ips"] == ["100.64.81.0/24"]
    assert row["rx_bytes"] == 2048 and row["tx_bytes"] == 4096 and 4 <= row["last_handshake_age"] <= 7
    assert d["peers"]["etcd"] == 1 and d["peers"]["kernel"] == 1 and d["peers"]["drift"] == []
    assert d["backend"]["devices"][0]["driver"] == "wireguard-go"
    text = status.render(d)
    assert f"backend:   wireguard, flannel-wg (wireguard-go) UDP 51820, PublicKey {PUB}" in text
    assert "198.18.0.13:51820  100.64.81.0/24" in text and "2.0 KiB  4.0 KiB" in text


def test_wireguard_never_and_old_handshakes_warn() -> None:
    c = by_name(wg_node(None))["wg_handshake"]
    assert c.level == "warn"
    assert c.detail == ("no handshake ever with 100.64.81.0/24 (198.18.0.13): UDP port 51820 may be blocked "
                        "between 198.18.0.11 and 198.18.0.13")
    c = by_name(wg_node(600))["wg_handshake"]
    assert c.level == "warn" and "last handshake with 100.64.81.0/24 (198.18.0.13) 10m" in c.detail


@pytest.mark.parametrize(
    ("breakage", "name", "level", "text"),
    [
        (lambda f: setattr(f, "wg_key", WgKeyFile("/run/flannel/wgkey", 0o400, PEER_PUB)), "wg_public_key", "fail",
         "but key file /run/flannel/wgkey holds the key of"),
        (lambda f: setattr(f, "wg_key", WgKeyFile("/run/flannel/wgkey", 0o644, PUB)), "wg_key_file", "fail",
         "mode 0644"),
        (lambda f: setattr(f, "wg_key", WgKeyFile("/run/flannel/wgkey", 0o600, PUB)), "wg_key_file", "warn",
         "flanneld writes 0400"),
        (lambda f: setattr(f, "wg_devices", [WgDevice("flannel-wg", 51820)]), "wg_device", "fail", "does not exist"),
        (lambda f: setattr(f, "wg_devices", [dataclasses.replace(f.wg_devices[0], status=None, error="UAPI socket "
                                                                 "x: No such file or directory")]),
         "wg_listen_port", "fail", "does not answer over UAPI"),
        (lambda f: setattr(f, "wg_devices", [dataclasses.replace(
            f.wg_devices[0], status=dataclasses.replace(f.wg_devices[0].status, listen_port=51999))]),
         "wg_listen_port", "fail", "listens on UDP 51999, the config says 51820"),
        (lambda f: setattr(f, "wg_devices", [dataclasses.replace(
            f.wg_devices[0], status=dataclasses.replace(f.wg_devices[0].status, peers=()))]),
         "wg_peers", "fail", "missing peer"),
        (lambda f: setattr(f, "wg_devices", [dataclasses.replace(f.wg_devices[0], up=False)]), "wg_device", "fail",
         "flannel-wg is down"),
    ],
    ids=["key-replaced", "key-mode-0644", "key-mode-0600", "no-device", "uapi-silent", "wrong-port", "no-peer",
         "down"],
)
def test_each_wireguard_breakage(breakage: object, name: str, level: str, text: str) -> None:
    f = wg_node()
    breakage(f)  # type: ignore[operator]
    c = by_name(f)[name]
    assert c.level == level and text in c.detail, c
    assert c.hint


# --- IPv6 ------------------------------------------------------------------------------------------------

NET6 = IPv6Network("fd64::/56")
OWN6 = IPv6Network("fd64:0:0:43::/64")


def v6_node() -> NodeFacts:
    own = Lease(OWN, LeaseAttrs(IPv4Address("198.18.0.11"), public_ipv6=IPv6Address("fd18::11"),
                                backend_type="host-gw"), subnet6=OWN6)
    f = hostgw_node()
    f.config = parse_config('{"Network":"100.64.0.0/16","EnableIPv6":true,"IPv6Network":"fd64::/56",'
                            '"Backend":{"Type":"host-gw"}}')
    f.own, f.leases = own, [own, *f.leases[1:]]
    f.sysctls["net.ipv6.conf.all.forwarding"] = "1"
    f.ip6tables = {"nat": save("nat", [masq_chain(NET6, OWN6, True)]), "filter": save("filter", [forward_chain(NET6)])}
    return f


def test_ipv6_checks_only_with_an_ipv6_config() -> None:
    assert "ipv6_forwarding" not in names(hostgw_node())
    f = v6_node()
    got = names(f)
    assert got.index("ipv6_forwarding") == got.index("ip_forward") + 1
    assert got.index("ipv6_rules") == got.index("masquerade") + 1
    assert levels(f) == {}
    f.sysctls["net.ipv6.conf.all.forwarding"] = "0"
    c = by_name(f)["ipv6_forwarding"]
    assert c.level == "fail" and "sysctl -w net.ipv6.conf.all.forwarding=1" in c.hint
    f = v6_node()
    f.ip6tables["filter"] = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"
    c = by_name(f)["ipv6_rules"]
    assert c.level == "fail" and "FLANNEL-FWD" in c.detail
