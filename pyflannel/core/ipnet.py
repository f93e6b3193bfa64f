"""Subnet math and the etcd subnet-key format.

flanneld names a lease by its subnet: ``10.5.34.0-24`` (and ``&fc00:0:0:22::-64`` for
dual stack). The key parser must accept exactly what flanneld's regex accepts, because
keys written by Go nodes and by us share one prefix in etcd.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.core.errors import LeaseFormatError, shorten


def ipv4_address(text: str) -> IPv4Address:
    """``IPv4Address(text)``, with the usual case parsed by the C library.

    ipaddress parses octet by octet in Python (about 3 us an address); every lease carries one or two, and a
    join reads thousands. inet_pton accepts exactly the dotted quad without leading zeros, as ipaddress
    does; anything it refuses goes to ipaddress, so the errors (AddressValueError) stay the same.
    """
    try:
        return IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError, TypeError):
        return IPv4Address(text)


# flanneld's regex, byte for byte, including its unescaped '.' between the 2nd and 3rd
# octet: a key that Go accepts must not be rejected here.
# Go's \d is ASCII-only and its $ matches only at the very end (Python's also before a final "\n").
_SUBNET_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?\Z", re.ASCII)
# pyflannel's IPv6-only key (EnableIPv4=false, issue 13): the v6 half of a dual-stack key on its own,
# the whole last path element. Go's regex requires the v4 part, so Go flanneld ignores these keys.
_SUBNET6_KEY_RE = re.compile(r"(?:\A|/)([a-f\d]*:[a-f\d:]*)-(\d+)\Z", re.ASCII)
# Longer than any valid key ("255.255.255.255-32&" + 39 characters of IPv6 + "-128" is 62).
_KEY_TAIL = 80


def parse_subnet_key(key: str) -> tuple[IPv4Network | None, IPv6Network | None]:
    """Parse the last path element of a lease key (or the whole key) into subnets.

    Three forms: ``<v4>-<len>``, ``<v4>-<len>&<v6>-<len6>`` (flanneld's) and ``<v6>-<len6>`` (an
    IPv6-only lease); at least one subnet is returned. Keys come from etcd, where anyone with write
    access to the prefix can put any string, so this must stay fast and raise nothing but
    LeaseFormatError on any input.
    """
    # The unescaped '.' in flanneld's regex makes Python's backtracking matcher cubic on long runs
    # of digits (a 3000-digit key took seconds; etcd allows 1.5 MB). A match must end at the end of
    # the key and a valid one is at most 62 characters, so only the tail can hold one.
    m = _SUBNET_KEY_RE.search(key[-_KEY_TAIL:])
    if m is None:
        return None, _parse_subnet6_key(key)
    # Go parses the prefix with strconv.ParseUint(.., 5) / (.., 7): at most 31 / 127. Compare the
    # digits before int(): int() refuses strings of more than 4300 digits with a plain ValueError.
    if _too_big(m.group(2), 31) or (m.group(4) is not None and _too_big(m.group(4), 127)):
        raise LeaseFormatError(f"bad subnet key {shorten(key)}: prefix length out of range")
    try:
        sn4 = IPv4Network((int(ipv4_address(m.group(1))), int(m.group(2))), strict=True)
        sn6 = None
        if m.group(3) is not None:
            sn6 = IPv6Network(f"{m.group(3)}/{m.group(4)}", strict=True)
    except ValueError as e:
        raise LeaseFormatError(f"bad subnet key {shorten(key)}: {e}") from None
    return sn4, sn6


def _parse_subnet6_key(key: str) -> IPv6Network:
    m = _SUBNET6_KEY_RE.search(key[-_KEY_TAIL:])
    # A valid v6 key is at most 43 characters; a tail that long without a "/" before it is not one.
    if m is None or (m.start() == 0 and len(key) > _KEY_TAIL):
        raise LeaseFormatError(f"bad subnet key {shorten(key)}")
    if _too_big(m.group(2), 127):
        raise LeaseFormatError(f"bad subnet key {shorten(key)}: prefix length out of range")
    try:
        return IPv6Network(f"{m.group(1)}/{m.group(2)}", strict=True)
    except ValueError as e:
        raise LeaseFormatError(f"bad subnet key {shorten(key)}: {e}") from None


def _too_big(digits: str, limit: int) -> bool:
    digits = digits.lstrip("0")
    return len(digits) > 3 or int(digits or "0") > limit


def make_subnet_key(sn4: IPv4Network | None, sn6: IPv6Network | None = None) -> str:
    """The last path element of a lease key: ``100.64.67.0-24[&<v6>-<len>]``, or ``<v6>-<len>`` (IPv6-only)."""
    key6 = "" if sn6 is None else f"{go_ip6_text(sn6.network_address)}-{sn6.prefixlen}"
    if sn4 is None:
        if not key6:
            raise LeaseFormatError("a subnet key needs an IPv4 or an IPv6 subnet")
        return key6
    key = f"{sn4.network_address}-{sn4.prefixlen}"
    return key + "&" + key6 if key6 else key


def go_ip6_text(ip: IPv6Address) -> str:
    """An IPv6 address as flannel's ``ip.IP6`` prints it in keys and PublicIPv6: RFC 5952 text.

    Go's ``net.IP.String`` and ``compressed`` agree on every address a node can use. They differ only
    for IPv4-mapped and IPv4-compatible values (``::ffff:a.b.c.d``, ``::a.b.c.d``), which Go prints as a
    dotted quad; such a PublicIPv6 is refused by this parser (tests/unit/test_lease.py), so they are
    printed compressed rather than as text no pyflannel node would read back.
    """
    return ip.compressed


def first_host(net: IPv4Network) -> IPv4Address:
    """The first usable address: the bridge gateway that subnet.env advertises."""
    return net.network_address + 1


def subnets_between(
    lo: IPv4Address, hi: IPv4Address, prefixlen: int
) -> Iterator[IPv4Network]:
    """Every subnet of ``prefixlen`` whose network address lies in [lo, hi]."""
    step = 1 << (32 - prefixlen)
    cur, end = int(lo), int(hi)
    while cur <= end:
        yield IPv4Network((cur, prefixlen))
        cur += step


def subnets6_between(lo: IPv6Address, hi: IPv6Address, prefixlen: int) -> Iterator[IPv6Network]:
    """Every IPv6 subnet of ``prefixlen`` whose network address lies in [lo, hi]."""
    step = 1 << (128 - prefixlen)
    cur, end = int(lo), int(hi)
    while cur <= end:
        yield IPv6Network((cur, prefixlen))
        cur += step


def overlaps(a: IPv4Network | IPv6Network, b: IPv4Network | IPv6Network) -> bool:
    return a.version == b.version and a.overlaps(b)


def parse_ipv4(text: str, what: str) -> IPv4Address:
    """Parse a dotted quad; ``what`` names the thing in the error."""
    try:
        return IPv4Address(text)
    except ValueError:
        raise ValueError(f"{what}: invalid IPv4 address {text!r}") from None


def parse_cidr4(text: str, what: str) -> IPv4Network:
    """Parse ``a.b.c.d/n`` the way Go's net.ParseCIDR does, masking host bits."""
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise ValueError(f"{what}: invalid CIDR address {text!r}") from None
    if "/" not in text:
        raise ValueError(f"{what}: invalid CIDR address {text!r}")
    return iface.network
