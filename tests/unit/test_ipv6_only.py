"""IPv6-only networks in etcd mode (EnableIPv4=false; issue 13, flannel-spec.md §11 row 13).

Go flanneld cannot do this in etcd mode: its key parser requires the IPv4 part. pyflannel names an
IPv6-only lease ``<prefix>/subnets/<v6>-<len6>`` (the v6 half of a dual-stack key on its own) and
publishes PublicIP 0.0.0.0 next to PublicIPv6, as Go writes a PublicIP it does not have. These tests
pin the key form, the lease JSON per backend, the allocation, subnet.env, the config errors, the peer
entries, the uplink choice and the daemon over fakes (support.fakes).
"""

from __future__ import annotations

import asyncio
import json
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from support.fakes import FakeDataplane, FakeFirewall, FakeHost, FakeSubnetManager

from pyflannel.adapters.hostgw_backend import HostGwBackend
from pyflannel.adapters.netlink import LinkInfo
from pyflannel.adapters.registry import SubnetRegistry, decode_lease
from pyflannel.adapters.vxlan_backend import VxlanBackend
from pyflannel.adapters.wireguard_backend import WireguardBackend
from pyflannel.core.allocate import choose_subnet
from pyflannel.core.backends import hostgw, vxlan
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.config import parse_config
from pyflannel.core.errors import ConfigError, LeaseFormatError
from pyflannel.core.flags import parse_flags
from pyflannel.core.ipnet import make_subnet_key, parse_subnet_key
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData, parse_lease_attrs
from pyflannel.core.model import Fdb, Neigh, Route, WgPeer
from pyflannel.core.peers import PeerTable
from pyflannel.core.subnet_env import SubnetEnv, parse_env_text, previous_subnets
from pyflannel.ctl import keyspace
from pyflannel.daemon.app import Daemon
from pyflannel.daemon.iface import Addr6, InterfaceError, select_uplink6
from pyflannel.ports import Uplink

V6ONLY = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd64::/48"}


def cfg(backend: dict[str, Any] | None = None, **extra: Any) -> Any:
    return parse_config(json.dumps({**V6ONLY, "Backend": backend or {"Type": "vxlan"}, **extra}))


ZERO = IPv4Address(0)
ME6, PEER6, THIRD6 = IPv6Address("fd18::11"), IPv6Address("fd18::12"), IPv6Address("fd18::13")
MAC6 = "02:aa:bb:cc:dd:02"
DATA6 = VxlanData(1, MAC6).to_json()


def v6lease(sn6: str, pub6: IPv6Address, *, btype: str = "vxlan", data6: str | None = DATA6,
            reserved: bool = False) -> Lease:
    return Lease(None, LeaseAttrs(ZERO, pub6, btype, None, data6 if btype != "host-gw" else None),
                 IPv6Network(sn6), reserved=reserved)


# --- keys ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "sn6", "canonical"), [
    ("fd64:0:0:22::-64", "fd64:0:0:22::/64", "fd64:0:0:22::-64"),
    ("/coreos.com/network/subnets/fd64:0:0:22::-64", "fd64:0:0:22::/64", "fd64:0:0:22::-64"),
    ("fd64:0:0:22:0:0:0:0-64", "fd64:0:0:22::/64", "fd64:0:0:22::-64"),  # uncompressed: parsed, written compressed
    ("fc00::-64", "fc00::/64", "fc00::-64"),
    ("fd64::80-121", "fd64::80/121", "fd64::80-121"),
])
def test_v6_only_key_round_trip(key: str, sn6: str, canonical: str) -> None:
    assert parse_subnet_key(key) == (None, IPv6Network(sn6))
    assert make_subnet_key(None, IPv6Network(sn6)) == canonical
    assert parse_subnet_key(canonical) == (None, IPv6Network(sn6))


