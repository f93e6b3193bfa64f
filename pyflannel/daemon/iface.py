"""Choosing the uplink interface and the public IP, with flanneld's rules and messages.

Order (flannel-spec.md section 3): with none of -iface, -iface-regex, -iface-can-reach,
the interface that owns -public-ip, else the default-route interface. Otherwise the first
hit of: each -iface (an IP or a name), each -iface-regex (tried against every address,
then every name), -iface-can-reach (the route to that IP). The interface address is its
first global IPv4 address; the published PublicIP is -public-ip or that address.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

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
