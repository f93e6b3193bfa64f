"""Dual-stack leases in etcd mode: the v6 half of the key, the lease JSON and the v6 allocation.

The exact strings are what flannel v0.28.9 writes (``subnet.MakeSubnetKey``, ``json.Marshal(LeaseAttrs)``,
``ip.IP6.String``) so Go and Python nodes can share one etcd prefix.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from pyflannel.core.allocate import CANDIDATES, choose_subnet, subnet6_fits
from pyflannel.core.config import parse_config
from pyflannel.core.errors import LeaseFormatError, OutOfSubnets
from pyflannel.core.ipnet import go_ip6_text, make_subnet_key, parse_subnet_key, subnets6_between
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData, parse_lease_attrs

ME = IPv4Address("198.18.0.11")
OTHER = IPv4Address("198.18.0.12")
DUAL = parse_config('{"Network":"100.64.0.0/16","EnableIPv6":true,"IPv6Network":"fd64::/48",'
                    '"Backend":{"Type":"vxlan"}}')
V4 = parse_config('{"Network":"100.64.0.0/16","Backend":{"Type":"vxlan"}}')
DATA = VxlanData(1, "02:aa:bb:cc:dd:01").to_json()
DATA6 = VxlanData(1, "02:aa:bb:cc:dd:02").to_json()


def lease(sn: str, sn6: str | None, ip: IPv4Address, reserved: bool = False) -> Lease:
    return Lease(
        subnet=IPv4Network(sn),
        subnet6=IPv6Network(sn6) if sn6 else None,
        attrs=LeaseAttrs(public_ip=ip, public_ipv6=IPv6Address("fd18::b") if ip == ME else IPv6Address("fd18::c"),
                         backend_type="vxlan", backend_data=DATA, backend_v6_data=DATA6),
        reserved=reserved,
        expiration=None if reserved else 1e9,
    )


# --- key and JSON -----------------------------------------------------------------------------------------
def test_dual_stack_key_is_gos() -> None:
    key = make_subnet_key(IPv4Network("100.64.5.0/24"), IPv6Network("fd64:0:0:5::/64"))
    assert key == "100.64.5.0-24&fd64:0:0:5::-64"
    assert parse_subnet_key(key) == (IPv4Network("100.64.5.0/24"), IPv6Network("fd64:0:0:5::/64"))
    sn6 = IPv6Network("fc00:0:0:22::/64")
    assert make_subnet_key(IPv4Network("10.5.34.0/24"), sn6) == "10.5.34.0-24&fc00:0:0:22::-64"
    assert make_subnet_key(IPv4Network("100.64.5.0/24")) == "100.64.5.0-24"


def test_dual_stack_lease_json_is_gos() -> None:
    attrs = LeaseAttrs(public_ip=ME, public_ipv6=IPv6Address("fd18::b"), backend_type="vxlan",
                       backend_data=DATA, backend_v6_data=DATA6)
    text = attrs.to_json()
    assert text == ('{"PublicIP":"198.18.0.11","PublicIPv6":"fd18::b","BackendType":"vxlan",'
                    '"BackendData":{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:01"},'
                    '"BackendV6Data":{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:02"}}')
    back = parse_lease_attrs(text)
    assert back == attrs and back.to_json() == text
    assert back.vxlan_v6_data() == VxlanData(1, "02:aa:bb:cc:dd:02")
    assert back.vxlan_data() == VxlanData(1, "02:aa:bb:cc:dd:01")


def test_go_written_dual_stack_lease_round_trips() -> None:
    # As Go v0.28.9 marshals it (field order, compact RawMessage).
    go = ('{"PublicIP":"198.18.0.13","PublicIPv6":"fd18::d","BackendType":"vxlan","BackendData":'
          '{"VNI":1,"VtepMAC":"6a:1f:00:3c:9e:10"},"BackendV6Data":{"VNI":1,"VtepMAC":"d2:6b:7d:5c:e1:0f"}}')
    attrs = parse_lease_attrs(go)
    assert attrs.public_ipv6 == IPv6Address("fd18::d")
    assert attrs.to_json() == go


def test_v6_data_errors_name_the_field() -> None:
    attrs = LeaseAttrs(public_ip=ME, backend_type="vxlan", backend_data=DATA)
    with pytest.raises(LeaseFormatError, match="no BackendV6Data"):
        attrs.vxlan_v6_data()
    bad = LeaseAttrs(public_ip=ME, backend_type="vxlan", backend_data=DATA, backend_v6_data='{"VNI":1}')
    with pytest.raises(LeaseFormatError, match="BackendV6Data.VtepMAC"):
        bad.vxlan_v6_data()


@pytest.mark.parametrize(("ip", "text"), [
    ("fd18::b", "fd18::b"),
    ("fd64:0:0:5::", "fd64:0:0:5::"),
    ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
    ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ("::5", "::5"),
    ("::", "::"),
])
def test_ip6_text_matches_go(ip: str, text: str) -> None:
    assert go_ip6_text(IPv6Address(ip)) == text


# --- allocation -------------------------------------------------------------------------------------------
def test_config_defaults_for_fd64_48() -> None:
    assert DUAL.ipv6_subnet_len == 64
    assert DUAL.ipv6_subnet_min == IPv6Address("fd64:0:0:1::")
    assert DUAL.ipv6_subnet_max == IPv6Address("fd64:0:0:ffff::")


def test_new_lease_gets_both_halves() -> None:
    taken = [lease(f"100.64.{i}.0/24", f"fd64:0:0:{i:x}::/64", OTHER) for i in range(1, 5)]
    c = choose_subnet(DUAL, taken, ME, None, random.Random(3))
    assert c.existing is None and c.subnet6 is not None
    assert subnet6_fits(DUAL, c.subnet6)
    assert all(not c.subnet6.overlaps(le.subnet6) for le in taken if le.subnet6)
    assert all(c.subnet != le.subnet for le in taken)
    # The first 100 free v6 subnets, as Go draws among them.
    assert int(c.subnet6.network_address) < int(IPv6Address("fd64:0:0:1::")) + (CANDIDATES + 4) * (1 << 64)


def test_ipv4_only_config_draws_no_v6_and_keeps_the_same_random_sequence() -> None:
    a = choose_subnet(V4, [], ME, None, random.Random(7))
    b = choose_subnet(DUAL, [], ME, None, random.Random(7))
    assert a.subnet6 is None
    assert a.subnet == b.subnet  # v4 is drawn first, as in Go


def test_reuse_by_public_ip_needs_both_halves() -> None:
    mine = lease("100.64.9.0/24", "fd64:0:0:9::/64", ME)
    c = choose_subnet(DUAL, [mine], ME, None, random.Random(1))
    assert c.existing == mine and c.subnet6 == IPv6Network("fd64:0:0:9::/64")
    # A v4-only lease of ours does not fit a dual-stack config: deleted, a new one is made.
    old = lease("100.64.9.0/24", None, ME)
    c = choose_subnet(DUAL, [old], ME, None, random.Random(1))
    assert c.existing is None and c.stale == (old,) and c.subnet6 is not None
    # ... and a dual-stack lease does not fit an IPv4-only config.
    c = choose_subnet(V4, [mine], ME, None, random.Random(1))
    assert c.existing is None and c.stale == (mine,) and c.subnet6 is None


def test_previous_subnets_from_subnet_env() -> None:
    c = choose_subnet(DUAL, [], ME, IPv4Network("100.64.20.0/24"), random.Random(1),
                      previous6=IPv6Network("fd64:0:0:20::/64"))
    assert (c.subnet, c.subnet6) == (IPv4Network("100.64.20.0/24"), IPv6Network("fd64:0:0:20::/64"))
    # The v6 half taken by another node: keep v4, draw a new v6.
    other = lease("100.64.21.0/24", "fd64:0:0:20::/64", OTHER)
    c = choose_subnet(DUAL, [other], ME, IPv4Network("100.64.20.0/24"), random.Random(1),
                      previous6=IPv6Network("fd64:0:0:20::/64"))
    assert c.subnet == IPv4Network("100.64.20.0/24")
    assert c.subnet6 is not None and c.subnet6 != IPv6Network("fd64:0:0:20::/64")
    # No previous v6 (IPv6 just enabled): the v4 subnet is kept.
    c = choose_subnet(DUAL, [], ME, IPv4Network("100.64.20.0/24"), random.Random(1))
    assert c.subnet == IPv4Network("100.64.20.0/24") and c.subnet6 is not None


def test_lost_race_excludes_the_v6_subnet() -> None:
    cfg = parse_config('{"Network":"100.64.0.0/16","EnableIPv6":true,"IPv6Network":"fd64::/62",'
                       '"Backend":{"Type":"vxlan"}}')
    assert cfg.ipv6_subnet_len == 64
    seen = {choose_subnet(cfg, [], ME, None, random.Random(s), exclude6=[IPv6Network("fd64:0:0:1::/64"),
                                                                          IPv6Network("fd64:0:0:2::/64")]).subnet6
            for s in range(20)}
    assert seen == {IPv6Network("fd64:0:0:3::/64")}
    with pytest.raises(OutOfSubnets):
        choose_subnet(cfg, [], ME, None, random.Random(1), exclude6=list(subnets6_between(
            cfg.ipv6_subnet_min, cfg.ipv6_subnet_max, 64)))  # type: ignore[arg-type]


def test_v4_only_leases_do_not_block_v6_candidates() -> None:
    # Go panics here (Overlaps on an empty IP6Net); a v4-only lease simply has no v6 half to avoid.
    taken = [lease(f"100.64.{i}.0/24", None, OTHER) for i in range(1, 4)]
    c = choose_subnet(DUAL, taken, ME, None, random.Random(1))
    assert c.subnet6 is not None and subnet6_fits(DUAL, c.subnet6)


def test_reserved_dual_stack_lease_is_kept() -> None:
    res = lease("100.64.200.0/24", "fd64:0:0:c8::/64", ME, reserved=True)
    c = choose_subnet(DUAL, [res], ME, None, random.Random(1))
    assert c.existing == res and c.subnet6 == IPv6Network("fd64:0:0:c8::/64")