def test_the_three_key_forms_stay_apart() -> None:
    """The v6 half of a dual-stack key, alone, is the IPv6-only key; the v4 forms are unchanged."""
    sn4, sn6 = IPv4Network("100.64.34.0/24"), IPv6Network("fd64:0:0:22::/64")
    assert make_subnet_key(sn4) == "100.64.34.0-24"
    assert make_subnet_key(sn4, sn6) == "100.64.34.0-24&fd64:0:0:22::-64"
    assert make_subnet_key(None, sn6) == "fd64:0:0:22::-64"
    assert make_subnet_key(sn4, sn6).endswith("&" + make_subnet_key(None, sn6))
    with pytest.raises(LeaseFormatError, match="needs an IPv4 or an IPv6 subnet"):
        make_subnet_key(None, None)


@pytest.mark.parametrize("key", [
    "fd64:0:0:22::", "fd64:0:0:22::-", "-64", "fd64:0:0:22::/64", "FD64:0:0:22::-64", "fd64:::22::-64",
    "fd64:0:0:22::1-64",  # host bits set
    "fd64:0:0:22::-129", "fd64:0:0:22::-128",  # Go's ParseUint(.., 7) caps the prefix at 127
    "fd64:0:0:22::-64x", "fd64:0:0:22::-64\n", "xfd64:0:0:22::-64", "zz::-64", "1234-24", "fd64::-99999999999",
    "fd64::1.2.3.4-64", "/subnets/fd64:0:0:22::-64/extra", "1:" * 60 + ":-64",
])
def test_v6_only_junk_is_still_a_bad_key(key: str) -> None:
    with pytest.raises(LeaseFormatError, match="bad subnet key") as ei:
        parse_subnet_key(key)
    assert "\n" not in str(ei.value)


def test_registry_names_and_decodes_a_v6_only_lease() -> None:
    from pyflannel.adapters.etcd import KeyValue

    reg = SubnetRegistry(None, "/pyfl-v6/network")  # type: ignore[arg-type]  # key layout only, no client
    sn6 = IPv6Network("fd64:0:0:22::/64")
    key = reg.lease_key(None, sn6)
    assert key == "/pyfl-v6/network/subnets/fd64:0:0:22::-64"
    value = LeaseAttrs(ZERO, ME6, "vxlan", None, DATA6).to_json().encode()
    le = decode_lease(KeyValue(key=key, value=value, lease=0x1234, mod_revision=9))
    assert (le.subnet, le.subnet6, le.lease_id, le.mod_revision, le.reserved) == (None, sn6, 0x1234, 9, False)
    assert reg.lease_key(le.subnet, le.subnet6) == key and le.key_name == "fd64:0:0:22::-64"


# --- the Lease value ------------------------------------------------------------------------------------------
def test_lease_needs_one_subnet_and_names_itself_by_the_one_it_has() -> None:
    with pytest.raises(LeaseFormatError, match=r"subnet=None, subnet6=None"):
        Lease(None, LeaseAttrs(ZERO, ME6))
    le = v6lease("fd64:0:0:5::/64", ME6)
    assert le.subnets == (IPv6Network("fd64:0:0:5::/64"),) and le.primary == IPv6Network("fd64:0:0:5::/64")
    assert le.name == "fd64:0:0:5::/64" and le.owner_ip == ME6
    dual = Lease(IPv4Network("100.64.5.0/24"), LeaseAttrs(IPv4Address("198.18.0.11"), ME6),
                 IPv6Network("fd64:0:0:5::/64"))
    assert dual.name == "100.64.5.0/24" and dual.owner_ip == IPv4Address("198.18.0.11")
    assert dual.subnets == (IPv4Network("100.64.5.0/24"), IPv6Network("fd64:0:0:5::/64"))
    # v4 leases sort before v6-only ones, each by address
    later = v6lease("fd64:0:0:3::/64", PEER6)
    assert sorted([le, dual, later], key=lambda x: x.order) == [dual, later, le]


# --- lease JSON per backend ---------------------------------------------------------------------------------
UPLINK = Uplink("eth0", 2, 1500, None, None, ME6, ME6, (IPv6Network("fd18::/64"),))


