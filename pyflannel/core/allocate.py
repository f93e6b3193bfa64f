"""Choosing a node's subnet: reuse by PublicIP, then the previous subnet, then random.

This is flanneld's AcquireLease decision (``subnet/etcd/local_manager.go``) without the
I/O: the caller lists the leases, calls ``choose_subnet`` and writes the result with a
create-if-absent transaction. If that transaction loses a race the caller lists again and
asks again, which flanneld v0.20.2 fails to do.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import OutOfSubnets
from pyflannel.core.ipnet import subnets_between
from pyflannel.core.lease import Lease

# flanneld picks uniformly among the first 100 free subnets, so that nodes starting at the
# same moment rarely collide while allocation still packs the low end of the range.
CANDIDATES = 100


@dataclass(frozen=True)
class Choice:
    """What to do: take ``subnet``; ``existing`` is the lease being reused, if any."""

    subnet: IPv4Network
    existing: Lease | None
    reason: str
    # Leases with our PublicIP that no longer fit the config: flanneld deletes them.
    stale: tuple[Lease, ...] = ()


def _free(candidate: IPv4Network, taken_same: set[IPv4Network], taken_other: Sequence[IPv4Network]) -> bool:
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
) -> Choice:
    """Decide which subnet this node should hold.

    ``exclude`` lists subnets that just lost a creation race, so a retry picks another.
    Raises OutOfSubnets when nothing is free.
    """
    assert config.network is not None and config.subnet_min is not None and config.subnet_max is not None
    leases = list(leases)
    stale: list[Lease] = []
    mine = [le for le in leases if le.attrs.public_ip == public_ip]
    # A reservation for our IP wins over a dynamic lease; then the lease we held before (a
    # second lease claiming our IP may be an impostor or a leftover); then the first that fits.
    mine.sort(key=lambda le: (not le.reserved, le.subnet != previous))
    for le in mine:
        if config.subnet_fits(le.subnet) or (le.reserved and le.subnet.subnet_of(config.network)):
            return Choice(le.subnet, le, f"found lease {le.subnet} for current IP {public_ip}, reusing")
        if not le.reserved:
            stale.append(le)

    taken = [le.subnet for le in leases if le not in stale]
    taken.extend(exclude)
    taken_same = {t for t in taken if t.prefixlen == config.subnet_len}
    taken_other = [t for t in taken if t.prefixlen != config.subnet_len]

    if previous is not None and config.subnet_fits(previous) and _free(previous, taken_same, taken_other):
        return Choice(previous, None, f"reusing previous subnet {previous} from the subnet file", tuple(stale))

    free: list[IPv4Network] = []
    for cand in subnets_between(config.subnet_min, config.subnet_max, config.subnet_len):
        if _free(cand, taken_same, taken_other):
            free.append(cand)
            if len(free) >= CANDIDATES:
                break
    if not free:
        raise OutOfSubnets()
    pick = free[rng.randrange(len(free))]
    return Choice(pick, None, f"allocated new subnet {pick}", tuple(stale))
