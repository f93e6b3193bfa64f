"""Lease values byte-for-byte as flanneld writes them (reference-state.md section 2, flannel-spec.md 1.4)."""

from __future__ import annotations

import contextlib
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core.errors import LeaseFormatError
from pyflannel.core.lease import (
    MAX_LEASE_VALUE_BYTES,
    Lease,
    LeaseAttrs,
    VxlanData,
    _finite_float,
    _reject_constant,
    loads_strict,
    normalize_mac,
    parse_lease_attrs,
)

# (value as in etcd, PublicIP, VtepMAC) -- reference-state.md section 2, verbatim.
REFERENCE = [
    pytest.param(
        '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:94"}}',
        "198.18.0.11", "b6:3a:f4:a5:6f:94", id="n1",
    ),
    pytest.param(
        '{"PublicIP":"198.18.0.12","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"06:4f:e4:07:6e:78"}}',
        "198.18.0.12", "06:4f:e4:07:6e:78", id="n2",
    ),
    pytest.param(
        '{"PublicIP":"198.18.0.13","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"2a:a3:22:0d:18:d9"}}',
        "198.18.0.13", "2a:a3:22:0d:18:d9", id="n3",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"82:4b:b6:2f:54:4e"}}',
        "10.0.0.5", "82:4b:b6:2f:54:4e", id="spec-1.4-example",
    ),
]


@pytest.mark.parametrize(("value", "public_ip", "mac"), REFERENCE)
def test_reference_value_parse_then_serialise_is_identical(value: str, public_ip: str, mac: str) -> None:
    attrs = parse_lease_attrs(value)
    assert attrs.public_ip == IPv4Address(public_ip)
    assert attrs.public_ipv6 is None
    assert attrs.backend_type == "vxlan"
    assert attrs.backend_v6_data is None
    assert attrs.vxlan_data() == VxlanData(1, mac)
    assert attrs.to_json() == value


@pytest.mark.parametrize(("value", "public_ip", "mac"), REFERENCE)
def test_reference_value_built_from_parts_is_identical(value: str, public_ip: str, mac: str) -> None:
    built = LeaseAttrs(public_ip=IPv4Address(public_ip), backend_type="vxlan", backend_data=VxlanData(1, mac).to_json())
    assert built.to_json() == value
    assert parse_lease_attrs(value) == built


@pytest.mark.parametrize(("value", "public_ip", "mac"), REFERENCE)
def test_reference_value_as_bytes(value: str, public_ip: str, mac: str) -> None:
    # etcd hands the adapter bytes.
    assert parse_lease_attrs(value.encode()).to_json() == value


def test_vxlan_data_to_json() -> None:
    assert VxlanData(1, "b6:3a:f4:a5:6f:94").to_json() == '{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:94"}'
    assert VxlanData(4096, "02:00:00:00:00:01").to_json() == '{"VNI":4096,"VtepMAC":"02:00:00:00:00:01"}'


OTHER_VALUES = [
    pytest.param('{"PublicIP":"10.0.0.5","PublicIPv6":null}', LeaseAttrs(IPv4Address("10.0.0.5")), id="udp-no-type"),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}',
        LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="host-gw"), id="host-gw",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"ipip"}',
        LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="ipip"), id="ipip",
    ),
    pytest.param(
        '{"PublicIP":"0.0.0.0","PublicIPv6":null}', LeaseAttrs(IPv4Address("0.0.0.0")), id="unknown-public-ip",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"c2VjcmV0+/=="}}',
        LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="wireguard", backend_data='{"PublicKey":"c2VjcmV0+/=="}'),
        id="wireguard",
    ),
    pytest.param(
        '{"PublicIP":"198.18.0.11","PublicIPv6":"fc00::11","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:94"},"BackendV6Data":{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:95"}}',
        LeaseAttrs(
            IPv4Address("198.18.0.11"), IPv6Address("fc00::11"), "vxlan",
            '{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:94"}', '{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:95"}',
        ),
        id="dual-stack-vxlan",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":"2001:db8::1"}',
        LeaseAttrs(IPv4Address("10.0.0.5"), IPv6Address("2001:db8::1")), id="udp-dual-stack",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}',
        LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="vxlan", backend_data='{"VtepMAC":"82:4b:b6:2f:54:4e"}'),
        id="v0.7-vxlan-without-VNI",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"x","BackendData":{"k":"\\u003cb\\u003e \\u0026"}}',
        LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="x", backend_data='{"k":"\\u003cb\\u003e \\u0026"}'),
        id="go-html-escapes-kept",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"x","BackendData":{"k":"é\\n\\"\\\\"}}',
        LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="x", backend_data='{"k":"é\\n\\"\\\\"}'),
        id="go-utf8-and-short-escapes-kept",
    ),
    pytest.param(
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"x","BackendData":{"n":[1,-2,0.5,1e+21,null,true]}}',
        LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="x", backend_data='{"n":[1,-2,0.5,1e+21,null,true]}'),
        id="go-numbers-kept",
    ),
]


