"""The vxlan backend's peer selection and desired state (flannel-spec.md section 4, reference-state.md 3)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core.backends.vxlan import (
    DEFAULT_PORT,
    Peer,
    Rejected,
    VxlanOptions,
    desired_state,
    mtu_for,
    parse_options,
    select_peers,
)
from pyflannel.core.errors import ConfigError
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData
from pyflannel.core.model import Fdb, Neigh, PeerState, Route

NETWORK = IPv4Network("100.64.0.0/16")
DEV = "flannel.1"


def vx_lease(
    subnet: str, public_ip: str, mac: str | None, backend_type: str = "vxlan", data: str | None = None
) -> Lease:
    if data is None and mac is not None:
        data = VxlanData(1, mac).to_json()
    return Lease(
        IPv4Network(subnet),
        LeaseAttrs(IPv4Address(public_ip), backend_type=backend_type, backend_data=data),
    )


# The reference cluster (reference-state.md sections 2 and 3).
OWN = vx_lease("100.64.67.0/24", "198.18.0.11", "b6:3a:f4:a5:6f:94")
N3 = vx_lease("100.64.81.0/24", "198.18.0.13", "2a:a3:22:0d:18:d9")
N2 = vx_lease("100.64.85.0/24", "198.18.0.12", "06:4f:e4:07:6e:78")


def test_reference_peers() -> None:
    peers, rejected = select_peers(OWN, [N2, OWN, N3], NETWORK)
    assert peers == [Peer(N3, "2a:a3:22:0d:18:d9"), Peer(N2, "06:4f:e4:07:6e:78")]
    assert rejected == []


def test_reference_desired_state_exactly() -> None:
    peers, _ = select_peers(OWN, [OWN, N3, N2], NETWORK)
    got = desired_state(DEV, peers)
    assert got == PeerState(
        routes=frozenset(
            {
                Route(IPv4Network("100.64.81.0/24"), IPv4Address("100.64.81.0"), "flannel.1", onlink=True),
                Route(IPv4Network("100.64.85.0/24"), IPv4Address("100.64.85.0"), "flannel.1", onlink=True),
            }
        ),
        neighs=frozenset(
            {
                Neigh(IPv4Address("100.64.81.0"), "2a:a3:22:0d:18:d9", "flannel.1"),
                Neigh(IPv4Address("100.64.85.0"), "06:4f:e4:07:6e:78", "flannel.1"),
            }
        ),
        fdbs=frozenset(
            {
                Fdb("2a:a3:22:0d:18:d9", IPv4Address("198.18.0.13"), "flannel.1"),
                Fdb("06:4f:e4:07:6e:78", IPv4Address("198.18.0.12"), "flannel.1"),
            }
        ),
    )
    # No route for the whole Network and none for our own subnet.
    assert all(r.dst not in (NETWORK, OWN.subnet) for r in got.routes)


def test_single_peer_entries() -> None:
    st_ = desired_state(DEV, [Peer(N3, "2a:a3:22:0d:18:d9")])
    assert st_.neighs == {Neigh(IPv4Address("100.64.81.0"), "2a:a3:22:0d:18:d9", "flannel.1")}
    assert st_.fdbs == {Fdb("2a:a3:22:0d:18:d9", IPv4Address("198.18.0.13"), "flannel.1")}
    assert st_.routes == {Route(IPv4Network("100.64.81.0/24"), IPv4Address("100.64.81.0"), "flannel.1", onlink=True)}


def test_own_subnet_dropped_silently_even_with_other_ip() -> None:
    # A lease for our subnet (even one published by another host) is never a peer and not "rejected".
    twin = vx_lease("100.64.67.0/24", "198.18.0.50", "02:00:00:00:00:50")
    peers, rejected = select_peers(OWN, [twin, N3], NETWORK)
    assert [p.lease for p in peers] == [N3]
    assert rejected == []


@pytest.mark.parametrize(
    "lease",
    [
        pytest.param(vx_lease("100.64.90.0/24", "198.18.0.20", None, backend_type="host-gw"), id="host-gw"),
        pytest.param(vx_lease("100.64.91.0/24", "198.18.0.21", None, backend_type=""), id="udp-no-type"),
        pytest.param(vx_lease("100.64.92.0/24", "198.18.0.22", None, backend_type="wireguard",
                              data='{"PublicKey":"abc="}'), id="wireguard"),
        pytest.param(vx_lease("100.64.93.0/24", "198.18.0.23", "02:00:00:00:00:23", backend_type="VXLAN"),
                     id="upper-case-type-is-foreign"),
        pytest.param(vx_lease("10.9.0.0/24", "198.18.0.24", None, backend_type="host-gw"),
                     id="foreign-and-outside-network"),
    ],
)
def test_foreign_backend_type_dropped_silently(lease: Lease) -> None:
    peers, rejected = select_peers(OWN, [lease, N3], NETWORK)
    assert [p.lease for p in peers] == [N3]
    assert rejected == []


REJECTS = [
    pytest.param(vx_lease("10.9.0.0/24", "198.18.0.30", "02:00:00:00:00:30"), (), "outside the Network",
                 id="outside-network"),
    pytest.param(vx_lease("100.0.0.0/8", "198.18.0.31", "02:00:00:00:00:31"), (), "outside the Network",
                 id="covers-network"),
    pytest.param(vx_lease("100.64.0.0/16", "198.18.0.32", "02:00:00:00:00:32"), (), "overlaps our own subnet",
                 id="whole-network"),
    pytest.param(vx_lease("100.64.64.0/22", "198.18.0.33", "02:00:00:00:00:33"), (), "overlaps our own subnet",
                 id="covers-own-subnet"),
    pytest.param(vx_lease("100.64.67.128/25", "198.18.0.34", "02:00:00:00:00:34"), (), "overlaps our own subnet",
                 id="inside-own-subnet"),
    pytest.param(vx_lease("100.64.201.0/24", "198.18.0.35", "02:00:00:00:00:35"),
                 (IPv4Network("100.64.200.0/22"),), "overlaps the node network", id="protected-network"),
    pytest.param(vx_lease("100.64.200.0/22", "198.18.0.36", "02:00:00:00:00:36"),
                 (IPv4Network("192.168.0.0/24"), IPv4Network("100.64.201.0/24")), "overlaps the node network",
                 id="covers-protected"),
    pytest.param(vx_lease("100.64.95.0/24", "198.18.0.11", "02:00:00:00:00:37"), (), "our own",
                 id="own-public-ip"),
    pytest.param(vx_lease("100.64.96.0/24", "0.0.0.0", "02:00:00:00:00:38"), (), "not a unicast host address",
                 id="public-ip-zero"),
    pytest.param(vx_lease("100.64.97.0/24", "224.0.0.1", "02:00:00:00:00:39"), (), "not a unicast host address",
                 id="public-ip-multicast"),
    pytest.param(vx_lease("100.64.98.0/24", "127.0.0.1", "02:00:00:00:00:40"), (), "not a unicast host address",
                 id="public-ip-loopback"),
    pytest.param(vx_lease("100.64.99.0/24", "198.18.0.41", None), (), "no BackendData", id="missing-backend-data"),
    pytest.param(vx_lease("100.64.100.0/24", "198.18.0.42", None, data='{"VNI":1,"VtepMAC":"zz:00:00:00:00:42"}'),
                 (), "VtepMAC", id="bad-mac"),
    pytest.param(vx_lease("100.64.101.0/24", "198.18.0.43", None, data='{"VNI":1}'), (), "VtepMAC",
                 id="missing-mac"),
    pytest.param(vx_lease("100.64.102.0/24", "198.18.0.44", None, data="[1,2]"), (), "not an object",
                 id="backend-data-not-object"),
]


@pytest.mark.parametrize(("lease", "protected", "reason"), REJECTS)
def test_rejected_with_reason(lease: Lease, protected: tuple[IPv4Network, ...], reason: str) -> None:
    peers, rejected = select_peers(OWN, [lease, N3, N2], NETWORK, protected)
    assert [p.lease for p in peers] == [N3, N2]
    assert len(rejected) == 1
    assert rejected[0].key == lease.key_name
    assert reason in rejected[0].reason
    assert "\n" not in rejected[0].reason


def test_protected_network_outside_pod_network_does_not_reject_peers() -> None:
    peers, rejected = select_peers(OWN, [N3, N2], NETWORK, [IPv4Network("198.18.0.0/24")])
    assert len(peers) == 2 and rejected == []


def test_overlapping_peers_keep_the_first_by_subnet_order() -> None:
    big = vx_lease("100.64.80.0/23", "198.18.0.50", "02:00:00:00:00:50")
    peers, rejected = select_peers(OWN, [N3, big], NETWORK)
    assert [p.lease for p in peers] == [big]
    assert rejected == [Rejected(N3.key_name, "subnet 100.64.81.0/24 overlaps peer 100.64.80.0/23")]


def test_upper_case_mac_normalised_for_peer() -> None:
    le = vx_lease("100.64.81.0/24", "198.18.0.13", None, data='{"VNI":1,"VtepMAC":"2A:A3:22:0D:18:D9"}')
    peers, _ = select_peers(OWN, [le], NETWORK)
    assert peers == [Peer(le, "2a:a3:22:0d:18:d9")]
    assert desired_state(DEV, peers).neighs == {Neigh(IPv4Address("100.64.81.0"), "2a:a3:22:0d:18:d9", DEV)}


def test_vni_in_lease_is_informational() -> None:
    # "the VNI field is informational -- receivers never check it"
    le = vx_lease("100.64.81.0/24", "198.18.0.13", None, data='{"VNI":42,"VtepMAC":"2a:a3:22:0d:18:d9"}')
    old = vx_lease("100.64.85.0/24", "198.18.0.12", None, data='{"VtepMAC":"06:4f:e4:07:6e:78"}')
    peers, rejected = select_peers(OWN, [le, old], NETWORK)
    assert len(peers) == 2 and rejected == []


# --------------------------------------------------------------------------------------------
# DirectRouting
# --------------------------------------------------------------------------------------------
PEERS = [Peer(N3, "2a:a3:22:0d:18:d9"), Peer(N2, "06:4f:e4:07:6e:78")]


def test_direct_routing_onlink_peer_gets_plain_route() -> None:
    onlink = [IPv4Network("198.18.0.0/24")]
    got = desired_state(DEV, PEERS, direct_routing=True, uplink="abeth0", onlink_networks=onlink)
    assert got == PeerState(
        routes=frozenset(
            {
                Route(IPv4Network("100.64.81.0/24"), IPv4Address("198.18.0.13"), "abeth0", onlink=False),
                Route(IPv4Network("100.64.85.0/24"), IPv4Address("198.18.0.12"), "abeth0", onlink=False),
            }
        )
    )


def test_direct_routing_mixed() -> None:
    got = desired_state(
        DEV, PEERS, direct_routing=True, uplink="abeth0", onlink_networks=[IPv4Network("198.18.0.12/32")]
    )
    assert got.routes == {
        Route(IPv4Network("100.64.85.0/24"), IPv4Address("198.18.0.12"), "abeth0"),
        Route(IPv4Network("100.64.81.0/24"), IPv4Address("100.64.81.0"), DEV, onlink=True),
    }
    assert got.neighs == {Neigh(IPv4Address("100.64.81.0"), "2a:a3:22:0d:18:d9", DEV)}
    assert got.fdbs == {Fdb("2a:a3:22:0d:18:d9", IPv4Address("198.18.0.13"), DEV)}


@pytest.mark.parametrize(
    ("direct", "uplink", "onlink"),
    [
        pytest.param(False, "abeth0", [IPv4Network("198.18.0.0/24")], id="direct-routing-off"),
        pytest.param(True, "", [IPv4Network("198.18.0.0/24")], id="no-uplink"),
        pytest.param(True, "abeth0", [], id="no-onlink-networks"),
        pytest.param(True, "abeth0", [IPv4Network("10.0.0.0/8")], id="peer-not-onlink"),
    ],
)
def test_direct_routing_not_applicable_falls_back_to_vxlan(
    direct: bool, uplink: str, onlink: list[IPv4Network]
) -> None:
    assert desired_state(DEV, PEERS, direct, uplink, onlink) == desired_state(DEV, PEERS)


def test_empty() -> None:
    assert desired_state(DEV, []) == PeerState()
    assert select_peers(OWN, [], NETWORK) == ([], [])


# --------------------------------------------------------------------------------------------
# Options and MTU
# --------------------------------------------------------------------------------------------
def test_parse_options_defaults() -> None:
    opts = parse_options({"Type": "vxlan"})
    assert opts == VxlanOptions(vni=1, port=0, gbp=False, direct_routing=False, learning=False, mtu=0)
    assert opts.device == "flannel.1"
    assert parse_options({}) == opts
    assert DEFAULT_PORT == 8472


def test_parse_options_all_set() -> None:
    opts = parse_options(
        {"Type": "vxlan", "VNI": 42, "Port": 4789, "GBP": True, "DirectRouting": True, "Learning": True, "MTU": 1400}
    )
    assert opts == VxlanOptions(vni=42, port=4789, gbp=True, direct_routing=True, learning=True, mtu=1400)
    assert opts.device == "flannel.42"


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        pytest.param({"vni": 2, "directrouting": True}, VxlanOptions(vni=2, direct_routing=True), id="lower-case"),
        pytest.param({"VNI": 0}, VxlanOptions(vni=0), id="vni-0"),
        pytest.param({"VNI": 16777215}, VxlanOptions(vni=16777215), id="vni-max"),
        pytest.param({"Port": 65535}, VxlanOptions(port=65535), id="port-max"),
        pytest.param({"VNI": None, "GBP": None}, VxlanOptions(), id="nulls-are-defaults"),
        pytest.param({"MacPrefix": "0E-2A", "Other": [1]}, VxlanOptions(), id="unknown-and-windows-keys-ignored"),
        pytest.param({"GBP": False, "Learning": False}, VxlanOptions(), id="explicit-false"),
    ],
)
def test_parse_options_values(backend: dict[str, Any], expected: VxlanOptions) -> None:
    assert parse_options(backend) == expected


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        pytest.param({"VNI": "1"}, "VNI", id="vni-string"),
        pytest.param({"VNI": -1}, "VNI", id="vni-negative"),
        pytest.param({"VNI": 1 << 24}, "VNI", id="vni-too-large"),
        pytest.param({"VNI": 1.5}, "VNI", id="vni-fraction"),
        pytest.param({"VNI": True}, "VNI", id="vni-bool"),
        pytest.param({"Port": 65536}, "Port", id="port-too-large"),
        pytest.param({"Port": "8472"}, "Port", id="port-string"),
        pytest.param({"GBP": "true"}, "GBP", id="gbp-string"),
        pytest.param({"DirectRouting": 1}, "DirectRouting", id="directrouting-number"),
        pytest.param({"Learning": "no"}, "Learning", id="learning-string"),
        pytest.param({"MTU": -1}, "MTU", id="mtu-negative"),
        pytest.param({"MTU": "1400\n"}, "MTU", id="mtu-string-with-newline"),
    ],
)
def test_parse_options_errors(backend: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_options(backend)
    msg = str(ei.value)
    assert msg.startswith("error decoding VXLAN backend config: ")
    assert field in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("uplink", "opts", "expected"),
    [
        pytest.param(1500, VxlanOptions(), 1450, id="reference-1500"),
        pytest.param(9000, VxlanOptions(), 8950, id="jumbo"),
        pytest.param(1500, VxlanOptions(mtu=1400), 1350, id="backend-mtu-replaces-uplink"),
        pytest.param(1450, VxlanOptions(vni=7), 1400, id="other-vni"),
    ],
)
def test_mtu_for(uplink: int, opts: VxlanOptions, expected: int) -> None:
    assert mtu_for(uplink, opts) == expected


# --------------------------------------------------------------------------------------------
# Property: whatever the leases, accepted peers are safe to route
# --------------------------------------------------------------------------------------------
_macs = st.sampled_from(["2a:a3:22:0d:18:d9", "06:4F:E4:07:6E:78", "bad", "02:00:00:00:00:01"])
_subnet = st.builds(
    lambda a, p: IPv4Network((a, p), strict=False),
    st.integers(int(IPv4Address("100.63.0.0")), int(IPv4Address("100.65.255.255"))),
    st.integers(14, 28),
)
_pub = st.sampled_from(["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.1.5", "0.0.0.0", "127.0.0.1"])
_leases = st.builds(
    lambda sn, ip, mac, t: Lease(sn, LeaseAttrs(IPv4Address(ip), backend_type=t,
                                                backend_data=VxlanData(1, mac).to_json())),
    _subnet, _pub, _macs, st.sampled_from(["vxlan", "vxlan", "host-gw", ""]),
)


@settings(max_examples=400)
@given(leases=st.lists(_leases, max_size=10), protected=st.lists(_subnet, max_size=2))
def test_selected_peers_are_safe(leases: list[Lease], protected: list[IPv4Network]) -> None:
    peers, rejected = select_peers(OWN, leases, NETWORK, protected)
    for p in peers:
        sn = p.lease.subnet
        assert p.lease.attrs.backend_type == "vxlan"
        assert sn.subnet_of(NETWORK)
        assert not sn.overlaps(OWN.subnet)
        assert not any(sn.overlaps(x) for x in protected)
        assert p.lease.attrs.public_ip != OWN.attrs.public_ip
        assert p.vtep_mac == p.vtep_mac.lower()
    for a in peers:
        for b in peers:
            assert a is b or not a.lease.subnet.overlaps(b.lease.subnet)
    # Every lease is exactly one of: own subnet, foreign, peer, rejected.
    foreign = [le for le in leases if le.subnet != OWN.subnet and le.attrs.backend_type != "vxlan"]
    own = [le for le in leases if le.subnet == OWN.subnet]
    assert len(own) + len(foreign) + len(peers) + len(rejected) == len(leases)
    state = desired_state(DEV, peers)
    assert len(state.routes) == len(state.neighs) == len(peers)
    assert {r.dst for r in state.routes} == {p.lease.subnet for p in peers}
