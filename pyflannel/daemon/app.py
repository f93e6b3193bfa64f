"""flanneld's life cycle: start-up in flanneld's order, then supervised root tasks.

Start-up: config (retried every second) -> interface -> VXLAN device (so the VtepMAC is
known) -> lease -> device address -> iptables rules -> subnet.env -> lease snapshot ->
first reconcile pass -> READY=1 to systemd. Then these run until SIGTERM/SIGINT:
the lease watcher, the reconciler, the lease keeper, the iptables resync loop and the
health server. If one of them dies unexpectedly the daemon exits 1 so its supervisor
restarts it; on a signal it exits 0 and leaves the data plane, the lease and subnet.env in
place, so a restart is hitless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from pyflannel.adapters import sdnotify
from pyflannel.adapters.etcd import EtcdClient, EtcdError, TLSConfig
from pyflannel.adapters.files import atomic_write, read_text
from pyflannel.adapters.iptables import IptablesError, RuleManager, supports_random_fully
from pyflannel.adapters.netlink import Netlink, NetlinkThread
from pyflannel.adapters.registry import SubnetRegistry
from pyflannel.core.backends import vxlan
from pyflannel.core.config import NetworkConfig, check_backend_type, parse_config
from pyflannel.core.errors import ConfigError, FlannelError, OutOfSubnets, SubnetEnvError
from pyflannel.core.flags import Options
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData
from pyflannel.core.model import VxlanLink
from pyflannel.core.rules import ChainSpec, forward_chain, masq_chain
from pyflannel.core.subnet_env import SubnetEnv, parse_env_text, previous_subnets
from pyflannel.daemon.iface import Uplink, select_uplink
from pyflannel.daemon.lease_keeper import LeaseKeeper
from pyflannel.daemon.metrics import DaemonMetrics, status_path
from pyflannel.daemon.reconciler import Reconciler
from pyflannel.daemon.watcher import LeaseWatcher

log = logging.getLogger("pyflannel.flanneld")


class Fatal(FlannelError):
    """Stop the daemon with exit status 1 and this message."""


@dataclass
class Readiness:
    lease: bool = False
    rules: bool = False
    subnet_file: bool = False
    in_sync: bool = False

    def missing(self) -> list[str]:
        names = {"lease": "no subnet lease", "rules": "iptables rules not installed",
                 "subnet_file": "subnet file not written", "in_sync": "kernel does not match the leases"}
        return [msg for k, msg in names.items() if not getattr(self, k)]


class Daemon:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.ready = Readiness()
        # Reconcile-duration histogram and <subnet-file dir>/pyflannel-status.json (flannelctl status).
        self.metrics = DaemonMetrics(status_path(opts.subnet_file))
        tls = None
        if opts.etcd_cafile or opts.etcd_certfile:
            tls = TLSConfig(opts.etcd_cafile or None, opts.etcd_certfile or None, opts.etcd_keyfile or None)
        else:
            log.warning("etcd connection is not secured with TLS (no -etcd-certfile/-etcd-keyfile)")
        endpoints = [e for e in opts.etcd_endpoints.split(",") if e.strip()]
        self.client = EtcdClient(endpoints, tls=tls, username=opts.etcd_username or None,
                                 password=opts.etcd_password or None)
        self.registry = SubnetRegistry(self.client, opts.etcd_prefix)
        self.nl = NetlinkThread()
        self.rules = RuleManager()
        self.config: NetworkConfig | None = None
        self.vopts: vxlan.VxlanOptions | None = None
        self.keeper: LeaseKeeper | None = None
        self.reconciler: Reconciler | None = None
        self.watcher: LeaseWatcher | None = None
        self.mtu = 0
        self._env_written: str | None = None
        self._rules_wake = asyncio.Event()
        self._random_fully = False
        self._t_last = time.monotonic()

    # --- start-up steps ------------------------------------------------------------------

    async def wait_for_config(self) -> NetworkConfig:
        last = ""
        n = 0
        while True:
            try:
                cfg = await self.registry.get_config()
                check_backend_type(cfg)
                return cfg
            except (ConfigError, EtcdError) as e:
                msg = str(e)
                n += 1
                # flanneld logs every second forever; log changes at once, repeats every 30 s.
                if msg != last or n % 30 == 0:
                    log.error("Couldn't fetch network config: %s", msg)
                last = msg
            await asyncio.sleep(1.0)

    def read_previous(self) -> IPv4Network | None:
        try:
            text = read_text(self.opts.subnet_file)
        except (OSError, ValueError) as e:  # e.g. its directory is a file, or it is not text
            log.warning("Ignoring previous subnet file %s: %s", self.opts.subnet_file, e)
            return None
        if text is None:
            return None
        try:
            prev, _ = previous_subnets(parse_env_text(text, self.opts.subnet_file))
        except SubnetEnvError as e:
            log.warning("Ignoring previous subnet file: %s", e)
            return None
        assert self.config is not None
        if prev is not None and not self.config.subnet_fits(prev):
            log.info("Found previously leased subnet (%s), but it is not compatible with the network config, "
                     "ignoring", prev)
            return None
        return prev

    async def acquire(self, previous: IPv4Network | None) -> Lease:
        assert self.keeper is not None and self.config is not None
        while True:
            try:
                return await self.keeper.acquire(self.config, previous)
            except OutOfSubnets as e:
                log.error("Failed to acquire lease: %s (retrying in 10s)", e)
                await asyncio.sleep(10)
            except FlannelError as e:  # etcd errors, or 10 lost races in a row: never exit for these
                log.error("Failed to acquire lease: %s (retrying in 1s)", e)
                await asyncio.sleep(1)

    def chains(self) -> list[ChainSpec]:
        assert self.config is not None and self.config.network is not None and self.keeper is not None
        lease = self.keeper.lease
        assert lease is not None
        out = []
        if self.opts.ip_masq:
            out.append(masq_chain(self.config.network, lease.subnet, self._random_fully))
        if self.opts.iptables_forward_rules:
            out.append(forward_chain(self.config.network))
        return out

    def chains_wanted(self) -> bool:
        return bool(self.opts.ip_masq or self.opts.iptables_forward_rules)

    async def ensure_rules(self, saved: str | None = None) -> None:
        chains = self.chains()
        if not chains:
            self.ready.rules = True
            return
        try:
            await asyncio.to_thread(self.rules.ensure, chains, self.opts.iptables_forward_rules, saved)
            self.ready.rules = True
        except IptablesError as e:
            self.ready.rules = False
            log.error("Failed to set up iptables rules: %s (retrying in %ds)", e, self.opts.iptables_resync)

    def write_subnet_env(self) -> None:
        assert self.config is not None and self.keeper is not None and self.keeper.lease is not None
        text = SubnetEnv(self.config.network, self.keeper.lease.subnet, self.mtu, self.opts.ip_masq).render()
        try:
            if text == self._env_written and read_text(self.opts.subnet_file) == text:
                return
            atomic_write(self.opts.subnet_file, text, 0o644)
        except (OSError, ValueError) as e:
            self.ready.subnet_file = False
            # Every reconcile pass retries; say it once per distinct error, not once per pass.
            if str(e) != getattr(self, "_env_error", None):
                log.error("Failed to write subnet file %s: %s (retrying on every resync, each %ds)",
                          self.opts.subnet_file, e, self.opts.resync_period)
            self._env_error: str | None = str(e)
            return
        if getattr(self, "_env_error", None) is not None:
            log.info("Subnet file %s can be written again", self.opts.subnet_file)
            self._env_error = None
        self._env_written = text
        self.ready.subnet_file = True
        log.info("Wrote subnet file to %s", self.opts.subnet_file)

    def on_config(self, text: str | None) -> None:
        if text is None:
            log.error("Network config %s was deleted; continuing with the running config", self.registry.config_key)
            return
        try:
            new = parse_config(text)
            check_backend_type(new)
            new_vopts = vxlan.parse_options(new.backend) if new.backend_type == "vxlan" else None
        except ConfigError as e:
            log.error("New network config %s is invalid, keeping the running one: %s", self.registry.config_key, e)
            return
        if new == self.config and new_vopts == self.vopts:
            return
        assert self.config is not None
        log.error("Network config changed (Network %s -> %s, backend %s -> %s); exiting so that the "
                  "supervisor restarts flanneld with it", self.config.network, new.network,
                  self.config.backend_type, new.backend_type)
        self.exit_code = 1
        self.stop.set()

    def on_leases_changed(self) -> None:
        if self.keeper is not None and self.watcher is not None:
            self.keeper.check_own(self.watcher.leases, self.watcher.revision)
        if self.reconciler is not None:
            self.reconciler.trigger()

    def on_lease_replaced(self, lease: Lease) -> None:
        self._rules_wake.set()
        if self.reconciler is not None:
            self.reconciler.trigger()

    def after_pass(self) -> None:
        assert self.reconciler is not None
        self.ready.in_sync = self.reconciler.stats.in_sync
        self.write_subnet_env()
        self.metrics.after_pass(self)

    async def start(self) -> None:
        opts = self.opts
        self._step("start")
        self.config = await self.wait_for_config()
        self._step("config")
        cfg = self.config
        if cfg.backend_type != vxlan.BACKEND_TYPE:
            raise Fatal(f"backend type {cfg.backend_type!r} is not supported by pyflannel yet (supported: vxlan)")
        if cfg.enable_ipv6:
            raise Fatal("EnableIPv6 is set, but IPv6 and dual-stack are not supported by pyflannel yet")
        assert cfg.network is not None
        try:
            self.vopts = vxlan.parse_options(cfg.backend)
        except ConfigError as e:
            raise Fatal(f"Error registering network: {e}") from None
        vopts = self.vopts

        def pick(n: Netlink) -> Uplink:
            return select_uplink(n.links(), n.default_route_oif(), n.route_get, opts.iface, opts.iface_regex,
                                 opts.iface_can_reach, opts.public_ip)

        uplink = await self.nl.run(pick)
        self._step("interface")
        self.mtu = vxlan.mtu_for(uplink.link.mtu, vopts)
        link = VxlanLink(vopts.device, vopts.vni, uplink.iface_addr, uplink.link.index, vopts.port, vopts.gbp,
                         vopts.learning, (vopts.mtu - 50) if vopts.mtu else None)
        protected = [a.network for a in uplink.link.addrs]
        self.keeper = LeaseKeeper(self.registry, uplink.public_ip, self.lease_attrs,
                                  opts.subnet_lease_renew_margin * 60)
        self.reconciler = Reconciler(self.nl, link, uplink.link.name, cfg.network, vopts,
                                     lambda: self.keeper.lease if self.keeper else None,
                                     lambda: self.watcher.leases if self.watcher else {},
                                     protected, self.after_pass)
        _, self._mac = await self.reconciler.ensure_device(None)
        self._step("device")
        previous = self.read_previous()
        lease = await self.acquire(previous)
        self._step("lease")
        self.ready.lease = True
        await self.nl.run(Netlink.ensure_address, self.reconciler.dev_index,
                          IPv4Interface(f"{lease.subnet.network_address}/32"))
        saved: str | None = None
        if self.chains_wanted():
            try:
                saved = await asyncio.to_thread(self.rules.save_all)
            except IptablesError as e:
                log.error("Failed to read iptables rules: %s (retrying in %ds)", e, opts.iptables_resync)
        self._random_fully = not opts.ip_masq_fully_random_disable and await asyncio.to_thread(
            supports_random_fully, saved or "")
        await self.ensure_rules(saved)
        self._step("rules")
        self.write_subnet_env()
        self._step("subnet file")
        self.watcher = LeaseWatcher(self.registry, self.on_leases_changed, self.on_config)
        if self.keeper.snapshot is not None:
            self.watcher.seed(*self.keeper.snapshot)

    def _step(self, name: str) -> None:
        now = time.monotonic()
        log.debug("start-up step %s done after %.1f ms", name, (now - self._t_last) * 1000)
        self._t_last = now

    def lease_attrs(self) -> LeaseAttrs:
        assert self.vopts is not None and self.keeper is not None
        return LeaseAttrs(public_ip=self.keeper.public_ip, backend_type=vxlan.BACKEND_TYPE,
                          backend_data=VxlanData(self.vopts.vni, self._mac).to_json())

    # --- root tasks ----------------------------------------------------------------------

    async def rules_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.opts.iptables_resync):  # not wait_for: see Reconciler.run
                    await self._rules_wake.wait()
            self._rules_wake.clear()
            await self.ensure_rules()

    async def first_sync_and_notify(self) -> None:
        assert self.watcher is not None and self.reconciler is not None
        await self.watcher.synced.wait()
        # Wake the loop and wait for its first complete pass, rather than running a pass of our own:
        # a lease event may already have started one, and two full passes at start cost twice.
        self.reconciler.trigger()
        await self.reconciler.first_pass.wait()
        if sdnotify.notify("READY=1"):
            log.info("Notified systemd: READY=1")
        log.info("Running: lease %s, %d peers", self.keeper.lease.subnet if self.keeper and self.keeper.lease
                 else "-", self.reconciler.stats.desired_peers)

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        stopper = asyncio.create_task(self.stop.wait())
        # The health server starts before the config is read, as flanneld's does, so /readyz can say
        # "waiting for the network config" instead of refusing connections.
        health: asyncio.Task[None] | None = None
        if self.opts.healthz_port:
            from pyflannel.daemon.health import serve_health

            health = asyncio.create_task(serve_health(self), name="healthz")
        try:
            starting = asyncio.create_task(self.start())
            done, _ = await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if starting not in done:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("Exiting cleanly...")
                return self.exit_code
            starting.result()
            assert self.watcher and self.reconciler and self.keeper
            tasks = {
                asyncio.create_task(self.watcher.run(), name="watcher"),
                asyncio.create_task(self.reconciler.run(self.opts.resync_period), name="reconciler"),
                asyncio.create_task(self.keeper.run(lambda: self.config, self.on_lease_replaced),  # type: ignore
                                    name="lease-keeper"),
                asyncio.create_task(self.rules_loop(), name="iptables"),
                asyncio.create_task(self.first_sync_and_notify(), name="first-sync"),
            }
            if health is not None:
                tasks.add(health)
            while True:
                done, _ = await asyncio.wait(tasks | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                crashed = [t for t in done if t is not stopper and (t.cancelled() or t.exception())]
                for t in done:
                    tasks.discard(t)
                if crashed:
                    for t in crashed:
                        log.error("task %s died: %r", t.get_name(), t.exception() if not t.cancelled() else "cancelled")
                    self.exit_code = 1
                    break
                if stopper in done:
                    break
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("Exiting cleanly...")
            return self.exit_code
        except Fatal as e:
            log.error("%s", e)
            return 1
        finally:
            stopper.cancel()
            if health is not None and not health.done():
                health.cancel()
                await asyncio.gather(health, return_exceptions=True)
            await self.client.close()
            self.nl.close()

    def _on_signal(self, sig: int) -> None:
        log.info("Received %s, shutting down (the data plane stays in place)", signal.Signals(sig).name)
        self.stop.set()
        # A second signal kills at once, as with flanneld.
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)


def run(opts: Options) -> int:
    return asyncio.run(Daemon(opts).main())

