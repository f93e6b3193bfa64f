"""parse_config / check_backend_type: every default and every error of the network config.

Reference: flannel-spec.md sections 1.3 (fields and defaults) and 2 (validation messages).
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core.config import KNOWN_BACKENDS, NetworkConfig, check_backend_type, parse_config
from pyflannel.core.errors import ConfigError


def cfg(**fields: Any) -> str:
    return json.dumps(fields)


def assert_one_line(msg: str) -> None:
    assert msg, "error message is empty"
    assert "\n" not in msg and "\r" not in msg, f"error message is not a single line: {msg!r}"


# --------------------------------------------------------------------------------------------
# IPv4 defaults: (config text, Network, SubnetLen, SubnetMin, SubnetMax)
# --------------------------------------------------------------------------------------------
V4_DEFAULTS = [
    pytest.param(
        cfg(Network="10.244.0.0/16"), "10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0", id="spec-example-/16"
    ),
    pytest.param(
        cfg(Network="100.64.0.0/16", SubnetLen=24, Backend={"Type": "vxlan"}),
        "100.64.0.0/16", 24, "100.64.1.0", "100.64.255.0", id="reference-cluster-config",
    ),
    pytest.param(cfg(Network="10.0.0.0/8"), "10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0", id="auto-/8-gives-24"),
    pytest.param(cfg(Network="10.0.0.0/22"), "10.0.0.0/22", 24, "10.0.1.0", "10.0.3.0", id="auto-/22-gives-24"),
    pytest.param(cfg(Network="10.0.0.0/23"), "10.0.0.0/23", 25, "10.0.0.128", "10.0.1.128", id="auto-/23-gives-25"),
    pytest.param(cfg(Network="10.0.0.0/24"), "10.0.0.0/24", 26, "10.0.0.64", "10.0.0.192", id="auto-/24-gives-26"),
    pytest.param(cfg(Network="10.0.0.0/26"), "10.0.0.0/26", 28, "10.0.0.16", "10.0.0.48", id="auto-/26-gives-28"),
    pytest.param(cfg(Network="10.0.0.0/28"), "10.0.0.0/28", 30, "10.0.0.4", "10.0.0.12", id="auto-/28-gives-30"),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetLen=20), "10.244.0.0/16", 20, "10.244.16.0", "10.244.240.0",
        id="explicit-SubnetLen-20",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetLen=18), "10.244.0.0/16", 18, "10.244.64.0", "10.244.192.0",
        id="explicit-SubnetLen-prefix+2",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetLen=30), "10.244.0.0/16", 30, "10.244.0.4", "10.244.255.252",
        id="explicit-SubnetLen-30",
    ),
    pytest.param(cfg(Network="10.5.0.1/16"), "10.5.0.0/16", 24, "10.5.1.0", "10.5.255.0", id="host-bits-masked"),
    pytest.param(cfg(Network="10.5.255.255/16"), "10.5.0.0/16", 24, "10.5.1.0", "10.5.255.0", id="host-bits-masked-2"),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin="10.244.10.0", SubnetMax="10.244.20.0"),
        "10.244.0.0/16", 24, "10.244.10.0", "10.244.20.0", id="explicit-min-max",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin="10.244.0.0", SubnetMax="10.244.0.0"),
        "10.244.0.0/16", 24, "10.244.0.0", "10.244.0.0", id="min-max-first-subnet-allowed-explicitly",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin="", SubnetMax=""), "10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0",
        id="empty-min-max-are-defaults",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin=None, SubnetLen=None), "10.244.0.0/16", 24, "10.244.1.0",
        "10.244.255.0", id="null-fields-are-defaults",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetLen=0), "10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0",
        id="SubnetLen-0-is-auto",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin="0.0.0.0"), "10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0",
        id="SubnetMin-0.0.0.0-is-unset",
    ),
    pytest.param(cfg(Network="0.0.0.0/8"), "0.0.0.0/8", 24, "0.0.1.0", "0.255.255.0", id="0.0.0.0/8-is-not-empty"),
]


@pytest.mark.parametrize(("text", "network", "subnet_len", "smin", "smax"), V4_DEFAULTS)
def test_ipv4_defaults(text: str, network: str, subnet_len: int, smin: str, smax: str) -> None:
    c = parse_config(text)
    assert c.network == IPv4Network(network)
    assert c.subnet_len == subnet_len
    assert c.subnet_min == IPv4Address(smin)
    assert c.subnet_max == IPv4Address(smax)
    assert c.enable_ipv4 is True
    assert c.enable_ipv6 is False
    assert c.ipv6_network is None


def test_spec_example_gives_255_leases() -> None:
    c = parse_config(cfg(Network="10.244.0.0/16"))
    assert c.subnet_min is not None and c.subnet_max is not None
    count = (int(c.subnet_max) - int(c.subnet_min)) // (1 << (32 - c.subnet_len)) + 1
    assert count == 255


# --------------------------------------------------------------------------------------------
# IPv6 defaults
# --------------------------------------------------------------------------------------------
V6_DEFAULTS = [
    pytest.param("fc00::/48", None, 64, "fc00:0:0:1::", "fc00:0:0:ffff::", id="auto-/48-gives-64"),
    pytest.param("fc00::/62", None, 64, "fc00:0:0:1::", "fc00:0:0:3::", id="auto-/62-gives-64"),
    pytest.param("fc00::/63", None, 65, "fc00:0:0:0:8000::", "fc00:0:0:1:8000::", id="auto-/63-gives-65"),
    pytest.param("fc00::/120", None, 122, "fc00::40", "fc00::c0", id="auto-/120-gives-122"),
    pytest.param("fc00::/124", None, 126, "fc00::4", "fc00::c", id="auto-/124-gives-126"),
    pytest.param("fc00::/48", 56, 56, "fc00:0:0:100::", "fc00:0:0:ff00::", id="explicit-56"),
    pytest.param("fc00::/48", 126, 126, "fc00::4", "fc00:0:0:ffff:ffff:ffff:ffff:fffc", id="explicit-126"),
    pytest.param("fc00::1/64", None, 66, "fc00::4000:0:0:0", "fc00::c000:0:0:0", id="host-bits-masked"),
    pytest.param(
        "2001:cafe:42::/56", None, 64, "2001:cafe:42:1::", "2001:cafe:42:ff::", id="spec-subnet-env-example"
    ),
]


@pytest.mark.parametrize(("net6", "len6", "exp_len", "smin", "smax"), V6_DEFAULTS)
def test_ipv6_defaults(net6: str, len6: int | None, exp_len: int, smin: str, smax: str) -> None:
    fields: dict[str, Any] = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": net6}
    if len6 is not None:
        fields["IPv6SubnetLen"] = len6
    c = parse_config(json.dumps(fields))
    assert c.enable_ipv6 is True
    assert c.ipv6_network == IPv6Network(net6, strict=False)
    assert c.ipv6_subnet_len == exp_len
    assert c.ipv6_subnet_min == IPv6Address(smin)
    assert c.ipv6_subnet_max == IPv6Address(smax)
    # IPv4 side unchanged by the IPv6 fields.
    assert c.network == IPv4Network("10.244.0.0/16") and c.subnet_len == 24


def test_ipv6_only_needs_no_network() -> None:
    c = parse_config(cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48"))
    assert c.enable_ipv4 is False and c.enable_ipv6 is True
    assert c.network is None
    assert c.ipv6_subnet_len == 64


def test_ipv6_fields_ignored_unless_enabled() -> None:
    # Without EnableIPv6 a too-small IPv6Network is not validated.
    c = parse_config(cfg(Network="10.0.0.0/16", IPv6Network="fc00::/127"))
    assert c.enable_ipv6 is False
    assert c.ipv6_subnet_len == 0


# --------------------------------------------------------------------------------------------
# Keys, unknown fields, Backend
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "network", "subnet_len"),
    [
        pytest.param('{"network":"10.1.0.0/16"}', "10.1.0.0/16", 24, id="lower-case-network"),
        pytest.param('{"NETWORK":"10.1.0.0/16"}', "10.1.0.0/16", 24, id="upper-case-network"),
        pytest.param('{"nEtWoRk":"10.1.0.0/16"}', "10.1.0.0/16", 24, id="mixed-case-network"),
        pytest.param('{"Network":"10.1.0.0/16","subnetlen":26}', "10.1.0.0/16", 26, id="lower-case-subnetlen"),
        pytest.param('{"Network":"10.1.0.0/16","SUBNETLEN":26}', "10.1.0.0/16", 26, id="upper-case-subnetlen"),
        pytest.param(
            '{"Network":"10.1.0.0/16","Foo":1,"Networks":["10.2.0.0/16"],"EnableNFTables":true,"x":{"y":[]}}',
            "10.1.0.0/16", 24, id="unknown-keys-ignored",
        ),
    ],
)
def test_keys_case_insensitive_and_unknown_ignored(text: str, network: str, subnet_len: int) -> None:
    c = parse_config(text)
    assert c.network == IPv4Network(network)
    assert c.subnet_len == subnet_len


def test_lower_case_min_max_keys() -> None:
    c = parse_config('{"network":"10.1.0.0/16","subnetmin":"10.1.5.0","SUBNETMAX":"10.1.9.0"}')
    assert (c.subnet_min, c.subnet_max) == (IPv4Address("10.1.5.0"), IPv4Address("10.1.9.0"))


def test_enable_flags_case_insensitive() -> None:
    c = parse_config('{"enableipv4":false,"ENABLEIPV6":true,"ipv6network":"fc00::/48"}')
    assert (c.enable_ipv4, c.enable_ipv6) == (False, True)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        pytest.param(None, "udp", id="absent-is-udp"),
        pytest.param({"Type": "vxlan"}, "vxlan", id="vxlan"),
        pytest.param({"Type": "VXLAN"}, "vxlan", id="upper-case-lowered"),
        pytest.param({"Type": "Host-GW"}, "host-gw", id="mixed-case-lowered"),
        pytest.param({"type": "vxlan", "VNI": 4}, "vxlan", id="lower-case-type-key"),
        pytest.param({"TYPE": "wireguard"}, "wireguard", id="upper-case-type-key"),
        pytest.param({"Type": "udp"}, "udp", id="udp"),
    ],
)
def test_backend_type(backend: dict[str, Any] | None, expected: str) -> None:
    fields: dict[str, Any] = {"Network": "10.1.0.0/16"}
    if backend is not None:
        fields["Backend"] = backend
    c = parse_config(json.dumps(fields))
    assert c.backend_type == expected
    check_backend_type(c)  # every one of these is known


def test_backend_object_kept_but_not_compared() -> None:
    a = parse_config(cfg(Network="10.1.0.0/16", Backend={"Type": "vxlan", "VNI": 1}))
    b = parse_config(cfg(Network="10.1.0.0/16", Backend={"Type": "vxlan", "VNI": 2}))
    assert a.backend == {"Type": "vxlan", "VNI": 1}
    assert a == b


@pytest.mark.parametrize("btype", sorted(KNOWN_BACKENDS))
def test_check_backend_type_known(btype: str) -> None:
    check_backend_type(parse_config(cfg(Network="10.1.0.0/16", Backend={"Type": btype})))


@pytest.mark.parametrize(
    ("btype", "shown"),
    [
        pytest.param("foo", "foo", id="foo"),
        pytest.param("vxlan2", "vxlan2", id="vxlan2"),
        pytest.param("aws-vpc", "aws-vpc", id="removed-v0.7-backend"),
        pytest.param("Bogus", "bogus", id="lowered-in-message"),
        pytest.param("", "", id="missing-Type"),
    ],
)
def test_check_backend_type_unknown(btype: str, shown: str) -> None:
    backend = {"Type": btype} if btype else {"VNI": 1}
    c = parse_config(cfg(Network="10.1.0.0/16", Backend=backend))
    with pytest.raises(ConfigError) as ei:
        check_backend_type(c)
    msg = str(ei.value)
    assert msg.startswith("unknown backend type: ")
    assert shown in msg
    assert_one_line(msg)


# --------------------------------------------------------------------------------------------
# Errors: (config text, substrings the single-line message must contain)
# --------------------------------------------------------------------------------------------
NO_NETWORK = "please define a correct Network parameter in the flannel config"
TOO_SMALL = "network is too small. Minimum useful network prefix is /28"
LT31 = "SubnetLen must be less than /31"
FOUR = "network must be able to accommodate at least four subnets"

ERRORS = [
    # Network missing / empty
    pytest.param("{}", [NO_NETWORK], id="no-Network"),
    pytest.param(cfg(Network=""), [NO_NETWORK], id="empty-Network"),
    pytest.param(cfg(Network=None), [NO_NETWORK], id="null-Network"),
    pytest.param(cfg(Network="0.0.0.0/0"), [NO_NETWORK], id="0.0.0.0/0-counts-as-empty"),
    pytest.param(cfg(Network="10.0.0.0/0"), [NO_NETWORK], id="/0-masks-to-empty"),
    pytest.param(cfg(SubnetLen=24, Backend={"Type": "vxlan"}), [NO_NETWORK], id="only-other-fields"),
    # size rules
    pytest.param(cfg(Network="10.0.0.0/29"), [TOO_SMALL], id="auto-/29-too-small"),
    pytest.param(cfg(Network="10.0.0.0/30"), [TOO_SMALL], id="auto-/30-too-small"),
    pytest.param(cfg(Network="10.0.0.0/32"), [TOO_SMALL], id="auto-/32-too-small"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=31), [LT31], id="SubnetLen-31"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=32), [LT31], id="SubnetLen-32"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=200), [LT31], id="SubnetLen-200"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=17), [FOUR], id="SubnetLen-prefix+1"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=16), [FOUR], id="SubnetLen-equals-prefix"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=8), [FOUR], id="SubnetLen-shorter-than-prefix"),
    pytest.param(cfg(Network="10.0.0.0/29", SubnetLen=30), [FOUR], id="explicit-30-on-/29"),
    # SubnetMin / SubnetMax
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin="10.245.1.0"),
        ["SubnetMin is not in the range of the Network", "10.245.1.0"], id="SubnetMin-outside",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMax="10.243.255.0"),
        ["SubnetMax is not in the range of the Network", "10.243.255.0"], id="SubnetMax-outside",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin="10.244.1.128"),
        ["SubnetMin is not on a SubnetLen boundary: 10.244.1.128"], id="SubnetMin-not-aligned",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMax="10.244.2.1"),
        ["SubnetMax is not on a SubnetLen boundary: 10.244.2.1"], id="SubnetMax-not-aligned",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetLen=26, SubnetMin="10.244.1.32"),
        ["SubnetMin is not on a SubnetLen boundary: 10.244.1.32"], id="SubnetMin-not-aligned-/26",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMin="10.244.1"), ["SubnetMin", "10.244.1"], id="SubnetMin-bad-ip",
    ),
    pytest.param(
        cfg(Network="10.244.0.0/16", SubnetMax="bogus"), ["SubnetMax", "bogus"], id="SubnetMax-bad-ip",
    ),
    # Network syntax
    pytest.param(cfg(Network="10.5.0.0"), ["Network", "10.5.0.0"], id="Network-without-prefix"),
    pytest.param(cfg(Network="10.5.0.0/33"), ["Network", "10.5.0.0/33"], id="Network-prefix-33"),
    pytest.param(cfg(Network="10.5.0.256/16"), ["Network", "10.5.0.256/16"], id="Network-bad-octet"),
    pytest.param(cfg(Network="fc00::/48"), ["Network", "fc00::/48"], id="Network-is-ipv6"),
    pytest.param(cfg(Network="bogus/16"), ["Network", "bogus/16"], id="Network-garbage"),
    # wrong JSON types: the message names the field and the value
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen="24"), ["SubnetLen", '"24"'], id="SubnetLen-string"),
    pytest.param(cfg(Network=5), ["Network", "5"], id="Network-number"),
    pytest.param(cfg(Network=["10.0.0.0/16"]), ["Network", "10.0.0.0/16"], id="Network-list"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=True), ["SubnetLen", "true"], id="SubnetLen-bool"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=24.5), ["SubnetLen", "24.5"], id="SubnetLen-fraction"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen=-1), ["SubnetLen", "-1"], id="SubnetLen-negative"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetMin=167772416), ["SubnetMin", "167772416"], id="SubnetMin-number"),
    pytest.param(cfg(Network="10.0.0.0/16", EnableIPv4="yes"), ["EnableIPv4", '"yes"'], id="EnableIPv4-string"),
    pytest.param(cfg(Network="10.0.0.0/16", EnableIPv6=1), ["EnableIPv6", "1"], id="EnableIPv6-number"),
    # neither family
    pytest.param(cfg(Network="10.0.0.0/16", EnableIPv4=False), ["EnableIPv4", "EnableIPv6"], id="no-family"),
    # Backend
    pytest.param(
        cfg(Network="10.0.0.0/16", Backend="vxlan"), ["error decoding Backend property of config"],
        id="Backend-string",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", Backend=["vxlan"]), ["error decoding Backend property of config"],
        id="Backend-list",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", Backend=5), ["error decoding Backend property of config"], id="Backend-number",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", Backend={"Type": 5}), ["error decoding Backend property of config"],
        id="Backend-Type-number",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", Backend={"Type": {"a": "b\nc"}}), ["error decoding Backend property of config"],
        id="Backend-Type-object-with-newline",
    ),
    # whole document
    pytest.param("", ["JSON"], id="empty-text"),
    pytest.param("{", ["JSON"], id="truncated"),
    pytest.param("not json", ["JSON"], id="garbage"),
    pytest.param('{"Network":"10.0.0.0/16",}', ["JSON"], id="trailing-comma"),
    pytest.param("{\n\n  'Network': 1\n}", ["JSON"], id="single-quotes-multiline"),
    pytest.param(b"\xff\xfe\xfd", ["JSON"], id="not-utf8"),
    pytest.param("[]", ["JSON object"], id="array"),
    pytest.param('"10.0.0.0/16"', ["JSON object"], id="string"),
    pytest.param("null", ["JSON object"], id="null"),
    pytest.param("42", ["JSON object"], id="number"),
    # IPv6
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True),
        ["please define a correct IPv6Network parameter in the flannel config"], id="v6-no-IPv6Network",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="::/0"),
        ["please define a correct IPv6Network parameter in the flannel config"], id="v6-::/0-counts-as-empty",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/125"),
        ["IPv6Network is too small. Minimum useful network prefix is /124"], id="v6-auto-/125-too-small",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/128"),
        ["IPv6Network is too small. Minimum useful network prefix is /124"], id="v6-auto-/128-too-small",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetLen=127),
        ["SubnetLen must be less than /127"], id="v6-SubnetLen-127",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetLen=49),
        ["must be able to accommodate at least four subnets"], id="v6-SubnetLen-prefix+1",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetMin="fc01::"),
        ["IPv6SubnetMin is not in the range of the IPv6Network"], id="v6-SubnetMin-outside",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetMax="fc01::"),
        ["IPv6SubnetMax is not in the range of the IPv6Network"], id="v6-SubnetMax-outside",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetMin="fc00:0:0:1::1"),
        ["IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1"], id="v6-SubnetMin-not-aligned",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetMax="fc00:0:0:2:8000::"),
        ["IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:2:8000::"], id="v6-SubnetMax-not-aligned",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::"), ["IPv6Network", "fc00::"],
        id="v6-Network-without-prefix",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="10.0.0.0/8"), ["IPv6Network", "10.0.0.0/8"],
        id="v6-Network-is-ipv4",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetMin="nope"),
        ["IPv6SubnetMin", "nope"], id="v6-SubnetMin-bad-ip",
    ),
    pytest.param(
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48", IPv6SubnetLen="64"),
        ["IPv6SubnetLen", '"64"'], id="v6-SubnetLen-string",
    ),
    # multi-line input values must not make multi-line messages
    pytest.param(cfg(Network="10.0.0.0/16\nx"), ["Network"], id="newline-in-Network"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetLen="2\n4"), ["SubnetLen"], id="newline-in-SubnetLen"),
    pytest.param(cfg(Network="10.0.0.0/16", SubnetMin="a\r\nb"), ["SubnetMin"], id="crlf-in-SubnetMin"),
]


@pytest.mark.parametrize(("text", "parts"), ERRORS)
def test_errors(text: str | bytes, parts: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    msg = str(ei.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    assert_one_line(msg)


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_config("{}")


def test_min_greater_than_max_is_not_checked() -> None:
    # flannel-spec.md section 2: "Not checked: SubnetMin > SubnetMax".
    c = parse_config(cfg(Network="10.0.0.0/16", SubnetMin="10.0.9.0", SubnetMax="10.0.3.0"))
    assert c.subnet_min == IPv4Address("10.0.9.0") and c.subnet_max == IPv4Address("10.0.3.0")


def test_validation_order_lt31_before_four_subnets() -> None:
    # /29 with SubnetLen 31 breaks both rules; spec order reports "less than /31" first.
    with pytest.raises(ConfigError, match="SubnetLen must be less than /31"):
        parse_config(cfg(Network="10.0.0.0/29", SubnetLen=31))


@pytest.mark.parametrize("depth", [1000, 50000])
def test_deeply_nested_json_is_a_config_error(depth: int) -> None:
    """JSON nested beyond what the parser takes is a ConfigError (one line), never RecursionError or success."""
    text = '{"Network":"10.0.0.0/16","X":' + "[" * depth + "]" * depth + "}"
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert_one_line(str(e.value))
    assert "nested too deeply" in str(e.value)


def test_subnet_fits() -> None:
    c = parse_config(cfg(Network="100.64.0.0/16", SubnetLen=24))
    assert c.subnet_fits(IPv4Network("100.64.67.0/24"))
    assert c.subnet_fits(IPv4Network("100.64.1.0/24"))
    assert c.subnet_fits(IPv4Network("100.64.255.0/24"))
    assert not c.subnet_fits(IPv4Network("100.64.0.0/24"))  # below SubnetMin
    assert not c.subnet_fits(IPv4Network("100.64.67.0/25"))  # wrong length
    assert not c.subnet_fits(IPv4Network("100.65.1.0/24"))  # outside
    ipv6_only = NetworkConfig(network=None, subnet_len=0, subnet_min=None, subnet_max=None)
    assert not ipv6_only.subnet_fits(IPv4Network("100.64.67.0/24"))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
@settings(max_examples=300)
@given(addr=st.integers(0, 2**32 - 1), prefix=st.integers(1, 28))
def test_auto_defaults_property(addr: int, prefix: int) -> None:
    net = IPv4Network((addr, prefix), strict=False)
    c = parse_config(cfg(Network=f"{IPv4Address(addr)}/{prefix}"))
    assert c.network == net
    exp_len = 24 if prefix <= 22 else prefix + 2
    assert c.subnet_len == exp_len
    size = 1 << (32 - exp_len)
    assert c.subnet_min == net.network_address + size
    assert c.subnet_max == IPv4Address(int(net.broadcast_address) + 1 - size)


_json_scalar = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20)
)
_field_values = st.one_of(
    _json_scalar,
    st.sampled_from(["10.0.0.0/16", "10.0.0.0/29", "fc00::/48", "10.0.1.0", "0.0.0.0/0", "10.0.0.1/24", "fc00::1"]),
    st.integers(0, 40),
    st.lists(_json_scalar, max_size=3),
    st.dictionaries(st.sampled_from(["Type", "type", "VNI"]), _json_scalar | st.sampled_from(["vxlan", "UDP"])),
)
_field_names = st.sampled_from(
    ["Network", "network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6", "IPv6Network",
     "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "Backend", "backend", "Other"]
)


@settings(max_examples=1000)
@given(st.dictionaries(_field_names, _field_values, max_size=8))
def test_fuzz_parse_config_only_config_error(fields: dict[str, Any]) -> None:
    try:
        c = parse_config(json.dumps(fields))
    except ConfigError as e:
        assert_one_line(str(e))
        return
    assert c.enable_ipv4 or c.enable_ipv6
    if c.enable_ipv4:
        assert c.network is not None and c.subnet_min is not None and c.subnet_max is not None
        assert c.network.prefixlen + 2 <= c.subnet_len <= 30
        size = 1 << (32 - c.subnet_len)
        assert int(c.subnet_min) % size == 0 and int(c.subnet_max) % size == 0
        assert c.subnet_min in c.network and c.subnet_max in c.network


@settings(max_examples=1000)
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_fuzz_parse_config_arbitrary_text(text: str | bytes) -> None:
    try:
        parse_config(text)
    except ConfigError as e:
        assert_one_line(str(e))
