"""Choosing the uplink interface and the public IP, with flanneld's rules and messages.

Order (flanneld's; docs/design-notes.md, "Interface and public-IP selection"): with none of
-iface, -iface-regex, -iface-can-reach, the interface that owns -public-ip, else the
default-route interface. Otherwise the first hit of: each -iface (an IP or a name), each
-iface-regex (tried against every address, then every name), -iface-can-reach (the route to
that IP). The interface address is its first global IPv4 address; the published PublicIP is
-public-ip or that address.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from pyflannel.adapters.netlink import LinkInfo
from pyflannel.core.errors import FlannelError

log = logging.getLogger(__name__)


class InterfaceError(FlannelError):
    pass


@dataclass(frozen=True)
class Uplink:
    link: LinkInfo
    iface_addr: IPv4Address
    public_ip: IPv4Address


def _first_addr(link: LinkInfo) -> IPv4Address | None:
    glob = [a.ip for a in link.addrs if not a.ip.is_link_local and not a.ip.is_loopback]
    if glob:
        return glob[0]
    return link.addrs[0].ip if link.addrs else None


def _owner(links: Sequence[LinkInfo], ip: IPv4Address) -> LinkInfo | None:
    return next((lk for lk in links if any(a.ip == ip for a in lk.addrs)), None)


def select_uplink(
    links: Sequence[LinkInfo],
    default_oif: int | None,
    route_get: Callable[[IPv4Address], tuple[int | None, IPv4Address | None]],
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    iface_can_reach: str = "",
    public_ip: str = "",
) -> Uplink:
    pub = IPv4Address(public_ip) if public_ip else None
    link: LinkInfo | None = None
    addr: IPv4Address | None = None
    if not iface and not iface_regex and not iface_can_reach:
        if pub is not None:
            link = _owner(links, pub)
            if link is None:
                raise InterfaceError(
                    f"Failed to find any valid interface to use: no interface owns -public-ip {pub} "
                    "(behind NAT also pass -iface)"
                )
        else:
            link = next((lk for lk in links if lk.index == default_oif), None)
            if link is None:
                raise InterfaceError("Failed to find any valid interface to use: no default route interface found")
        log.info("Using interface with name %s and address %s", link.name, _first_addr(link))
    else:
        for name in iface:
            try:
                ip = IPv4Address(name)
            except ValueError:
                link = next((lk for lk in links if lk.name == name), None)
            else:
                link = _owner(links, ip)
                addr = ip if link else None
            if link is not None:
                break
        if link is None:
            for rx in iface_regex:
                pat = re.compile(rx)
                for lk in links:
                    hit = next((a.ip for a in lk.addrs if pat.match(str(a.ip))), None)
                    if hit is not None:
                        link, addr = lk, hit
                        break
                if link is None:
                    link = next((lk for lk in links if lk.name and pat.match(lk.name)), None)
                if link is not None:
                    break
        if link is None and iface_can_reach:
            oif, src = route_get(IPv4Address(iface_can_reach))
            link = next((lk for lk in links if lk.index == oif), None)
            addr = src
        if link is None:
            raise InterfaceError(
                "Failed to find interface to use that matches the interfaces and/or regexes provided "
                f"(iface={list(iface)}, iface-regex={list(iface_regex)}, iface-can-reach={iface_can_reach!r})"
            )
    addr = addr or _first_addr(link)
    if addr is None:
        raise InterfaceError(f"Failed to find IPv4 address for interface {link.name}")
    if link.mtu == 0:
        raise InterfaceError(f"Failed to determine MTU for {link.name} interface")
    if pub is None:
        log.info("Defaulting external address to interface address (%s)", addr)
    return Uplink(link, addr, pub or addr)


def select_uplink6(
    links: Sequence[LinkInfo],
    addrs6: Callable[[int], Sequence[Addr6]],
    default_oif6: int | None,
    default_oif: int | None,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    public_ipv6: str = "",
    iface_can_reach: str = "",
) -> LinkInfo:
    """The uplink on an IPv6-only network (EnableIPv4=false), where the link may have no IPv4 address.

    flanneld's order with IPv6 in place of IPv4: with none of -iface/-iface-regex, the interface that owns
    -public-ipv6, else the IPv6 default-route interface (the IPv4 one if there is no IPv6 default route).
    Otherwise each -iface (an IPv6 or IPv4 address, or a name), then each -iface-regex (against every
    usable IPv6 address, then every name). The address itself is chosen by :func:`select_v6`.
    """
    if iface_can_reach:
        raise InterfaceError(f"-iface-can-reach {iface_can_reach}: not supported on an IPv6-only network "
                             "(EnableIPv4=false); use -iface or -iface-regex")

    def owner6(ip: IPv6Address) -> LinkInfo | None:
        return next((lk for lk in links if any(a.ip == ip for a in addrs6(lk.index))), None)

    link: LinkInfo | None = None
    if not iface and not iface_regex:
        if public_ipv6:
            try:
                pub = IPv6Address(public_ipv6)
            except ValueError:
                raise InterfaceError(f"-public-ipv6: not an IPv6 address: {public_ipv6!r}") from None
            link = owner6(pub)
            if link is None:
                raise InterfaceError(f"Failed to find any valid interface to use: no interface owns -public-ipv6 {pub} "
                                     "(behind NAT also pass -iface)")
        else:
            oif = default_oif6 if default_oif6 is not None else default_oif
            link = next((lk for lk in links if lk.index == oif), None)
            if link is None:
                raise InterfaceError("Failed to find any valid interface to use: no IPv6 default route interface found")
    else:
        for name in iface:
            try:
                ip6 = IPv6Address(name)
            except ValueError:
                try:
                    link = _owner(links, IPv4Address(name))
                except ValueError:
                    link = next((lk for lk in links if lk.name == name), None)
            else:
                link = owner6(ip6)
            if link is not None:
                break
        if link is None:
            for rx in iface_regex:
                pat = re.compile(rx)
                link = next((lk for lk in links
                             if any(usable_v6(a) and pat.match(str(a.ip)) for a in addrs6(lk.index))), None)
                if link is None:
                    link = next((lk for lk in links if lk.name and pat.match(lk.name)), None)
                if link is not None:
                    break
        if link is None:
            raise InterfaceError(
                "Failed to find interface to use that matches the interfaces and/or regexes provided "
                f"(iface={list(iface)}, iface-regex={list(iface_regex)})"
            )
    if link.mtu == 0:
        raise InterfaceError(f"Failed to determine MTU for {link.name} interface")
    return link


# --- IPv6 address selection -------------------------------------------------------------------------
# flannel #2293/#2295: a node published a temporary (privacy) IPv6 address as PublicIPv6; when it
# expired the peers lost the node. Candidates here are never temporary, deprecated, tentative or
# DAD-failed; of the rest, global before link-local and permanent (configured) before dynamic (SLAAC),
# then kernel order, as flannel v0.28.9's compareAddrs sorts them.

IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
_UNUSABLE = IFA_F_TEMPORARY | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE


@dataclass(frozen=True, slots=True)
class Addr6:
    """One IPv6 address of a link with its IFA_F_* flags (IFA_FLAGS, the full 32 bits)."""

    ip: IPv6Address
    prefixlen: int
    flags: int = 0


def usable_v6(a: Addr6) -> bool:
    ip = a.ip
    if ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.ipv4_mapped is not None:
        return False
    return not a.flags & _UNUSABLE


def pick_v6(addrs: Sequence[Addr6]) -> IPv6Address | None:
    """The interface's IPv6 address to use, or None (never a temporary/deprecated/tentative one)."""
    ok = [a for a in addrs if usable_v6(a)]
    ok.sort(key=lambda a: (a.ip.is_link_local, not a.flags & IFA_F_PERMANENT))  # stable: kernel order breaks ties
    return ok[0].ip if ok else None