def test_vxlan_v6_only_lease_json() -> None:
    be = VxlanBackend(None, {"Type": "vxlan", "VNI": 7}, None, None, IPv6Network("fd64::/48"))  # type: ignore[arg-type]
    be.mac6 = MAC6
    assert be.device == "flannel-v6.7" and be.device4 == "" and be.scope().devices == ("flannel-v6.7",)
    text = be.lease_attrs(UPLINK).to_json()
    assert text == ('{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::11","BackendType":"vxlan",'
                    '"BackendV6Data":{"VNI":7,"VtepMAC":"02:aa:bb:cc:dd:02"}}')
    assert parse_lease_attrs(text).to_json() == text  # byte-identical round trip


def test_hostgw_v6_only_lease_json() -> None:
    be = HostGwBackend(cfg({"Type": "host-gw"}))
    assert be.lease_attrs(UPLINK).to_json() == '{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::11","BackendType":"host-gw"}'


def test_wireguard_v6_only_lease_json() -> None:
    be = WireguardBackend(cfg({"Type": "wireguard"}))
    be.public_key = "S0CjbGY1kj1/gH/RQw1iqfdbyWomTyYP0IV6FfDHzCk="
    # a v4 address on the link is not published on an IPv6-only network
    up = Uplink("eth0", 2, 1500, IPv4Address("198.18.0.11"), IPv4Address("198.18.0.11"), ME6, ME6)
    assert be.lease_attrs(up).to_json() == (
        '{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::11","BackendType":"wireguard",'
        '"BackendV6Data":{"PublicKey":"S0CjbGY1kj1/gH/RQw1iqfdbyWomTyYP0IV6FfDHzCk=","Port":51821}}')
    assert [d.name for d in wgcore.devices(be.opts)] == ["flannel-wg-v6"]


# --- subnet.env ---------------------------------------------------------------------------------------------
def test_subnet_env_has_only_the_ipv6_lines() -> None:
    text = SubnetEnv(None, None, 1430, True, IPv6Network("fd64::/48"), IPv6Network("fd64:0:0:5::/64")).render()
    assert text == ("FLANNEL_IPV6_NETWORK=fd64::/48\nFLANNEL_IPV6_SUBNET=fd64:0:0:5::1/64\n"
                    "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n")
    assert previous_subnets(parse_env_text(text)) == (None, IPv6Network("fd64:0:0:5::/64"))


# --- config -------------------------------------------------------------------------------------------------
def test_v6_only_config_ignores_the_ipv4_fields() -> None:
    c = cfg(Network="100.64.0.0/16", SubnetLen=24)
    assert c.ipv6_only and c.network is None and c.subnet_min is None and c.subnet_len == 0
    assert (c.ipv6_network, c.ipv6_subnet_len) == (IPv6Network("fd64::/48"), 64)
    assert not parse_config('{"Network":"100.64.0.0/16","EnableIPv6":true,"IPv6Network":"fd64::/48"}').ipv6_only


@pytest.mark.parametrize(("conf", "error"), [
    ({"EnableIPv4": False, "Backend": {"Type": "vxlan"}},
     r"^config enables neither IPv4 nor IPv6 \(EnableIPv4=false, EnableIPv6=false\)$"),
    ({"EnableIPv4": False, "EnableIPv6": True, "Network": "100.64.0.0/16"},
     r"^please define a correct IPv6Network parameter in the flannel config \(EnableIPv6=true, IPv6Network=missing\)$"),
    ({**V6ONLY, "IPv6Network": "::/0"}, r"\(EnableIPv6=true, IPv6Network='::/0'\)$"),
    ({"EnableIPv6": True, "IPv6Network": "fd64::/48"},  # EnableIPv4 defaults to true: say how to go IPv6-only
     r"^please define a correct Network parameter in the flannel config \(EnableIPv4=true, Network=missing; "
     r"for an IPv6-only network set EnableIPv4=false\)$"),
    ({**V6ONLY, "IPv6Network": "fd64::/126"}, r"IPv6Network is too small.*\(IPv6Network=fd64::/126\)"),
    ({**V6ONLY, "IPv6SubnetLen": 47}, r"IPv6Network=fd64::/48, IPv6SubnetLen=47"),
    ({**V6ONLY, "IPv6Network": "100.64.0.0/16"}, r"config field IPv6Network: invalid CIDR address '100.64.0.0/16'"),
])
def test_v6_only_config_errors_name_the_field(conf: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error) as ei:
        parse_config(json.dumps(conf))
    assert "\n" not in str(ei.value)


