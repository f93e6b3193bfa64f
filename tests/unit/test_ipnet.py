"""Subnet keys (flannel-spec.md section 1.2) and subnet math."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pyflannel.core.errors import LeaseFormatError
from pyflannel.core.ipnet import (
    first_host,
    make_subnet_key,
    overlaps,
    parse_cidr4,
    parse_ipv4,
    parse_subnet_key,
    subnets_between,
)

# --------------------------------------------------------------------------------------------
# parse_subnet_key / make_subnet_key examples
# --------------------------------------------------------------------------------------------
KEY_EXAMPLES = [
    pytest.param("10.5.34.0-24", "10.5.34.0/24", None, "10.5.34.0-24", id="spec-v4"),
    pytest.param(
        "10.5.34.0-24&fc00:0:0:22::-64", "10.5.34.0/24", "fc00:0:0:22::/64", "10.5.34.0-24&fc00:0:0:22::-64",
        id="spec-dual-stack",
    ),
    pytest.param(
        "/coreos.com/network/subnets/100.64.67.0-24", "100.64.67.0/24", None, "100.64.67.0-24",
        id="reference-full-key",
    ),
    pytest.param(
        "/coreos.com/network/subnets/10.5.34.0-24&fc00:0:0:22::-64", "10.5.34.0/24", "fc00:0:0:22::/64",
        "10.5.34.0-24&fc00:0:0:22::-64", id="full-key-dual-stack",
    ),
    pytest.param("/my/prefix/subnets/10.5.34.0-24", "10.5.34.0/24", None, "10.5.34.0-24", id="custom-prefix"),
    pytest.param("0.0.0.0-0", "0.0.0.0/0", None, "0.0.0.0-0", id="zero"),
    pytest.param("10.5.34.128-25", "10.5.34.128/25", None, "10.5.34.128-25", id="/25"),
    pytest.param("10.0.0.0-8", "10.0.0.0/8", None, "10.0.0.0-8", id="/8"),
    pytest.param(
        "10.5.34.0-24&fc00::-64", "10.5.34.0/24", "fc00::/64", "10.5.34.0-24&fc00::-64", id="dual-stack-short-v6"
    ),
    pytest.param(
        "10.5.34.0-24&fc00:0:0:22:0:0:0:0-64", "10.5.34.0/24", "fc00:0:0:22::/64", "10.5.34.0-24&fc00:0:0:22::-64",
        id="dual-stack-uncompressed-v6-accepted",
    ),
]


@pytest.mark.parametrize(("key", "sn4", "sn6", "canonical"), KEY_EXAMPLES)
def test_parse_subnet_key_examples(key: str, sn4: str, sn6: str | None, canonical: str) -> None:
    got4, got6 = parse_subnet_key(key)
    assert got4 == IPv4Network(sn4)
    assert got6 == (IPv6Network(sn6) if sn6 else None)
    assert make_subnet_key(got4, got6) == canonical


def test_make_subnet_key_examples() -> None:
    assert make_subnet_key(IPv4Network("100.64.67.0/24")) == "100.64.67.0-24"
    assert make_subnet_key(IPv4Network("10.5.34.0/24"), None) == "10.5.34.0-24"
    assert (
        make_subnet_key(IPv4Network("10.5.34.0/24"), IPv6Network("fc00:0:0:22::/64"))
        == "10.5.34.0-24&fc00:0:0:22::-64"
    )
    # Go's compressed form: the longest zero run becomes '::', a single zero group stays.
    assert (
        make_subnet_key(IPv4Network("10.5.34.0/24"), IPv6Network("2001:db8:0:1:0:0:0:0/64"))
        == "10.5.34.0-24&2001:db8:0:1::-64"
    )


BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("subnets", id="word"),
    pytest.param("/coreos.com/network/subnets/", id="directory"),
    pytest.param("/coreos.com/network/config", id="config-key"),
    pytest.param("10.5.34.0", id="no-prefix"),
    pytest.param("10.5.34.0-", id="dash-no-prefix"),
    pytest.param("10.5.34.0/24", id="slash-instead-of-dash"),
    pytest.param("10.5.34-24", id="three-octets"),
    pytest.param("10.5.34.0-33", id="prefix-33"),
    pytest.param("300.5.34.0-24", id="octet-300"),
    pytest.param("10.5.34.0-24/extra", id="suffix"),
    pytest.param("10.5.34.0-24x", id="trailing-char"),
    pytest.param("10.5x34x0-24", id="unescaped-dots-match-regex-but-not-an-ip"),
    pytest.param("10.5.34.0-24&FC00::-64", id="upper-case-v6-not-in-regex"),
    pytest.param("10.5.34.0-24&zz::-64", id="v6-garbage"),
    pytest.param("10.5.34.0-24&fc00::-129", id="v6-prefix-129"),
    pytest.param("10.5.34.0-24&fc00:::1-64", id="v6-bad-colons"),
    pytest.param("10.5.34.0-24&fc00::-", id="v6-no-prefix"),
    pytest.param("10.5.34.0-24&-64", id="v6-empty"),
    pytest.param("-24", id="only-prefix"),
    pytest.param("10.5.34.0-99999999999999999999999", id="huge-prefix"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_parse_subnet_key_rejects(key: str) -> None:
    with pytest.raises(LeaseFormatError) as ei:
        parse_subnet_key(key)
    assert "\n" not in str(ei.value)


def test_go_regex_unescaped_dot_quirk_accepted() -> None:
    # flanneld's regex has '.' unescaped between the 2nd/3rd and 3rd/4th octets; the match still has to be a
    # valid dotted quad, so the only observable effect is where the match can start.
    assert parse_subnet_key("x10.5.34.0-24") == (IPv4Network("10.5.34.0/24"), None)


# --- exactly what Go's regexp accepts (ipnet.py: "a key that Go accepts must not be rejected here") ---


def test_trailing_newline_is_rejected_like_go() -> None:
    """Go's ``$`` (no multi-line flag) matches only at the end of the text; Python's ``$`` also matches
    before a final newline. flanneld ignores the key ``10.5.34.0-24\\n`` ("Ignoring bad subnet node"), so the
    Python parser must reject it too, otherwise two nodes disagree about which leases exist (and the parsed
    lease's ``key_name`` would not even name the key it came from)."""
    with pytest.raises(LeaseFormatError):
        parse_subnet_key("10.5.34.0-24\n")


def test_non_ascii_digits_do_not_hide_a_key_go_accepts() -> None:
    """Go's ``\\d`` is ASCII-only; Python's ``\\d`` on str also matches e.g. ARABIC-INDIC DIGIT THREE.
    For the key ``\u066310.5.34.0-24`` Go's leftmost match starts at ``10.5.34.0-24`` and accepts it;
    Python's leftmost match swallows the non-ASCII digit and then fails."""
    assert parse_subnet_key("\u066310.5.34.0-24") == (IPv4Network("10.5.34.0/24"), None)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
# Go's ParseSubnetKey caps the prefix at 31 (IPv4) and 127 (IPv6); longer ones are bad keys.
ipv4_networks = st.builds(
    lambda a, p: IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 31)
)
ipv6_networks = st.builds(
    lambda a, p: IPv6Network((a, p), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 127)
)


