"""The SubnetManager port on etcd v3: flannel's keyspace, 24 h leases, one long-lived watch.

This composes the pieces that know etcd: the gateway client (``etcd``), the keyspace
(``registry``), lease acquisition and renewal (``etcd_keeper``) and the snapshot-then-watch
stream (``etcd_watcher``). The daemon sees only the port: a config, our lease, and batches
of lease events that start with a LeaseResync.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from pyflannel.adapters.etcd import EtcdClient, TLSConfig
from pyflannel.adapters.etcd_keeper import LeaseKeeper
from pyflannel.adapters.etcd_watcher import LeaseWatcher
from pyflannel.adapters.registry import SubnetRegistry
from pyflannel.core.config import NetworkConfig, check_backend_type
from pyflannel.core.errors import FlannelError
from pyflannel.core.flags import Options
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.ports import LeaseEvent, PreviousSubnets

log = logging.getLogger(__name__)


def etcd_client(opts: Options) -> EtcdClient:
    """The client for flanneld's -etcd-* flags. Warns when the connection is plain HTTP."""
    endpoints = [e.strip() for e in opts.etcd_endpoints.split(",") if e.strip()]
    tls = None
    if opts.etcd_cafile or opts.etcd_certfile:
        tls = TLSConfig(opts.etcd_cafile or None, opts.etcd_certfile or None, opts.etcd_keyfile or None)
    plain = [e for e in endpoints if not e.lower().startswith("https://")]
    if plain:
        # An https:// endpoint relying on the system CA store is secured; only http:// ones are not.
        log.warning("etcd connection is not secured with TLS: %s", ", ".join(plain))
    return EtcdClient(endpoints, tls=tls, username=opts.etcd_username or None, password=opts.etcd_password or None)


class EtcdSubnetManager:
    name = "etcd"

    def __init__(self, opts: Options, client: EtcdClient | None = None) -> None:
        self.opts = opts
        self.client = client or etcd_client(opts)
        self.registry = SubnetRegistry(self.client, opts.etcd_prefix)
        self.config: NetworkConfig | None = None
        self.keeper: LeaseKeeper | None = None
        self.watcher: LeaseWatcher | None = None
        self._attrs: LeaseAttrs | None = None

    @property
    def config_key(self) -> str:
        return self.registry.config_key

    def lease_key(self, lease: Lease) -> str:
        return self.registry.lease_key(lease.subnet, lease.subnet6)

    async def get_network_config(self) -> NetworkConfig:
        cfg = await self.registry.get_config()
        check_backend_type(cfg)
        self.config = cfg
        return cfg

    async def acquire_lease(self, attrs: LeaseAttrs, previous: PreviousSubnets) -> Lease:
        assert self.config is not None, "get_network_config first"
        self._attrs = attrs
        if self.keeper is None:
            self.keeper = LeaseKeeper(self.registry, attrs.public_ip, lambda: self._current_attrs(),
                                      self.opts.subnet_lease_renew_margin * 60, public_ipv6=attrs.public_ipv6)
        return await self.keeper.acquire(self.config, previous.subnet, previous.subnet6)

    def _current_attrs(self) -> LeaseAttrs:
        assert self._attrs is not None
        return self._attrs

    async def keep_lease(self, attrs: Callable[[], LeaseAttrs], on_change: Callable[[Lease], None]) -> None:
        assert self.keeper is not None and self.config is not None
        config = self.config

        def changed(lease: Lease) -> None:
            on_change(lease)

        self.keeper.attrs = attrs
        await self.keeper.run(lambda: config, changed)

    def republish(self) -> None:
        if self.keeper is not None:
            self.keeper.republish()

    async def lease_events(self) -> AsyncIterator[list[LeaseEvent]]:
        # The watcher runs inside this generator: what one watch response produced is yielded from the task
        # that read it (a queue between two tasks cost a task switch and a waiter per event).
        pending: list[LeaseEvent] = []
        self.watcher = w = LeaseWatcher(self.registry, lambda: None, on_events=pending.extend)
        if self.keeper is not None and self.keeper.snapshot is not None:
            w.seed(*self.keeper.snapshot)
            yield self._take(pending, w)
        stream = w.stream()
        try:
            async for _ in stream:
                if pending:
                    yield self._take(pending, w)
        finally:
            await stream.aclose()
        raise FlannelError("etcd lease watch stopped")

    def _take(self, pending: list[LeaseEvent], w: LeaseWatcher) -> list[LeaseEvent]:
        batch = pending[:]
        pending.clear()
        if self.keeper is not None:
            self.keeper.check_own(w.leases, w.revision)
        return batch

    @property
    def in_sync(self) -> bool:
        w = self.watcher
        return w is not None and w.synced.is_set() and w.outage_since is None

    @property
    def lease(self) -> Lease | None:
        return self.keeper.lease if self.keeper is not None else None

    @property
    def errors(self) -> int:
        return self.watcher.errors if self.watcher is not None else 0

    @property
    def watch_restarts(self) -> int:
        return self.watcher.watch_restarts if self.watcher is not None else 0

    async def close(self) -> None:
        await self.client.close()
