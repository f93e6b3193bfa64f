"""Choosing a node's subnet: reuse by PublicIP, then the previous subnet, then random.

This is flanneld's AcquireLease decision (``subnet/etcd/local_manager.go``) without the
I/O: the caller lists the leases, calls ``choose_subnet`` and writes the result with a
create-if-absent transaction. If that transaction loses a race the caller lists again and
asks again, which flanneld v0.20.2 fails to do.

Dual stack (EnableIPv6): the IPv6 subnet is chosen next to the IPv4 one, by the same rules
(flannel v0.28.9 ``allocateSubnet``): a lease reused by PublicIP must fit both halves of the
config, and a new one draws the v4 subnet, then the v6 subnet, each uniformly among the
first 100 free. Two departures, both for leases Go would treat worse: a previous v4 subnet
from subnet.env is kept even when the previous v6 subnet is missing or unusable (Go then
drops both, so enabling IPv6 renumbers every node), and a lease without a v6 half never
blocks a v6 candidate (Go's overlap check on an empty IP6Net panics).

IPv6-only (EnableIPv4=false, which Go flanneld cannot do in etcd mode): only the IPv6 subnet is
chosen, by the same rules, and the node's leases are found by PublicIPv6.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import OutOfSubnets
from pyflannel.core.ipnet import subnets6_between, subnets_between
from pyflannel.core.lease import Lease

N = TypeVar("N", IPv4Network, IPv6Network)

# flanneld picks uniformly among the first 100 free subnets, so that nodes starting at the
# same moment rarely collide while allocation still packs the low end of the range.
CANDIDATES = 100


@dataclass(frozen=True)
class Choice:
    """What to do: take ``subnet``; ``existing`` is the lease being reused, if any."""

    subnet: IPv4Network | None  # None on an IPv6-only network (EnableIPv4=false)
    existing: Lease | None
    reason: str
    # Leases with our PublicIP that no longer fit the config: flanneld deletes them.
    stale: tuple[Lease, ...] = ()
    # The IPv6 half (EnableIPv6); None for an IPv4-only config.
    subnet6: IPv6Network | None = None


def subnet4_fits(config: NetworkConfig, sn: IPv4Network | None) -> bool:
    """The IPv4 half fits: with IPv4 off (an IPv6-only network) only an absent one does."""
    if not config.enable_ipv4:
        return sn is None
    return sn is not None and config.subnet_fits(sn)


def _reserved4_fits(config: NetworkConfig, sn: IPv4Network | None) -> bool:
    if not config.enable_ipv4:
        return sn is None
    return sn is not None and config.network is not None and sn.subnet_of(config.network)


def subnet6_fits(config: NetworkConfig, sn6: IPv6Network | None) -> bool:
    """flannel's isIPv6SubnetConfigCompat: with IPv6 off only an absent v6 half fits."""
    if not config.enable_ipv6:
        return sn6 is None
    if sn6 is None or config.ipv6_subnet_min is None or config.ipv6_subnet_max is None:
        return False
    return (
        sn6.prefixlen == config.ipv6_subnet_len
        and config.ipv6_subnet_min <= sn6.network_address <= config.ipv6_subnet_max
    )


def _reserved6_fits(config: NetworkConfig, sn6: IPv6Network | None) -> bool:
    if not config.enable_ipv6:
        return sn6 is None
    return sn6 is not None and config.ipv6_network is not None and sn6.subnet_of(config.ipv6_network)


def _free(
    candidate: IPv4Network | IPv6Network,
    taken_same: set[IPv4Network] | set[IPv6Network],
    taken_other: Sequence[IPv4Network] | Sequence[IPv6Network],
) -> bool:
    if candidate in taken_same:
        return False
    return not any(candidate.overlaps(t) for t in taken_other)