def select_v6(addrs: Sequence[Addr6], link_name: str, public_ipv6: str = "") -> tuple[IPv6Address, IPv6Address]:
    """(interface IPv6, PublicIPv6) for the chosen uplink; -public-ipv6 wins for the published one."""
    addr = pick_v6(addrs)
    if addr is None:
        bad = ", ".join(f"{a.ip} (flags {a.flags:#x})" for a in addrs) or "none"
        raise InterfaceError(
            f"Failed to find IPv6 address for interface {link_name}: no usable address "
            f"(temporary, deprecated and tentative ones are never used; found: {bad})"
        )
    if public_ipv6:
        try:
            pub = IPv6Address(public_ipv6)
        except ValueError:
            raise InterfaceError(f"-public-ipv6: not an IPv6 address: {public_ipv6!r}") from None
        return addr, pub
    log.info("Defaulting external v6 address to interface address (%s)", addr)
    return addr, addr


def default_route_oif6() -> int | None:
    """The interface of the first IPv6 default route in the main table (current namespace), or None."""
    import socket

    from pyflannel.adapters.lazy_pyroute2 import import_iproute

    iproute, _ = import_iproute()
    with iproute() as ipr:
        for r in ipr.route("dump", family=socket.AF_INET6, table=254):
            if r["dst_len"] == 0 and r.get("RTA_OIF"):
                return int(r.get("RTA_OIF"))
    return None


def read_v6_addrs(index: int) -> list[Addr6]:
    """The link's IPv6 addresses with their full flags, from the kernel (current namespace)."""
    import socket

    from pyflannel.adapters.lazy_pyroute2 import import_iproute

    iproute, _ = import_iproute()
    out: list[Addr6] = []
    with iproute() as ipr:
        for a in ipr.addr("dump", family=socket.AF_INET6, index=index):
            ip = a.get("IFA_ADDRESS") or a.get("IFA_LOCAL")
            if ip:
                flags = a.get("IFA_FLAGS")
                out.append(Addr6(IPv6Address(ip.split("%")[0]), a["prefixlen"], a["flags"] if flags is None else flags))
    return out