def test_v4_only_backend_modes_are_refused_on_a_v6_only_network() -> None:
    with pytest.raises(ConfigError, match=r"^wireguard Mode ipv4 needs EnableIPv4 \(EnableIPv4=false\)$"):
        WireguardBackend(cfg({"Type": "wireguard", "Mode": "ipv4"}))


# --- allocation ---------------------------------------------------------------------------------------------
def choose(leases: list[Lease], previous6: IPv6Network | None = None, me: IPv6Address = ME6, seed: int = 1,
           c: Any = None) -> Any:
    return choose_subnet(c or cfg(), leases, ZERO, None, random.Random(seed), previous6=previous6, public_ipv6=me)


def test_allocates_a_v6_subnet_only() -> None:
    c = cfg()
    ch = choose([])
    assert ch.subnet is None and ch.existing is None and ch.subnet6 is not None
    assert ch.subnet6.prefixlen == 64 and ch.subnet6.subnet_of(c.ipv6_network)
    assert ch.subnet6 != IPv6Network("fd64::/64")  # the first subnet is never handed out
    assert ch.reason == f"allocated new IPv6 subnet {ch.subnet6}"


def test_every_node_publishes_0000_so_leases_are_ours_by_public_ipv6() -> None:
    theirs = v6lease("fd64:0:0:1::/64", PEER6)
    ch = choose([theirs])
    assert ch.existing is None and ch.subnet6 != theirs.subnet6  # not reused, not reallocated
    mine = v6lease("fd64:0:0:7::/64", ME6)
    ch = choose([theirs, mine])
    assert ch.existing == mine and ch.subnet6 == mine.subnet6 and ch.subnet is None
    assert ch.reason == "found lease fd64:0:0:7::/64 for current IP fd18::11, reusing"


def test_previous_v6_subnet_from_subnet_env_is_kept() -> None:
    prev = IPv6Network("fd64:0:0:42::/64")
    ch = choose([v6lease("fd64:0:0:1::/64", PEER6)], previous6=prev)
    assert (ch.subnet, ch.subnet6, ch.existing) == (None, prev, None)
    assert ch.reason == "reusing previous IPv6 subnet fd64:0:0:42::/64 from the subnet file"
    taken = choose([v6lease("fd64:0:0:42::/64", PEER6)], previous6=prev)  # another node holds it now
    assert taken.subnet6 != prev


def test_reservation_and_stale_leases() -> None:
    res = v6lease("fd64:0:0:99::/64", ME6, btype="", data6=None, reserved=True)
    old = v6lease("fd64:0:0:7::/64", ME6)
    ch = choose([old, res])
    assert ch.existing == res and ch.subnet6 == res.subnet6  # a reservation wins over a dynamic lease
    # a dual-stack lease of ours from before EnableIPv4=false does not fit: deleted, a v6-only one is allocated
    dual = Lease(IPv4Network("100.64.5.0/24"), LeaseAttrs(IPv4Address("198.18.0.11"), ME6, "vxlan"),
                 IPv6Network("fd64:0:0:5::/64"))
    ch = choose([dual])
    assert ch.stale == (dual,) and ch.existing is None and ch.subnet is None and ch.subnet6 is not None


def test_exclude6_after_a_lost_race() -> None:
    c = cfg(IPv6Network="fd64::/62")  # /64s: fd64::1, ::2, ::3 (the first is never handed out)
    got = choose_subnet(c, [], ZERO, None, random.Random(3), exclude6=[IPv6Network("fd64:0:0:1::/64"),
                                                                       IPv6Network("fd64:0:0:2::/64")],
                        public_ipv6=ME6)
    assert got.subnet6 == IPv6Network("fd64:0:0:3::/64")


