"""Leases as flanneld stores them in etcd.

A lease value is Go's ``json.Marshal(LeaseAttrs)``: no spaces, fields in struct order,
``PublicIPv6`` always present (``null`` when unset), ``BackendType``/``BackendData``/
``BackendV6Data`` omitted when empty. Go compacts ``json.RawMessage`` on output, so
BackendData is kept here as compact JSON text and written back unchanged; that keeps a
round trip byte-identical for leases written by other backends or versions.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.core.errors import LeaseFormatError, shorten
from pyflannel.core.ipnet import go_ip6_text, ipv4_address, make_subnet_key

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Larger values are not leases flanneld could have written; refuse before parsing.
MAX_LEASE_VALUE_BYTES = 64 * 1024


def _compact(obj: Any) -> str:
    # Go's encoder escapes <, >, & and U+2028/U+2029 in strings and keeps other text as is.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range")
    return v


# One decoder for every lease: json.loads with keyword arguments builds a new decoder and scanner per call,
# which was a fifth of a lease's decoding time.
_STRICT = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads_strict(value: str | bytes) -> Any:
    """json.loads as Go accepts it: no NaN/Infinity, no numbers beyond float64.

    Deep nesting (RecursionError) is turned into ValueError so callers catch one type.
    """
    # What json.loads does before decoding: bytes in any of JSON's encodings, a str with a BOM refused.
    if isinstance(value, bytes | bytearray):
        text = value.decode(json.detect_encoding(value), "surrogatepass")
    else:
        text = value
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _STRICT.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


@dataclass(frozen=True, slots=True)
class VxlanData:
    """BackendData of a vxlan lease."""

    vni: int
    vtep_mac: str

    def to_json(self) -> str:
        return _compact({"VNI": self.vni, "VtepMAC": self.vtep_mac})


def normalize_mac(text: str) -> str:
    mac = text.strip().lower()
    if not _MAC_RE.match(mac):
        raise LeaseFormatError(f"bad VtepMAC {shorten(text)}")
    return mac


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    public_ip: IPv4Address
    public_ipv6: IPv6Address | None = None
    backend_type: str = ""
    backend_data: str | None = None  # compact JSON text, as stored
    backend_v6_data: str | None = None

    def to_json(self) -> str:
        parts = [
            f'"PublicIP":{json.dumps(str(self.public_ip))}',
            '"PublicIPv6":' + (json.dumps(go_ip6_text(self.public_ipv6)) if self.public_ipv6 else "null"),
        ]
        if self.backend_type:
            parts.append(f'"BackendType":{_compact(self.backend_type)}')
        if self.backend_data is not None:
            parts.append(f'"BackendData":{self.backend_data}')
        if self.backend_v6_data is not None:
            parts.append(f'"BackendV6Data":{self.backend_v6_data}')
        return "{" + ",".join(parts) + "}"

    def vxlan_data(self) -> VxlanData:
        """Decode BackendData as vxlan data; raises LeaseFormatError if it is not."""
        if self.backend_data is None:
            raise LeaseFormatError("vxlan lease has no BackendData")
        return _vxlan_data(self.backend_data)

    def vxlan_v6_data(self) -> VxlanData:
        """Decode BackendV6Data (the ``flannel-v6.<VNI>`` device's data); LeaseFormatError if it is not."""
        if self.backend_v6_data is None:
            raise LeaseFormatError("vxlan lease has no BackendV6Data")
        try:
            return _vxlan_data(self.backend_v6_data)
        except LeaseFormatError as e:
            raise LeaseFormatError(str(e).replace("BackendData", "BackendV6Data", 1)) from None


# Every reconcile pass looks at every peer's BackendData; parse each distinct text once.
@functools.lru_cache(maxsize=1 << 16)
def _vxlan_data(backend_data: str) -> VxlanData:
    try:
        d = loads_strict(backend_data)
    except ValueError:
        raise LeaseFormatError("BackendData is not JSON") from None
    if not isinstance(d, dict):
        raise LeaseFormatError("BackendData is not an object")
    low = {k.lower(): v for k, v in d.items()}
    mac = low.get("vtepmac")
    if not isinstance(mac, str):
        raise LeaseFormatError(f"BackendData.VtepMAC missing or not a string: {shorten(mac)}")
    vni = low.get("vni", 0)
    if vni is None:
        vni = 0
    if isinstance(vni, bool) or not isinstance(vni, int):
        raise LeaseFormatError(f"BackendData.VNI is not an integer: {shorten(vni)}")
    return VxlanData(vni=vni, vtep_mac=normalize_mac(mac))


def parse_lease_attrs(value: str | bytes) -> LeaseAttrs:
    """Decode a lease value; raises LeaseFormatError naming what is wrong."""
    if len(value) > MAX_LEASE_VALUE_BYTES:
        raise LeaseFormatError(f"lease value too large ({len(value)} bytes)")
    try:
        raw = loads_strict(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise LeaseFormatError(f"lease value is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise LeaseFormatError(f"lease value is not a JSON object: {type(raw).__name__}")
    d = {k.lower(): v for k, v in raw.items()}
    pub = d.get("publicip")
    if not isinstance(pub, str):
        raise LeaseFormatError(f"PublicIP missing or not a string: {shorten(pub)}")
    try:
        public_ip = ipv4_address(pub)
    except ValueError:
        raise LeaseFormatError(f"bad PublicIP {shorten(pub)}") from None
    pub6 = d.get("publicipv6")
    public_ipv6 = None
    if pub6 is not None:
        if not isinstance(pub6, str) or "%" in pub6:
            raise LeaseFormatError(f"bad PublicIPv6 {shorten(pub6)}")
        try:
            public_ipv6 = IPv6Address(pub6)
        except ValueError:
            raise LeaseFormatError(f"bad PublicIPv6 {shorten(pub6)}") from None
    btype = d.get("backendtype")
    btype = "" if btype is None else btype
    if not isinstance(btype, str):
        raise LeaseFormatError(f"BackendType is not a string: {shorten(btype)}")
    bdata = d.get("backenddata")
    bdata6 = d.get("backendv6data")
    try:
        return LeaseAttrs(
            public_ip=public_ip,
            public_ipv6=public_ipv6,
            backend_type=btype,
            backend_data=None if bdata is None else _compact(bdata),
            backend_v6_data=None if bdata6 is None else _compact(bdata6),
        )
    except RecursionError:  # parsed just below the limit, re-encoded from a deeper frame
        raise LeaseFormatError("BackendData is nested too deeply") from None


@dataclass(frozen=True, slots=True)
class Lease:
    """One subnet lease: the subnet(s) a node holds and what it published for them.

    Only domain facts live here; how a store keeps the lease (an etcd lease id, a revision) is the
    store adapter's business (``pyflannel/adapters/registry.py`` ``EtcdLease``). ``reserved``
    marks a reservation: an operator-written key that never expires (flannel issue #1329).
    ``expiration`` is a unix time, or None when the lease does not expire.

    ``subnet`` (IPv4) is None on an IPv6-only network (EnableIPv4=false, issue 13), ``subnet6`` is None
    without IPv6; at least one is set. Code that does not care which family should use ``subnets``,
    ``name`` and ``order`` rather than ``subnet``.
    """

    subnet: IPv4Network | None
    attrs: LeaseAttrs
    subnet6: IPv6Network | None = None
    expiration: float | None = None
    reserved: bool = False

    def __post_init__(self) -> None:
        if self.subnet is None and self.subnet6 is None:
            raise LeaseFormatError("a lease needs an IPv4 or an IPv6 subnet (subnet=None, subnet6=None)")

    @property
    def key_name(self) -> str:
        return make_subnet_key(self.subnet, self.subnet6)

    @property
    def subnets(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """The subnets present, IPv4 first."""
        if self.subnet is None:
            assert self.subnet6 is not None
            return (self.subnet6,)
        return (self.subnet,) if self.subnet6 is None else (self.subnet, self.subnet6)

    @property
    def primary(self) -> IPv4Network | IPv6Network:
        """The subnet that names the lease in logs and tables: IPv4, or IPv6 on an IPv6-only network."""
        return self.subnets[0]

    @property
    def name(self) -> str:
        """``100.64.5.0/24`` (also for a dual-stack lease, as flanneld logs it) or ``fd64:0:0:5::/64``."""
        return str(self.primary)

    @property
    def order(self) -> tuple[int, int, int, str]:
        """A stable sort key: IPv4 leases by subnet first, then IPv6-only ones by v6 subnet."""
        p = self.primary
        return (p.version, int(p.network_address), p.prefixlen, self.key_name)

    @property
    def owner_ip(self) -> IPv4Address | IPv6Address:
        """The address that identifies the node: PublicIP, or PublicIPv6 on an IPv6-only lease (PublicIP 0.0.0.0)."""
        a = self.attrs
        if self.subnet is None and a.public_ipv6 is not None:
            return a.public_ipv6
        return a.public_ip