@pytest.mark.parametrize(("value", "attrs"), OTHER_VALUES)
def test_other_values_round_trip(value: str, attrs: LeaseAttrs) -> None:
    assert parse_lease_attrs(value) == attrs
    assert parse_lease_attrs(value).to_json() == value
    assert attrs.to_json() == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(
            '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"x","BackendData":{"k":"a\\u2028b\\u2029c"}}',
            id="u2028-u2029-escapes",
        ),
    ],
)
def test_go_marshalled_backend_data_round_trips_byte_identically(value: str) -> None:
    """lease.py promises a byte-identical round trip for values written by other (Go) nodes.

    Go's json.Marshal escapes U+2028/U+2029 unconditionally (also when compacting a RawMessage), and keeps a
    RawMessage number such as 1e400 verbatim. Writing the raw separators, or ``Infinity`` (which is not
    JSON at all), breaks the promise.
    """
    out = parse_lease_attrs(value).to_json()
    assert out == value


def test_whitespace_is_compacted() -> None:
    value = (
        '{ "PublicIP" : "10.0.0.5", "PublicIPv6": null,\n "BackendType": "vxlan",\n'
        ' "BackendData": { "VNI": 1, "VtepMAC": "82:4b:b6:2f:54:4e" } }'
    )
    assert parse_lease_attrs(value).to_json() == REFERENCE[3].values[0]


def test_missing_public_ipv6_and_unknown_keys() -> None:
    attrs = parse_lease_attrs('{"PublicIP":"10.0.0.5","Extra":{"a":1}}')
    assert attrs == LeaseAttrs(IPv4Address("10.0.0.5"))
    assert attrs.to_json() == '{"PublicIP":"10.0.0.5","PublicIPv6":null}'


def test_null_backend_type_is_absent() -> None:
    attrs = parse_lease_attrs('{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":null}')
    assert attrs == LeaseAttrs(IPv4Address("10.0.0.5"))
    assert attrs.to_json() == '{"PublicIP":"10.0.0.5","PublicIPv6":null}'


def test_field_names_case_insensitive() -> None:
    attrs = parse_lease_attrs(
        '{"publicip":"198.18.0.13","PUBLICIPV6":"fc00::13","backendtype":"vxlan",'
        '"backenddata":{"vni":1,"vtepmac":"2A:A3:22:0D:18:D9"},"BACKENDV6DATA":{"VNI":1,"VtepMAC":"2a:a3:22:0d:18:da"}}'
    )
    assert attrs.public_ip == IPv4Address("198.18.0.13")
    assert attrs.public_ipv6 == IPv6Address("fc00::13")
    assert attrs.backend_type == "vxlan"
    assert attrs.backend_v6_data == '{"VNI":1,"VtepMAC":"2a:a3:22:0d:18:da"}'
    assert attrs.vxlan_data() == VxlanData(1, "2a:a3:22:0d:18:d9")
    # Written back with Go's field names.
    out = attrs.to_json()
    assert out.startswith('{"PublicIP":"198.18.0.13","PublicIPv6":"fc00::13","BackendType":"vxlan","BackendData":')