# --- peers -------------------------------------------------------------------------------------------------
def test_vxlan_v6_only_peer_gets_the_three_v6_entries() -> None:
    le = v6lease("fd64:0:0:12::/64", PEER6)
    entries, why = vxlan.peer_entries(le, "", device6="flannel-v6.1")
    vtep = IPv6Address("fd64:0:0:12::")
    assert why == "" and set(entries) == {
        Neigh(vtep, MAC6, "flannel-v6.1"), Fdb(MAC6, PEER6, "flannel-v6.1"),
        Route(IPv6Network("fd64:0:0:12::/64"), vtep, "flannel-v6.1", onlink=True)}
    assert "has no IPv4 subnet" in vxlan.peer_entries(le, "flannel.1")[1]  # a v4-only node cannot use it
    bad = v6lease("fd64:0:0:13::/64", PEER6, data6=None)
    assert vxlan.peer_entries(bad, "", device6="flannel-v6.1") == ((), "vxlan lease has no BackendV6Data")
    assert vxlan.select_peers(v6lease("fd64:0:0:11::/64", ME6), [le], IPv4Network("100.64.0.0/16")) == ([], [])
    # on an IPv6-only network (no flannel.<VNI>) an IPv4-only lease is refused, a dual-stack one gets its v6 half
    v4only = Lease(IPv4Network("100.64.9.0/24"), LeaseAttrs(IPv4Address("198.18.0.19"), None, "vxlan",
                                                             VxlanData(1, "02:aa:bb:cc:dd:09").to_json()))
    assert vxlan.peer_entries(v4only, "", device6="flannel-v6.1") == (
        (), "lease 100.64.9.0/24 has no IPv6 subnet, and this network is IPv6-only (EnableIPv4=false)")
    dual = Lease(IPv4Network("100.64.12.0/24"), LeaseAttrs(IPv4Address("198.18.0.12"), PEER6, "vxlan",
                                                            VxlanData(1, "02:aa:bb:cc:dd:01").to_json(), DATA6),
                 IPv6Network("fd64:0:0:12::/64"))
    assert vxlan.peer_entries(dual, "", device6="flannel-v6.1") == (entries, "")


def test_hostgw_and_wireguard_v6_only_peers() -> None:
    opts = hostgw.HostGwOptions(ipv4=False, ipv6=True)
    le = v6lease("fd64:0:0:12::/64", PEER6, btype="host-gw")
    assert hostgw.peer_routes(le, "eth0", opts).routes == (Route(IPv6Network("fd64:0:0:12::/64"), PEER6, "eth0"),)
    both = hostgw.HostGwOptions(ipv4=True, ipv6=True)
    assert hostgw.peer_routes(le, "eth0", both).rejected == "lease fd64:0:0:12::/64 has no IPv4 subnet " \
                                                             "(an IPv6-only node)"
    key = "S0CjbGY1kj1/gH/RQw1iqfdbyWomTyYP0IV6FfDHzCk="
    for mode, dev, port in (("separate", "flannel-wg-v6", 51821), ("auto", "flannel-wg", 51820),
                            ("ipv6", "flannel-wg", 51820)):
        wopts = wgcore.parse_options({"Type": "wireguard", "Mode": mode}, ipv4=False, ipv6=True)
        _, d6 = wgcore.lease_data(wopts, key)
        wle = Lease(None, LeaseAttrs(ZERO, PEER6, "wireguard", None, d6), IPv6Network("fd64:0:0:12::/64"))
        r = wgcore.peer_entries(wle, wopts, own_key="x", own_public_ip=None, own_public_ipv6=ME6)
        assert r.peers == (WgPeer(key, f"[fd18::12]:{port}", ("fd64:0:0:12::/64",), dev),), mode