@pytest.mark.parametrize("key", ["10.5.34.0-32", "10.5.34.0-24&fc00::-128"])
def test_prefix_beyond_gos_limit_is_a_bad_key(key: str) -> None:
    with pytest.raises(LeaseFormatError, match="prefix length out of range"):
        parse_subnet_key(key)


@settings(max_examples=500)
@given(sn4=ipv4_networks, sn6=st.none() | ipv6_networks, prefix=st.sampled_from(["", "/coreos.com/network/subnets/"]))
def test_key_round_trip(sn4: IPv4Network, sn6: IPv6Network | None, prefix: str) -> None:
    key = make_subnet_key(sn4, sn6)
    assert "/" not in key
    assert parse_subnet_key(prefix + key) == (sn4, sn6)


_key_alphabet = st.sampled_from(list("0123456789.-&:abcdefABCDEF/xX \n\t") + ["\u0663", "\uff11", "::", "-24", "."])


@settings(max_examples=1000)
@given(st.text() | st.lists(_key_alphabet, max_size=40).map("".join))
def test_fuzz_parse_subnet_key(text: str) -> None:
    try:
        sn4, sn6 = parse_subnet_key(text)
    except LeaseFormatError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(sn4, IPv4Network)
    assert sn6 is None or isinstance(sn6, IPv6Network)