@pytest.mark.parametrize(
    ("data", "vni", "mac"),
    [
        pytest.param('{"VNI":1,"VtepMAC":"B6:3A:F4:A5:6F:94"}', 1, "b6:3a:f4:a5:6f:94", id="upper-case-mac"),
        pytest.param('{"VNI":1,"VtepMAC":" b6:3a:f4:a5:6f:94 "}', 1, "b6:3a:f4:a5:6f:94", id="padded-mac"),
        pytest.param('{"VtepMAC":"b6:3a:f4:a5:6f:94"}', 0, "b6:3a:f4:a5:6f:94", id="no-VNI"),
        pytest.param('{"VNI":null,"VtepMAC":"b6:3a:f4:a5:6f:94"}', 0, "b6:3a:f4:a5:6f:94", id="null-VNI"),
        pytest.param('{"VNI":7,"VtepMAC":"b6:3a:f4:a5:6f:94","Extra":1}', 7, "b6:3a:f4:a5:6f:94", id="extra-key"),
        pytest.param('{"vni":3,"vtepmac":"aa:bb:cc:dd:ee:ff"}', 3, "aa:bb:cc:dd:ee:ff", id="lower-case-keys"),
    ],
)
def test_vxlan_data(data: str, vni: int, mac: str) -> None:
    attrs = LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="vxlan", backend_data=data)
    assert attrs.vxlan_data() == VxlanData(vni, mac)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(None, id="no-BackendData"),
        pytest.param("[]", id="array"),
        pytest.param('"b6:3a:f4:a5:6f:94"', id="string"),
        pytest.param("not json", id="not-json"),
        pytest.param('{"VNI":1}', id="no-mac"),
        pytest.param('{"VNI":1,"VtepMAC":null}', id="null-mac"),
        pytest.param('{"VNI":1,"VtepMAC":5}', id="number-mac"),
        pytest.param('{"VNI":1,"VtepMAC":"zz:3a:f4:a5:6f:94"}', id="bad-hex"),
        pytest.param('{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f"}', id="five-octets"),
        pytest.param('{"VNI":1,"VtepMAC":"b6:3a:f4:a5:6f:94:00"}', id="seven-octets"),
        pytest.param('{"VNI":1,"VtepMAC":"b63af4a56f94"}', id="no-colons"),
        pytest.param('{"VNI":1,"VtepMAC":"b6-3a-f4-a5-6f-94"}', id="dashes"),
        pytest.param('{"VNI":1,"VtepMAC":""}', id="empty-mac"),
        pytest.param('{"VNI":"1","VtepMAC":"b6:3a:f4:a5:6f:94"}', id="string-VNI"),
        pytest.param('{"VNI":true,"VtepMAC":"b6:3a:f4:a5:6f:94"}', id="bool-VNI"),
        pytest.param('{"VNI":1.5,"VtepMAC":"b6:3a:f4:a5:6f:94"}', id="fraction-VNI"),
    ],
)
def test_vxlan_data_errors(data: str | None) -> None:
    attrs = LeaseAttrs(IPv4Address("10.0.0.5"), backend_type="vxlan", backend_data=data)
    with pytest.raises(LeaseFormatError) as ei:
        attrs.vxlan_data()
    assert "\n" not in str(ei.value)


def test_normalize_mac() -> None:
    assert normalize_mac("B6:3A:F4:A5:6F:94") == "b6:3a:f4:a5:6f:94"
    with pytest.raises(LeaseFormatError, match="VtepMAC"):
        normalize_mac("b6:3a:f4:a5:6f:9")


def _pad(n: int) -> bytes:
    """A syntactically valid lease value of exactly n bytes."""
    head = b'{"PublicIP":"10.0.0.5","Pad":"'
    tail = b'"}'
    return head + b"a" * (n - len(head) - len(tail)) + tail


BAD_VALUES = [
    pytest.param(b"", "JSON", id="empty"),
    pytest.param(b"not json", "JSON", id="not-json"),
    pytest.param(b'{"PublicIP":"10.0.0.5"', "JSON", id="truncated"),
    pytest.param(b"\xff\xfe\xfa", "JSON", id="not-utf8"),
    pytest.param(b"[]", "object", id="array"),
    pytest.param(b'"10.0.0.5"', "object", id="string"),
    pytest.param(b"null", "object", id="null"),
    pytest.param(b"5", "object", id="number"),
    pytest.param(b"{}", "PublicIP", id="missing-PublicIP"),
    pytest.param(b'{"PublicIPv6":null,"BackendType":"vxlan"}', "PublicIP", id="missing-PublicIP-2"),
    pytest.param(b'{"PublicIP":null}', "PublicIP", id="null-PublicIP"),
    pytest.param(b'{"PublicIP":167772165}', "PublicIP", id="number-PublicIP"),
    pytest.param(b'{"PublicIP":"10.0.0.256"}', "PublicIP", id="bad-octet"),
    pytest.param(b'{"PublicIP":"10.0.0"}', "PublicIP", id="three-octets"),
    pytest.param(b'{"PublicIP":"fc00::1"}', "PublicIP", id="ipv6-as-PublicIP"),
    pytest.param(b'{"PublicIP":""}', "PublicIP", id="empty-PublicIP"),
    pytest.param(b'{"PublicIP":"10.0.0.5","PublicIPv6":"bogus"}', "PublicIPv6", id="bad-PublicIPv6"),
    pytest.param(b'{"PublicIP":"10.0.0.5","PublicIPv6":"10.0.0.5"}', "PublicIPv6", id="ipv4-as-PublicIPv6"),
    pytest.param(b'{"PublicIP":"10.0.0.5","PublicIPv6":5}', "PublicIPv6", id="number-PublicIPv6"),
    pytest.param(b'{"PublicIP":"10.0.0.5","BackendType":5}', "BackendType", id="number-BackendType"),
    pytest.param(b'{"PublicIP":"10.0.0.5","BackendType":["vxlan"]}', "BackendType", id="list-BackendType"),
    pytest.param(_pad(MAX_LEASE_VALUE_BYTES + 1), "too large", id="oversize-64KiB+1"),
    pytest.param(_pad(1 << 20), "too large", id="oversize-1MiB"),
]