def test_peer_table_v6_only_leases_share_public_ip_0000() -> None:
    own = v6lease("fd64:0:0:11::/64", ME6)

    def entries_for(le: Lease) -> tuple[tuple[Any, ...], str]:
        return vxlan.peer_entries(le, "", device6="flannel-v6.1")

    t = PeerTable([IPv6Network("fd64::/48")], [IPv6Network("fd18::/64")], 64, "vxlan", entries_for, own)
    a, b = v6lease("fd64:0:0:12::/64", PEER6), v6lease("fd64:0:0:13::/64", THIRD6)
    twin = v6lease("fd64:0:0:14::/64", ME6)  # someone else claiming our PublicIPv6
    over = v6lease("fd64:0:0:12::/63", THIRD6)  # a /63 over a node's /64
    t.replace_all([(x.key_name, x) for x in (own, a, b, twin, over)])
    assert sorted(t.routed()) == ["fd64:0:0:12::-64", "fd64:0:0:13::-64"]
    rejected = dict(t.rejected())
    assert rejected.pop("fd64:0:0:14::-64") == "PublicIPv6 fd18::11 is our own"
    # the /63 covers both /64s; which one the reason names depends on set order
    assert rejected.pop("fd64:0:0:12::-63") in {f"subnet fd64:0:0:12::/63 overlaps peer fd64:0:0:{n}::/64"
                                                 for n in (12, 13)}
    assert rejected == {}
    # a re-put of the same value changes nothing; a new VtepMAC is one change
    assert t.put(a.key_name, a) == set()
    moved = v6lease("fd64:0:0:12::/64", PEER6, data6=VxlanData(1, "02:aa:bb:cc:dd:09").to_json())
    assert t.put(a.key_name, moved) == {a.key_name}


# --- uplink -------------------------------------------------------------------------------------------------
LINKS = [LinkInfo(1, "lo", 65536, True, ()), LinkInfo(2, "eth0", 1500, True, ()), LinkInfo(3, "eth1", 9000, True, ())]
ADDRS = {2: [Addr6(IPv6Address("fd18::11"), 64, 0x80)], 3: [Addr6(IPv6Address("fd19::11"), 64, 0x80)]}


def addrs6(index: int) -> list[Addr6]:
    return ADDRS.get(index, [])


def test_uplink_on_a_link_without_ipv4() -> None:
    assert select_uplink6(LINKS, addrs6, 3, 2).name == "eth1"  # the v6 default route wins
    assert select_uplink6(LINKS, addrs6, None, 2).name == "eth0"  # else the v4 one
    assert select_uplink6(LINKS, addrs6, 2, None, iface=["fd19::11"]).name == "eth1"
    assert select_uplink6(LINKS, addrs6, 2, None, iface=["eth1"]).name == "eth1"
    assert select_uplink6(LINKS, addrs6, 2, None, iface_regex=["fd19:"]).name == "eth1"
    assert select_uplink6(LINKS, addrs6, 2, None, public_ipv6="fd19::11").name == "eth1"
    with pytest.raises(InterfaceError, match=r"no interface owns -public-ipv6 fd18::99"):
        select_uplink6(LINKS, addrs6, 2, None, public_ipv6="fd18::99")
    with pytest.raises(InterfaceError, match=r"^-iface-can-reach fd18::1: not supported on an IPv6-only network"):
        select_uplink6(LINKS, addrs6, 2, None, iface_can_reach="fd18::1")
    with pytest.raises(InterfaceError, match=r"no IPv6 default route interface"):
        select_uplink6(LINKS, addrs6, None, None)