def choose_subnet(
    config: NetworkConfig,
    leases: Iterable[Lease],
    public_ip: IPv4Address,
    previous: IPv4Network | None,
    rng: random.Random,
    exclude: Iterable[IPv4Network] = (),
    previous6: IPv6Network | None = None,
    exclude6: Iterable[IPv6Network] = (),
    public_ipv6: IPv6Address | None = None,
) -> Choice:
    """Decide which subnet (and, with EnableIPv6, which IPv6 subnet) this node should hold.

    ``exclude``/``exclude6`` list subnets that just lost a creation race, so a retry picks others.
    On an IPv6-only network (EnableIPv4=false) every node publishes PublicIP 0.0.0.0, so our leases
    are found by ``public_ipv6`` instead, and only an IPv6 subnet is chosen.
    Raises OutOfSubnets when nothing is free (in either family).
    """
    v4 = config.enable_ipv4
    leases = list(leases)
    stale: list[Lease] = []
    if v4:
        mine = [le for le in leases if le.attrs.public_ip == public_ip]
    else:
        mine = [le for le in leases if public_ipv6 is not None and le.attrs.public_ipv6 == public_ipv6]
    # A reservation for our IP wins over a dynamic lease; then the lease we held before (a
    # second lease claiming our IP may be an impostor or a leftover); then the first that fits.
    mine.sort(key=lambda le: (not le.reserved, le.subnet != previous if v4 else le.subnet6 != previous6))
    owner = public_ip if v4 else public_ipv6
    for le in mine:
        fits4 = subnet4_fits(config, le.subnet) or (le.reserved and _reserved4_fits(config, le.subnet))
        fits6 = subnet6_fits(config, le.subnet6) or (le.reserved and _reserved6_fits(config, le.subnet6))
        if fits4 and fits6:
            return Choice(le.subnet, le, f"found lease {_both(le.subnet, le.subnet6)} for current IP {owner}, "
                          "reusing", subnet6=le.subnet6)
        if not le.reserved:
            stale.append(le)

    prev6_ok = False
    taken6_same: set[IPv6Network] = set()
    taken6_other: list[IPv6Network] = []
    if config.enable_ipv6:
        taken6 = [le.subnet6 for le in leases if le not in stale and le.subnet6 is not None]
        taken6.extend(exclude6)
        taken6_same = {t for t in taken6 if t.prefixlen == config.ipv6_subnet_len}
        taken6_other = [t for t in taken6 if t.prefixlen != config.ipv6_subnet_len]
        prev6_ok = (previous6 is not None and subnet6_fits(config, previous6)
                    and _free(previous6, taken6_same, taken6_other))

    if not v4:
        if prev6_ok:
            return Choice(None, None, f"reusing previous IPv6 subnet {previous6} from the subnet file", tuple(stale),
                          previous6)
        pick6 = _pick6(config, taken6_same, taken6_other, rng)
        return Choice(None, None, f"allocated new IPv6 subnet {pick6}", tuple(stale), pick6)

    assert config.network is not None and config.subnet_min is not None and config.subnet_max is not None
    taken = [le.subnet for le in leases if le not in stale and le.subnet is not None]
    taken.extend(exclude)
    taken_same = {t for t in taken if t.prefixlen == config.subnet_len}
    taken_other = [t for t in taken if t.prefixlen != config.subnet_len]

    if previous is not None and config.subnet_fits(previous) and _free(previous, taken_same, taken_other):
        if not config.enable_ipv6:
            return Choice(previous, None, f"reusing previous subnet {previous} from the subnet file", tuple(stale))
        if prev6_ok:
            return Choice(previous, None, f"reusing previous subnets {_both(previous, previous6)} from the subnet "
                          "file", tuple(stale), previous6)
        pick6 = _pick6(config, taken6_same, taken6_other, rng)
        return Choice(previous, None, f"reusing previous subnet {previous} from the subnet file, allocated new "
                      f"IPv6 subnet {pick6}", tuple(stale), pick6)

    pick = _pick_free(subnets_between(config.subnet_min, config.subnet_max, config.subnet_len),
                      taken_same, taken_other, rng)
    if not config.enable_ipv6:
        return Choice(pick, None, f"allocated new subnet {pick}", tuple(stale))
    pick6 = _pick6(config, taken6_same, taken6_other, rng)
    return Choice(pick, None, f"allocated new subnets {_both(pick, pick6)}", tuple(stale), pick6)


def _pick6(
    config: NetworkConfig, taken_same: set[IPv6Network], taken_other: Sequence[IPv6Network], rng: random.Random
) -> IPv6Network:
    assert config.ipv6_subnet_min is not None and config.ipv6_subnet_max is not None
    return _pick_free(subnets6_between(config.ipv6_subnet_min, config.ipv6_subnet_max, config.ipv6_subnet_len),
                      taken_same, taken_other, rng)


def _pick_free(candidates: Iterable[N], taken_same: set[N], taken_other: Sequence[N], rng: random.Random) -> N:
    """A uniformly random one of the first CANDIDATES free subnets, in candidate order (flanneld's rule)."""
    free: list[N] = []
    for cand in candidates:
        if _free(cand, taken_same, taken_other):
            free.append(cand)
            if len(free) >= CANDIDATES:
                break
    if not free:
        raise OutOfSubnets()
    return free[rng.randrange(len(free))]


def _both(sn: IPv4Network | None, sn6: IPv6Network | None) -> str:
    if sn is None:
        return str(sn6)
    return str(sn) if sn6 is None else f"{sn} and {sn6}"