@pytest.mark.parametrize(("value", "part"), BAD_VALUES)
def test_parse_errors(value: bytes, part: str) -> None:
    with pytest.raises(LeaseFormatError) as ei:
        parse_lease_attrs(value)
    msg = str(ei.value)
    assert part in msg
    assert "\n" not in msg


def test_size_limit_boundary() -> None:
    assert MAX_LEASE_VALUE_BYTES == 64 * 1024
    exact = _pad(MAX_LEASE_VALUE_BYTES)
    assert len(exact) == MAX_LEASE_VALUE_BYTES
    assert parse_lease_attrs(exact).public_ip == IPv4Address("10.0.0.5")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"[" * 5000, id="unclosed-arrays"),
        pytest.param(b'{"PublicIP":"10.0.0.5","BackendData":' + b"[" * 3000 + b"]" * 3000 + b"}", id="deep-array"),
        pytest.param(b'{"PublicIP":"10.0.0.5","X":' + b'{"a":' * 3000 + b"1" + b"}" * 3001, id="deep-object"),
    ],
)
def test_deeply_nested_value_is_a_lease_format_error(value: bytes) -> None:
    """A small (< 64 KiB) but deeply nested value must not escape as RecursionError.

    The registry catches only LeaseFormatError when listing and watching leases, so any other exception from
    one bad key written by anyone with etcd access would stop every node's lease listing / watch.
    """
    assert len(value) <= MAX_LEASE_VALUE_BYTES
    try:
        parse_lease_attrs(value)
    except LeaseFormatError as e:
        assert "\n" not in str(e)


def test_lease_key_name_and_reserved() -> None:
    attrs = LeaseAttrs(IPv4Address("198.18.0.11"))
    le = Lease(IPv4Network("100.64.67.0/24"), attrs, expiration=1.0)
    assert le.key_name == "100.64.67.0-24"
    assert not le.reserved
    res = Lease(IPv4Network("10.5.34.0/24"), attrs, IPv6Network("fc00:0:0:22::/64"), reserved=True)
    assert res.key_name == "10.5.34.0-24&fc00:0:0:22::-64"
    assert res.reserved


def test_etcd_lease_keeps_the_etcd_facts_out_of_core() -> None:
    """lease id and revision live in the etcd adapter; a key without an etcd lease is a reservation."""
    from pyflannel.adapters.registry import EtcdLease, etcd_lease_id, etcd_revision

    attrs = LeaseAttrs(IPv4Address("198.18.0.11"))
    sn = IPv4Network("100.64.67.0/24")
    assert not hasattr(Lease(sn, attrs), "lease_id")
    live = EtcdLease.make(sn, attrs, None, 0x1234, 1.0, 7)
    assert not live.reserved and etcd_lease_id(live) == 0x1234 and etcd_revision(live) == 7
    assert EtcdLease.make(sn, attrs, None, 0, None, 7).reserved
    assert etcd_lease_id(Lease(sn, attrs)) == 0 and etcd_revision(Lease(sn, attrs)) == 0
    # A re-put with only a new revision is a different value (the peer table re-judges it).
    assert live != EtcdLease.make(sn, attrs, None, 0x1234, 1.0, 8)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
