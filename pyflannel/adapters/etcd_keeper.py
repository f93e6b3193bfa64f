"""Acquire the node's subnet lease, renew it, and take it back if it disappears.

Differences from flanneld, on purpose (docs/design-notes.md, "Lease keeping"):
* a lost create race is retried with another subnet instead of exiting;
* if our key is deleted (an operator revoked it, or it expired while etcd was away), the
  lease is acquired again, preferring the same subnet, instead of exiting with status 0;
* renewal is a keepalive on the etcd lease, so peers see no watch event for it;
* a reservation (a key with no etcd lease) is used as is and never given a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.adapters.etcd import EtcdError
from pyflannel.adapters.registry import LEASE_TTL, BadLease, EtcdLease, SubnetRegistry, etcd_lease_id
from pyflannel.core.allocate import choose_subnet
from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import FlannelError, OutOfSubnets
from pyflannel.core.lease import Lease, LeaseAttrs

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
RETRY_AFTER_ERROR = 10.0


class LeaseKeeper:
    def __init__(
        self,
        registry: SubnetRegistry,
        public_ip: IPv4Address,
        attrs: Callable[[], LeaseAttrs],
        renew_margin: float,
        ttl: int = LEASE_TTL,
        rng: random.Random | None = None,
        public_ipv6: IPv6Address | None = None,
    ) -> None:
        self.registry = registry
        self.public_ip = public_ip
        # On an IPv6-only network every node publishes PublicIP 0.0.0.0: our leases are the ones with this.
        self.public_ipv6 = public_ipv6
        self.attrs = attrs
        self.renew_margin = renew_margin
        self.ttl = ttl
        self.rng = rng or random.Random()
        self.lease: EtcdLease | None = None
        self._wake = asyncio.Event()
        self._lost = False
        self._republish = False
        self.reacquisitions = 0
        # The last listing acquire() made; the watcher starts from it instead of listing again.
        self.snapshot: tuple[list[EtcdLease], list[BadLease], int] | None = None

    @property
    def key(self) -> str | None:
        return None if self.lease is None else self.registry.lease_key(self.lease.subnet, self.lease.subnet6)

    async def acquire(self, config: NetworkConfig, previous: IPv4Network | None,
                      previous6: IPv6Network | None = None) -> EtcdLease:
        """One AcquireLease: up to 10 rounds of list, choose, write (both halves of a dual-stack key)."""
        exclude: list[IPv4Network] = []
        exclude6: list[IPv6Network] = []
        if config.enable_ipv4:
            assert config.network is not None
            log.info("Picking subnet in range %s ... %s", config.subnet_min, config.subnet_max)
        if config.enable_ipv6:
            log.info("Picking ipv6 subnet in range %s ... %s", config.ipv6_subnet_min, config.ipv6_subnet_max)
        for _ in range(MAX_ATTEMPTS):
            leases, bad, rev = await self.registry.list_leases()
            self.snapshot = (leases, bad, rev)
            choice = choose_subnet(config, leases, self.public_ip, previous, self.rng, exclude,
                                   previous6=previous6, exclude6=exclude6, public_ipv6=self.public_ipv6)
            for stale in choice.stale:
                log.info("Lease %s for current IP %s does not fit the config; deleting it", stale.name,
                         stale.owner_ip)
                await self.registry.delete_lease(stale.subnet, stale.subnet6)
            attrs = self.attrs()
            if choice.existing is not None:
                old = choice.existing
                lease = await self.registry.update_lease(old, attrs, self.ttl)
                old_id = etcd_lease_id(old)
                if not old.reserved and old_id and old_id != lease.lease_id:
                    # The key now hangs on the new etcd lease; drop the old one rather than
                    # leave it to expire in 24 h.
                    await self.registry.client.lease_revoke(old_id)
                kind = "reservation" if old.reserved else "lease"
                log.info("Found %s (%s) for current IP (%s), reusing", kind, old.name, old.owner_ip)
            else:
                created = await self.registry.create_lease(choice.subnet, attrs, self.ttl, choice.subnet6)
                if created is None:
                    log.info("Subnet %s was taken by another node meanwhile; trying another",
                             choice.subnet or choice.subnet6)
                    if choice.subnet is not None:
                        exclude.append(choice.subnet)
                    if choice.subnet6 is not None:
                        exclude6.append(choice.subnet6)
                    # Nodes that collided once are likely in lockstep; a little jitter parts them.
                    await asyncio.sleep(self.rng.uniform(0, 0.05))
                    continue
                lease = created
            if lease.subnet is None:
                log.info("Lease acquired: ipv6 %s (%s)", lease.subnet6, choice.reason)
            elif lease.subnet6 is not None:
                log.info("Lease acquired: %s, ipv6 %s (%s)", lease.subnet, lease.subnet6, choice.reason)
            else:
                log.info("Lease acquired: %s (%s)", lease.subnet, choice.reason)
            self.lease = lease
            self._lost = False
            return lease
        raise FlannelError("Max retries reached trying to acquire a subnet")

    def check_own(self, leases: dict[str, Lease], watched_revision: int) -> None:
        """Called after every watcher update: notice our key being deleted or taken over."""
        if self.lease is None or self.key is None or watched_revision <= self.lease.mod_revision:
            return
        cur = leases.get(self.key)
        if cur is None:
            log.warning("Lease %s has been revoked or expired; acquiring a lease again", self.lease.name)
        elif cur.owner_ip != self.lease.owner_ip:
            log.warning("Lease %s was taken over by %s; acquiring a lease again", self.lease.name, cur.owner_ip)
        else:
            return
        self._lost = True
        self._wake.set()

    def republish(self) -> None:
        """Our attrs changed (a new VtepMAC or WireGuard key): write them into the lease soon."""
        self._republish = True
        self._wake.set()

    def renew_due(self, now: float) -> float | None:
        """Seconds until renewal, or None for a reservation (never renewed)."""
        if self.lease is None or self.lease.reserved or self.lease.expiration is None:
            return None
        return max(0.0, self.lease.expiration - self.renew_margin - now)

    async def run(self, get_config: Callable[[], NetworkConfig], on_change: Callable[[Lease], None]) -> None:
        """Renew before expiry and re-acquire when lost; runs until cancelled."""
        while True:
            due = self.renew_due(time.time())
            if due is not None and not self._lost:
                log.info("Waiting for %.0fs to renew lease", due)
            # Lost: retry at once (errors below sleep first). Reserved: wait for a wake-up only.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0 if self._lost else due):  # not wait_for: see Reconciler.run
                    await self._wake.wait()
            self._wake.clear()
            assert self.lease is not None
            old = self.lease
            try:
                if self._republish and not self._lost:
                    self._republish = False
                    self.lease = await self.registry.rewrite_lease(old, self.attrs())
                    log.info("Published new lease attributes for %s", old.name)
                    on_change(self.lease)
                    continue
                if not self._lost:
                    renewed = await self.registry.renew_lease(old, self.ttl)
                    if renewed is not None:
                        self.lease = renewed
                        log.info("Renewed lease %s", old.name)
                        continue
                    log.warning("etcd lease behind %s is gone; acquiring a lease again", old.name)
                self.reacquisitions += 1
                new = await self.acquire(get_config(), old.subnet, old.subnet6)
                if new.subnets != old.subnets:
                    log.warning("Subnet changed from %s to %s", old.name, new.name)
                on_change(new)
            except OutOfSubnets as e:
                delay = self.rng.uniform(0.5, 1.0) * RETRY_AFTER_ERROR  # jittered: nodes do not retry in lockstep
                log.error("Could not acquire a lease: %s; retrying in %.0fs", e, delay)
                self._lost = True
                await asyncio.sleep(delay)
            except (EtcdError, FlannelError) as e:
                delay = self.rng.uniform(0.5, 1.0) * RETRY_AFTER_ERROR
                log.error("Error renewing lease (trying again in %.0fs): %s", delay, e)
                await asyncio.sleep(delay)