@settings(max_examples=300)
@given(prefix=st.integers(8, 32), k=st.integers(0, 2**32), n=st.integers(-3, 300), slack=st.integers(0, 2**24))
def test_subnets_between_properties(prefix: int, k: int, n: int, slack: int) -> None:
    step = 1 << (32 - prefix)
    lo_i = (k % (1 << prefix)) * step
    # hi need not be aligned: every subnet whose network address lies in [lo, hi] is produced.
    hi_i = lo_i + n * step + slack % step
    assume(0 <= hi_i < 2**32)
    got = list(subnets_between(IPv4Address(lo_i), IPv4Address(hi_i), prefix))
    assert [int(sn.network_address) for sn in got] == [lo_i + i * step for i in range(max(n + 1, 0))]
    for sn in got:
        assert sn.prefixlen == prefix
        assert int(sn.network_address) % step == 0
        assert lo_i <= int(sn.network_address) <= hi_i
    # consecutive subnets neither overlap nor leave gaps
    for a, b in zip(got, got[1:], strict=False):
        assert not a.overlaps(b)
        assert int(b.network_address) == int(a.broadcast_address) + 1


def test_subnets_between_examples() -> None:
    got = list(subnets_between(IPv4Address("100.64.1.0"), IPv4Address("100.64.255.0"), 24))
    assert len(got) == 255
    assert got[0] == IPv4Network("100.64.1.0/24") and got[-1] == IPv4Network("100.64.255.0/24")
    assert list(subnets_between(IPv4Address("10.0.0.4"), IPv4Address("10.0.0.12"), 30)) == [
        IPv4Network("10.0.0.4/30"), IPv4Network("10.0.0.8/30"), IPv4Network("10.0.0.12/30"),
    ]
    assert list(subnets_between(IPv4Address("10.0.0.8"), IPv4Address("10.0.0.4"), 30)) == []
    # Top of the address space terminates.
    assert list(subnets_between(IPv4Address("255.255.255.0"), IPv4Address("255.255.255.0"), 24)) == [
        IPv4Network("255.255.255.0/24")
    ]


@pytest.mark.parametrize(
    ("net", "host"),
    [
        pytest.param("100.64.67.0/24", "100.64.67.1", id="reference"),
        pytest.param("10.5.72.0/24", "10.5.72.1", id="spec"),
        pytest.param("10.0.0.128/25", "10.0.0.129", id="/25"),
        pytest.param("10.0.0.4/30", "10.0.0.5", id="/30"),
    ],
)
def test_first_host(net: str, host: str) -> None:
    assert first_host(IPv4Network(net)) == IPv4Address(host)


def test_overlaps() -> None:
    assert overlaps(IPv4Network("10.0.0.0/16"), IPv4Network("10.0.5.0/24"))
    assert not overlaps(IPv4Network("10.0.0.0/24"), IPv4Network("10.0.1.0/24"))
    assert not overlaps(IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))


def test_parse_helpers() -> None:
    assert parse_ipv4("198.18.0.11", "PublicIP") == IPv4Address("198.18.0.11")
    with pytest.raises(ValueError, match="PublicIP"):
        parse_ipv4("198.18.0", "PublicIP")
    assert parse_cidr4("10.5.0.1/16", "Network") == IPv4Network("10.5.0.0/16")
    with pytest.raises(ValueError, match="Network"):
        parse_cidr4("10.5.0.1", "Network")
    with pytest.raises(ValueError, match="Network"):
        parse_cidr4("10.5.0.1/40", "Network")