lease_keys = st.sampled_from(
    ["PublicIP", "publicip", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data", "backenddata", "other"]
)
lease_field_values = (
    json_values
    | st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(str)
    | st.sampled_from(["vxlan", "host-gw", ""])
    | st.fixed_dictionaries({"VNI": json_values, "VtepMAC": st.sampled_from(["aa:bb:cc:dd:ee:ff", "AA:BB", "x"])})
)


def _check_parse(value: str | bytes) -> None:
    try:
        attrs = parse_lease_attrs(value)
    except LeaseFormatError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(attrs.public_ip, IPv4Address)
    # Whatever parses can be written back and parses to the same thing.
    assert parse_lease_attrs(attrs.to_json()) == attrs
    with contextlib.suppress(LeaseFormatError):
        attrs.vxlan_data()


@settings(max_examples=1000)
@given(st.dictionaries(lease_keys, lease_field_values, max_size=6))
def test_fuzz_lease_objects(fields: dict[str, Any]) -> None:
    _check_parse(json.dumps(fields))


@settings(max_examples=1000)
@given(json_values)
def test_fuzz_any_json(value: Any) -> None:
    _check_parse(json.dumps(value))


@settings(max_examples=1000)
@given(st.text(max_size=80) | st.binary(max_size=80))
def test_fuzz_arbitrary_text(value: str | bytes) -> None:
    _check_parse(value)


# "Valid attrs": what to_json can produce. BackendData is Go-compact JSON; strings are kept to text that Go
# and Python encode identically (no <, >, &, DEL, U+2028/9, non-ASCII) so the expected text is json.dumps's.
_plain_text = st.text(st.characters(max_codepoint=0x7E, exclude_characters="<>&"), max_size=10)
_plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | _plain_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_plain_text, children, max_size=3),
    max_leaves=10,
)
_backend_data = st.none() | _plain_json.filter(lambda v: v is not None).map(
    lambda v: json.dumps(v, separators=(",", ":"))
)
valid_attrs = st.builds(
    LeaseAttrs,
    public_ip=st.ip_addresses(v=4),
    public_ipv6=st.none() | st.ip_addresses(v=6),
    backend_type=st.sampled_from(["", "vxlan", "host-gw", "wireguard", "ipip"]) | st.text(max_size=10),
    backend_data=_backend_data,
    backend_v6_data=_backend_data,
)


@settings(max_examples=500)
@given(valid_attrs)
def test_valid_attrs_round_trip(attrs: LeaseAttrs) -> None:
    text = attrs.to_json()
    assert parse_lease_attrs(text) == attrs
    assert parse_lease_attrs(text.encode()) == attrs
    assert parse_lease_attrs(text).to_json() == text
    # Go's field order and PublicIPv6 always present.
    decoded = json.loads(text)
    keys = list(decoded)
    assert keys[:2] == ["PublicIP", "PublicIPv6"]
    order = ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]
    assert keys == [k for k in order if k in keys]
    assert ("BackendType" in keys) == bool(attrs.backend_type)
    assert ("BackendData" in keys) == (attrs.backend_data is not None)
    assert ("BackendV6Data" in keys) == (attrs.backend_v6_data is not None)


@settings(max_examples=300)
@given(mac=st.binary(min_size=6, max_size=6), vni=st.integers(0, (1 << 24) - 1), ip=st.ip_addresses(v=4))
def test_vxlan_lease_round_trip(mac: bytes, vni: int, ip: IPv4Address) -> None:
    mac_text = ":".join(f"{b:02x}" for b in mac)
    attrs = LeaseAttrs(ip, backend_type="vxlan", backend_data=VxlanData(vni, mac_text).to_json())
    text = attrs.to_json()
    assert text == (
        f'{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac_text}"}}}}'
    )
    back = parse_lease_attrs(text.upper().replace("PUBLICIP", "PublicIP").replace("NULL", "null"))
    assert back.vxlan_data() == VxlanData(vni, mac_text)


def test_number_beyond_float64_makes_the_lease_bad() -> None:
    # Python cannot keep 1e400 as written (it would become Infinity, which Go cannot read back),
    # so such a value is reported as a bad lease rather than silently rewritten.
    with pytest.raises(LeaseFormatError, match="out of range"):
        parse_lease_attrs('{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"x","BackendData":{"n":1e400}}')


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=80),
    st.text(max_size=80),
    st.text(max_size=40).map(lambda t: "\ufeff" + t),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                 | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                            max_size=3),
                 max_leaves=8).map(json.dumps),
    st.sampled_from(['{"a":NaN}', "[1e999]", '"\\ud800"', "1 2", "", " {} ", '{"a":1}'.encode("utf-16"),
                     '{"a":1}'.encode("utf-32-le"), b"\xef\xbb\xbf{}"]),
))
def test_loads_strict_accepts_and_refuses_what_json_loads_with_its_hooks_does(value: str | bytes) -> None:
    """loads_strict keeps one decoder instead of json.loads(..., hooks); the answers must not change."""
    def via_loads() -> object:
        return json.loads(value, parse_constant=_reject_constant, parse_float=_finite_float)

    try:
        expected: object = ("ok", via_loads())
    except (ValueError, UnicodeDecodeError) as e:
        expected = ("error", type(e))
    try:
        got: object = ("ok", loads_strict(value))
    except (ValueError, UnicodeDecodeError) as e:
        got = ("error", type(e))
    assert got == expected or (got[0] == expected[0] == "ok" and json.dumps(got[1]) == json.dumps(expected[1]))