# --- flannelctl reservations ---------------------------------------------------------------------------------
def test_reservation_rules_on_a_v6_only_network() -> None:
    c = cfg()
    assert keyspace.parse_subnet("fd64:0:0:9::-64") == IPv6Network("fd64:0:0:9::/64")
    assert keyspace.parse_subnet("/p/subnets/fd64:0:0:9::-64") == IPv6Network("fd64:0:0:9::/64")
    assert keyspace.parse_public_ip("fd18::11") == ME6
    other = [v6lease("fd64:0:0:9::/64", PEER6)]
    assert keyspace.check_reservation(c, IPv6Network("fd64:0:0:8::/64"), ME6, other) == []
    with pytest.raises(keyspace.CtlError, match=r"overlaps the lease fd64:0:0:9::/64 of fd18::12"):
        keyspace.check_reservation(c, IPv6Network("fd64:0:0:9::/64"), ME6, other)
    with pytest.raises(keyspace.CtlError, match=r"is an IPv4 subnet, but the network is IPv6-only"):
        keyspace.check_reservation(c, IPv4Network("100.64.9.0/24"), IPv4Address("198.18.0.11"), [])
    with pytest.raises(keyspace.CtlError, match=r"--public-ip 198.18.0.11 must be the node's PublicIPv6"):
        keyspace.check_reservation(c, IPv6Network("fd64:0:0:8::/64"), IPv4Address("198.18.0.11"), [])
    with pytest.raises(keyspace.CtlError, match=r"not a /64 subnet \(the config's IPv6SubnetLen\)"):
        keyspace.check_reservation(c, IPv6Network("fd64:0:0:8::/80"), ME6, [])
    with pytest.raises(keyspace.CtlError, match=r"outside the IPv6Network fd64::/48"):
        keyspace.check_reservation(c, IPv6Network("fd65::/64"), ME6, [])
    dual = parse_config('{"Network":"100.64.0.0/16","EnableIPv6":true,"IPv6Network":"fd64::/48"}')
    with pytest.raises(keyspace.CtlError, match=r"can be reserved only on an IPv6-only network"):
        keyspace.check_reservation(dual, IPv6Network("fd64:0:0:8::/64"), ME6, [])


# --- the daemon over fakes ------------------------------------------------------------------------------------
def test_daemon_over_fakes_on_a_v6_only_host_gw_network(tmp_path: Path) -> None:
    """No IPv4 anywhere: the lease, the routes, the firewall spec and subnet.env are IPv6 only."""
    conf = json.dumps({**V6ONLY, "Backend": {"Type": "host-gw"}})
    sm = FakeSubnetManager(conf, own_subnet=None, own_subnet6="fd64:0:0:11::/64")
    dp = FakeDataplane()
    fws = {"iptables": FakeFirewall("iptables"), "nftables": FakeFirewall("nftables")}
    env = tmp_path / "subnet.env"
    opts = parse_flags([f"-subnet-file={env}", "-ip-masq", "-resync-period=3600"], {})
    d = Daemon(opts, sm=sm, host=FakeHost(dp), firewalls=fws, backend=HostGwBackend(parse_config(conf)))

    async def uplink() -> Uplink:
        return Uplink("eth0", 2, 1500, None, None, ME6, ME6, (IPv6Network("fd18::/64"),))

    d.find_uplink = uplink  # type: ignore[method-assign]  # the fake kernel has no IPv6 addresses to read

    async def go() -> None:
        task = asyncio.create_task(d.main())
        for _ in range(500):
            await asyncio.sleep(0.01)
            if d.reconciler is not None and d.reconciler.first_pass.is_set():
                break
        assert sm.own is not None and sm.own.attrs.to_json() == \
            '{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::11","BackendType":"host-gw"}'
        sm.put(v6lease("fd64:0:0:12::/64", PEER6, btype="host-gw"),
               v6lease("fd64:0:0:13::/64", THIRD6, btype="host-gw"))
        want = {Route(IPv6Network("fd64:0:0:12::/64"), PEER6, "eth0"), Route(IPv6Network("fd64:0:0:13::/64"), THIRD6,
                                                                             "eth0")}
        for _ in range(500):
            await asyncio.sleep(0.01)
            if set(dp.kernel.entries) == want:
                break
        assert set(dp.kernel.entries) == want
        spec = fws["iptables"].spec
        assert spec is not None and (spec.network, spec.subnet) == (None, None)
        assert (spec.network6, spec.subnet6) == (IPv6Network("fd64::/48"), IPv6Network("fd64:0:0:11::/64"))
        d.stop.set()
        assert await asyncio.wait_for(task, 20) == 0

    asyncio.run(go())
    assert env.read_text() == ("FLANNEL_IPV6_NETWORK=fd64::/48\nFLANNEL_IPV6_SUBNET=fd64:0:0:11::1/64\n"
                               "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n")


