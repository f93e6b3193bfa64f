"""flannel's keyspace in etcd: the network config and the subnet leases.

This is the only module that knows the key layout (``<prefix>/config``,
``<prefix>/subnets/<a.b.c.d>-<len>[&<v6>-<len6>]``, and ``<prefix>/subnets/<v6>-<len6>`` for an
IPv6-only lease) and how a lease maps onto an etcd lease. It turns
etcd key-values into core Lease values and back, and never decides anything itself.

Listing leases does not call TimeToLive per key (flanneld does, twice per key at start-up):
the only expiry that matters to a node is its own, which it knows because it granted it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from pyflannel.adapters.etcd import EtcdClient, KeyValue, WatchEvent
from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import ConfigError, LeaseFormatError
from pyflannel.core.ipnet import make_subnet_key, parse_subnet_key
from pyflannel.core.lease import Lease, LeaseAttrs, parse_lease_attrs

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
LEASE_TTL = 86400


class ConfigNotFound(ConfigError):
    """``<prefix>/config`` does not exist under the v3 API."""


@dataclass(frozen=True, slots=True)
class EtcdLease(Lease):
    """A Lease as etcd holds it: the etcd lease the key hangs on and the key's revision.

    ``lease_id`` 0 means the key has no etcd lease, which pyflannel treats as a reservation
    (flannel issue #1329); ``reserved`` is derived from it and never set on its own. These facts
    stay in this adapter: core sees a plain Lease. Equality compares them too, so a lease put again
    with only a new revision still counts as a changed value (the peer table re-judges it).
    """

    lease_id: int = 0
    mod_revision: int = 0

    @classmethod
    def make(
        cls, subnet: IPv4Network | None, attrs: LeaseAttrs, subnet6: IPv6Network | None, lease_id: int,
        expiration: float | None, mod_revision: int,
    ) -> EtcdLease:
        return cls(subnet=subnet, attrs=attrs, subnet6=subnet6, expiration=expiration, reserved=lease_id == 0,
                   lease_id=lease_id, mod_revision=mod_revision)


def etcd_lease_id(lease: Lease) -> int:
    """The etcd lease behind ``lease``; 0 for a reservation or a lease that did not come from etcd."""
    return lease.lease_id if isinstance(lease, EtcdLease) else 0


def etcd_revision(lease: Lease) -> int:
    """The mod revision of ``lease``'s key; 0 for a lease that did not come from etcd."""
    return lease.mod_revision if isinstance(lease, EtcdLease) else 0


@dataclass(frozen=True)
class BadLease:
    key: str
    reason: str


@dataclass(frozen=True)
class LeaseEvent:
    """A change to one subnet key. ``lease`` is None for a deletion (or an unparsable put)."""

    key: str
    lease: Lease | None
    bad: BadLease | None
    revision: int


@dataclass(frozen=True)
class ConfigEvent:
    """The config key changed; ``text`` is None when it was deleted."""

    text: str | None
    revision: int


def join(prefix: str, *parts: str) -> str:
    """Go's path.Join for our keys: one slash between parts, no trailing slash."""
    segs = [p.strip("/") for p in (prefix, *parts) if p.strip("/")]
    return "/" + "/".join(segs)


def decode_lease(kv: KeyValue) -> EtcdLease:
    """A Lease from a subnet key-value; raises LeaseFormatError naming the key."""
    name = kv.key.rsplit("/", 1)[-1]
    try:
        sn4, sn6 = parse_subnet_key(name)
        attrs = parse_lease_attrs(kv.value)
    except LeaseFormatError as e:
        raise LeaseFormatError(f"{kv.key}: {e}") from None
    return EtcdLease.make(sn4, attrs, sn6, kv.lease, None, kv.mod_revision)


class SubnetRegistry:
    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.config_key = join(prefix, "config")
        self.subnets_prefix = join(prefix, "subnets") + "/"

    def lease_key(self, subnet: IPv4Network | None, subnet6: IPv6Network | None = None) -> str:
        return self.subnets_prefix + make_subnet_key(subnet, subnet6)

    async def get_config_text(self) -> str:
        kv = await self.client.get(self.config_key)
        if kv is None:
            v2 = await self.client.v2_get(self.config_key)
            if v2 is not None:
                raise ConfigNotFound(
                    f"flannel config not found in etcd store: {self.config_key} exists only under the v2 API; "
                    f"put it again with: ETCDCTL_API=3 etcdctl put {self.config_key} '{v2.strip()}'"
                )
            raise ConfigNotFound(
                f"flannel config not found in etcd store: {self.config_key} is missing under the v3 API "
                f"(create it with: ETCDCTL_API=3 etcdctl put {self.config_key} '<json>')"
            )
        return kv.value.decode(errors="replace")

    async def get_config(self) -> NetworkConfig:
        text = await self.get_config_text()
        try:
            return parse_config(text)
        except ConfigError as e:
            raise ConfigError(f"{self.config_key}: {e}") from None

    async def list_leases(self) -> tuple[list[EtcdLease], list[BadLease], int]:
        """All parsable leases, the unparsable keys, and the revision of the snapshot."""
        leases: list[EtcdLease] = []
        bad: list[BadLease] = []
        revision = 0
        # Page by page: each page is decoded while etcd prepares the next (EtcdClient.prefix_pages).
        async for kvs, rev in self.client.prefix_pages(self.subnets_prefix):
            revision = rev
            for kv in kvs:
                try:
                    leases.append(decode_lease(kv))
                except LeaseFormatError as e:
                    bad.append(BadLease(kv.key, str(e)))
        return leases, bad, revision

    async def create_lease(
        self, subnet: IPv4Network | None, attrs: LeaseAttrs, ttl: int = LEASE_TTL, subnet6: IPv6Network | None = None
    ) -> EtcdLease | None:
        """Grant an etcd lease and create the key if absent. None if another node won the race."""
        key = self.lease_key(subnet, subnet6)
        lease_id, granted = await self.client.lease_grant(ttl)
        ok, rev = await self.client.create(key, attrs.to_json(), lease_id)
        if not ok:
            await self.client.lease_revoke(lease_id)
            return None
        return EtcdLease.make(subnet, attrs, subnet6, lease_id, time.time() + granted, rev)

    async def update_lease(self, lease: Lease, attrs: LeaseAttrs, ttl: int = LEASE_TTL) -> EtcdLease:
        """Overwrite an existing lease with our attrs. A reservation stays lease-less."""
        key = self.lease_key(lease.subnet, lease.subnet6)
        if lease.reserved:
            rev = await self.client.put(key, attrs.to_json())
            return EtcdLease.make(lease.subnet, attrs, lease.subnet6, 0, None, rev)
        lease_id, granted = await self.client.lease_grant(ttl)
        rev = await self.client.put(key, attrs.to_json(), lease_id)
        return EtcdLease.make(lease.subnet, attrs, lease.subnet6, lease_id, time.time() + granted, rev)

    async def rewrite_lease(self, lease: EtcdLease, attrs: LeaseAttrs) -> EtcdLease:
        """New attrs on our key, on the etcd lease it already hangs on (so its expiry is unchanged)."""
        key = self.lease_key(lease.subnet, lease.subnet6)
        rev = await self.client.put(key, attrs.to_json(), lease.lease_id)
        return EtcdLease.make(lease.subnet, attrs, lease.subnet6, lease.lease_id, lease.expiration, rev)

    async def renew_lease(self, lease: EtcdLease, ttl: int = LEASE_TTL) -> EtcdLease | None:
        """Refresh the etcd lease behind our key. None if it no longer exists.

        A keepalive does not touch the key, so peers see no watch event for a renewal.
        """
        if lease.reserved:
            return lease
        remaining = await self.client.lease_keepalive(lease.lease_id)
        if remaining <= 0:
            return None
        expires = time.time() + remaining
        return EtcdLease.make(lease.subnet, lease.attrs, lease.subnet6, lease.lease_id, expires, lease.mod_revision)

    async def delete_lease(self, subnet: IPv4Network | None, subnet6: IPv6Network | None = None) -> int:
        return await self.client.delete(self.lease_key(subnet, subnet6))

    async def watch(self, start_revision: int) -> AsyncIterator[list[LeaseEvent | ConfigEvent]]:
        """Lease and config events from ``start_revision``, one watch on the whole prefix.

        Raises Compacted / EtcdError like the client. Keys under the prefix that are neither
        the config nor a subnet are ignored.
        """
        async for batch in self.client.watch(self.prefix.rstrip("/") + "/", start_revision):
            out: list[LeaseEvent | ConfigEvent] = []
            for ev in batch.events:
                if ev.kv.key == self.config_key:
                    text = None if ev.type == "DELETE" else ev.kv.value.decode(errors="replace")
                    out.append(ConfigEvent(text, ev.kv.mod_revision))
                elif ev.kv.key.startswith(self.subnets_prefix):
                    out.append(self._event(ev))
            yield out

    def _event(self, ev: WatchEvent) -> LeaseEvent:
        rev = ev.kv.mod_revision
        if ev.type == "DELETE":
            return LeaseEvent(ev.kv.key, None, None, rev)
        try:
            return LeaseEvent(ev.kv.key, decode_lease(ev.kv), None, rev)
        except LeaseFormatError as e:
            return LeaseEvent(ev.kv.key, None, BadLease(ev.kv.key, str(e)), rev)