def test_kube_mode_v6_only_lease_and_annotations_as_flannel() -> None:
    """flannel's kube manager with EnableIPv4=false reads and writes only the IPv6 podCIDR and annotations."""
    from pyflannel.core import kube as k

    ann = k.Annotations.for_prefix(k.DEFAULT_PREFIX)
    p = "flannel.alpha.coreos.com/"
    node = {"metadata": {"name": "n2", "annotations": {
        p + "kube-subnet-manager": "true", p + "backend-type": "vxlan", p + "public-ipv6": "fd18::12",
        p + "backend-v6-data": '{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:02"}'}},
        "spec": {"podCIDR": "fd64:0:0:2::/64", "podCIDRs": ["fd64:0:0:2::/64"]}}
    le = k.node_to_lease(node, ann, enable_ipv6=True, enable_ipv4=False)
    assert (le.subnet, le.subnet6, le.attrs.public_ip, le.attrs.public_ipv6) == (
        None, IPv6Network("fd64:0:0:2::/64"), ZERO, PEER6)
    assert le.attrs.backend_v6_data == DATA6 and le.attrs.backend_data is None
    with pytest.raises(LeaseFormatError, match="bad flannel.alpha.coreos.com/public-ip annotation"):
        k.node_to_lease(node, ann, enable_ipv6=True)  # with IPv4 on, the IPv4 annotations are required
    # what we write: vxlan has no IPv4 backend-data, so no public-ip/backend-data (Go: bd == "null")
    want, _ = k.desired_annotations({}, LeaseAttrs(ZERO, ME6, "vxlan", None, DATA6), ann)
    assert want == {p + "backend-type": "vxlan", p + "backend-v6-data": DATA6, p + "public-ipv6": "fd18::11",
                    p + "kube-subnet-manager": "true"}
    want, _ = k.desired_annotations({}, LeaseAttrs(ZERO, ME6, "host-gw"), ann)
    assert want[p + "public-ip"] == "0.0.0.0" and want[p + "backend-data"] == "null"  # as Go writes them


def test_cni_delegate_from_a_v6_only_subnet_env() -> None:
    """The flannel CNI plugin reads the IPv6-only subnet.env: one IPv6 range, one IPv6 route."""
    from pyflannel.core.cni_conf import delegate_ipam, parse_subnet_env

    text = SubnetEnv(None, None, 1430, True, IPv6Network("fd64::/48"), IPv6Network("fd64:0:0:5::/64")).render()
    fenv = parse_subnet_env(text, "/run/flannel/subnet.env")
    assert (fenv["network"], fenv["subnet"], fenv["mtu"]) == (None, None, 1430)
    ipam = delegate_ipam({}, fenv)
    assert ipam["ranges"] == [[{"subnet": "fd64:0:0:5::/64"}]] and ipam["routes"] == [{"dst": "fd64::/48"}]


def test_status_file_metrics_and_readyz_for_a_v6_only_lease(tmp_path: Path) -> None:
    """The daemon's status file and /metrics name an IPv6-only lease by its IPv6 subnet and PublicIPv6."""
    import time

    from test_flannelctl_daemon_endpoints import body, daemon, samples, sync

    from pyflannel.adapters.registry import EtcdLease
    from pyflannel.daemon.health import route

    d = daemon(tmp_path)
    exp = time.time() + 86400
    d.keeper.lease = EtcdLease.make(None, LeaseAttrs(ZERO, ME6, "vxlan", None, DATA6), IPv6Network("fd64:0:0:11::/64"),
                                    42, exp, 3)
    sync(d)
    st = json.loads((tmp_path / "pyflannel-status.json").read_text())["lease"]
    assert (st["subnet"], st["subnet6"], st["public_ip"], st["public_ipv6"]) == (None, "fd64:0:0:11::/64", "0.0.0.0",
                                                                                 "fd18::11")
    m = samples(d)
    assert m["flannel_lease_expiry_timestamp_seconds{public_ip=fd18::11,subnet=fd64:0:0:11::/64}"] == exp
    d.keeper.lease = EtcdLease.make(None, d.keeper.lease.attrs, d.keeper.lease.subnet6, 42, time.time() - 5, 3)
    assert "subnet lease fd64:0:0:11::/64 expired 5s ago" in body(route(d, "/readyz"))[1]
