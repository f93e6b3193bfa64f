"""flanneld's life cycle over the ports: start-up in flanneld's order, then supervised root tasks.

Start-up: health server (bound first, so a bad port fails at once) -> network config
(retried) -> backend by name -> interface -> devices (so BackendData is known) -> lease ->
device address -> lease events -> first full pass -> READY=1, with firewall rules -> subnet.env
running beside the lease events and the first pass (READY=1 waits for both).
Then these run until SIGTERM/SIGINT: the lease-event consumer, the reconciler, the kernel
notification watcher, the lease keeper and the rules loop. If one of them dies unexpectedly
the daemon exits 1 so its supervisor restarts it; on a signal it exits 0 and leaves the data
plane, the lease and subnet.env in place, so a restart is hitless.

Which subnet manager, backend, firewall and data plane run is decided by name in
``pyflannel.adapters.catalog``; this module sees only ``pyflannel.ports``.

Network config changes at runtime (docs/operators.md): a change of ``EnableNFTables`` is
applied in place (the firewall switches mode); a change of anything the lease or the devices
depend on (Network, SubnetLen/Min/Max, IPv6, Backend) restarts the daemon, after a random
per-node delay so that a cluster's nodes do not all restart at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from pyflannel.adapters import catalog, sdnotify
from pyflannel.adapters.files import atomic_write, read_text
from pyflannel.core import firewall_mode
from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import ConfigError, FlannelError, OutOfSubnets, SubnetEnvError
from pyflannel.core.flags import Options
from pyflannel.core.lease import Lease
from pyflannel.core.peers import PeerTable
from pyflannel.core.subnet_env import SubnetEnv, parse_env_text, previous_subnets
from pyflannel.daemon.iface import select_uplink
from pyflannel.daemon.metrics import DaemonMetrics, status_path
from pyflannel.daemon.reconciler import Reconciler
from pyflannel.ports import (
    Backend,
    BadLeaseSeen,
    ConfigChanged,
    Firewall,
    FirewallSpec,
    LeaseAdded,
    LeaseRemoved,
    LeaseResync,
    PreviousSubnets,
    SubnetManager,
    Uplink,
)

log = logging.getLogger("pyflannel.flanneld")

# A config change that needs a restart waits this long at most (uniformly random per node).
RESTART_SPREAD = 30.0
# The GIL switch interval while the start-up rules run on a thread (setup_rules).
SETUP_SWITCH_INTERVAL = 0.0005
# The garbage collector is off during start-up (Daemon.main) for at most this long (s).
START_GC_GRACE = 30.0
# How often an unchanged subnet.env is read back to check it is still there (s).
ENV_CHECK_INTERVAL = 5.0


class Fatal(FlannelError):
    """Stop the daemon with exit status 1 and this message."""


@dataclass
class Readiness:
    lease: bool = False
    rules: bool = False
    subnet_file: bool = False
    in_sync: bool = False

    def missing(self) -> list[str]:
        names = {"lease": "no subnet lease", "rules": "firewall rules not installed",
                 "subnet_file": "subnet file not written", "in_sync": "kernel does not match the leases"}
        return [msg for k, msg in names.items() if not getattr(self, k)]


class _Views:
    """Read-only views for the status file and /metrics (which read ``daemon.keeper``/``watcher``)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    @property
    def lease(self) -> Lease | None:
        return self.d.lease

    @property
    def reacquisitions(self) -> int:
        return int(getattr(getattr(self.d.sm, "keeper", None), "reacquisitions", 0))

    @property
    def leases(self) -> dict[str, Lease]:
        # Readiness tracks pending work through Readiness.in_sync (cleared by every lease change that
        # needs a pass, set again by the pass), not through a fingerprint of the lease map.
        return {}

    @property
    def watch_restarts(self) -> int:
        return int(getattr(self.d.sm, "watch_restarts", 0))

    @property
    def errors(self) -> int:
        return int(getattr(self.d.sm, "errors", 0))

    @property
    def resyncs(self) -> int:
        return int(getattr(self.d.firewall, "resyncs", 0))


def _fold(d: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in d.items()}


def lease_key(key: str) -> str:
    """Event keys may carry a path (etcd); the table keys leases by the subnet key alone."""
    return key.rsplit("/", 1)[-1]


class Daemon:
    def __init__(self, opts: Options, sm: SubnetManager | None = None, host: Any = None,
                 firewalls: dict[str, Firewall] | None = None, rng: random.Random | None = None,
                 backend: Backend | None = None) -> None:
        self.opts = opts
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.ready = Readiness()
        self.rng = rng or random.Random()
        # Reconcile-duration histogram and <subnet-file dir>/pyflannel-status.json (flannelctl status).
        self.metrics = DaemonMetrics(status_path(opts.subnet_file))
        self.sm: SubnetManager = sm if sm is not None else catalog.subnet_manager(opts)
        self.subnet_manager = self.sm
        self.host = host if host is not None else catalog.Host()
        self.dataplane = self.host.dataplane
        self._firewalls = firewalls
        self.firewall: Firewall | None = None
        self.config: NetworkConfig | None = None
        self._backend = backend
        self.backend: Backend | None = None
        self.uplink: Uplink | None = None
        self.table: PeerTable | None = None
        self.reconciler: Reconciler | None = None
        self.lease: Lease | None = None
        self.mtu = 0
        views = _Views(self)
        self.keeper: Any = views
        self.watcher: Any = views
        self.rules: Any = views
        self._env_written: str | None = None
        self._env_args: tuple[Any, ...] | None = None
        self._env_text = ""
        self._env_error: str | None = None
        self._env_checked = 0.0
        self._rules_wake = asyncio.Event()
        self._rejected_seen: set[tuple[str, str]] = set()
        self._bad_seen: dict[str, str] = {}
        self._restart_task: asyncio.Task[None] | None = None
        self._rules_setup: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()  # short-lived tasks, kept so they are not collected
        self._env_allowed = False  # subnet.env is written only once the start-up rules are in
        self._t_last = time.monotonic()
        self._gc_was_enabled = True

    # --- start-up steps ------------------------------------------------------------------

    async def wait_for_config(self) -> NetworkConfig:
        last = ""
        n = 0
        while True:
            try:
                return await self.sm.get_network_config()
            except (FlannelError, OSError) as e:
                msg = str(e)
                n += 1
                # flanneld logs every second forever; log changes at once, repeats every 30 s.
                if msg != last or n % 30 == 0:
                    log.error("Couldn't fetch network config: %s", msg)
                last = msg
            await asyncio.sleep(1.0)

    def read_previous(self) -> PreviousSubnets:
        try:
            text = read_text(self.opts.subnet_file)
        except (OSError, ValueError) as e:  # e.g. its directory is a file, or it is not text
            log.warning("Ignoring previous subnet file %s: %s", self.opts.subnet_file, e)
            return PreviousSubnets()
        if text is None:
            return PreviousSubnets()
        try:
            prev, prev6 = previous_subnets(parse_env_text(text, self.opts.subnet_file))
        except SubnetEnvError as e:
            log.warning("Ignoring previous subnet file: %s", e)
            return PreviousSubnets()
        assert self.config is not None
        if prev is not None and not self.config.subnet_fits(prev):
            log.info("Found previously leased subnet (%s), but it is not compatible with the network config, "
                     "ignoring", prev)
            prev = None
        return PreviousSubnets(prev, prev6)

    async def acquire(self, previous: PreviousSubnets) -> Lease:
        assert self.backend is not None and self.uplink is not None
        while True:
            try:
                return await self.sm.acquire_lease(self.backend.lease_attrs(self.uplink), previous)
            except OutOfSubnets as e:
                log.error("Failed to acquire lease: %s (retrying in 10s)", e)
                await asyncio.sleep(10)
            except ConfigError as e:  # e.g. kube mode: a podCIDR outside the Network
                raise Fatal(f"Failed to acquire lease: {e}") from None
            except (FlannelError, OSError) as e:  # etcd errors, or 10 lost races in a row: never exit
                log.error("Failed to acquire lease: %s (retrying in 1s)", e)
                await asyncio.sleep(1)

    # --- firewall ------------------------------------------------------------------------

    def firewall_spec(self) -> FirewallSpec:
        assert self.config is not None
        lease = self.lease
        random_fully = not self.opts.ip_masq_fully_random_disable
        return FirewallSpec(
            network=self.config.network if self.config.enable_ipv4 else None,
            subnet=lease.subnet if lease is not None and self.config.enable_ipv4 else None,
            network6=self.config.ipv6_network if self.config.enable_ipv6 else None,
            subnet6=lease.subnet6 if lease is not None and self.config.enable_ipv6 else None,
            ip_masq=self.opts.ip_masq,
            forward=self.opts.iptables_forward_rules,
            random_fully=random_fully,
        )

    def _firewall(self, name: str) -> Firewall:
        if self._firewalls is not None:
            return self._firewalls[name]
        return catalog.firewall(name)

    def choose_firewall(self, make_before_break: bool = False) -> Firewall:
        """iptables or nftables (docs/firewall.md); the other mode's leftovers are removed.

        ``make_before_break`` (a switch on a running node, and a start-up that may follow a run in the other
        mode): write the chosen mode's rules before removing the other's. Removed first, there is a window
        (~0.1 s) with no masquerade rule: new pod flows leave un-NATed and stay broken (their conntrack
        entry has no NAT), and once the last masquerade rule is gone the netns' conntrack stops
        altogether, so even established NATed flows go out un-NATed.
        """
        assert self.config is not None
        ipt = self._firewall("iptables")
        problem = ipt.available() if self.config.enable_nftables is not True else ""
        decision = firewall_mode.decide(self.config.enable_nftables, problem)
        if decision.unusable:
            raise Fatal(decision.reason)
        log.info("%s", decision.reason)
        chosen = ipt if decision.mode == "iptables" else self._firewall("nftables")
        if make_before_break:
            try:
                chosen.ensure(self.firewall_spec())
            except FlannelError as e:  # the rules loop retries (ensure_rules logs it)
                log.warning("Could not set up %s rules yet: %s", chosen.name, e)
        other = self._firewall(decision.other)
        if not other.available():
            try:
                other.cleanup()
            except FlannelError as e:
                log.warning("Could not remove %s state: %s", other.name, e)
        return chosen

    def rules_wanted(self) -> bool:
        return bool(self.opts.ip_masq or self.opts.iptables_forward_rules)

    async def ensure_rules(self, force: bool = False) -> None:
        if not self.rules_wanted() or self.firewall is None:
            self.ready.rules = True
            return
        fw, spec = self.firewall, self.firewall_spec()
        try:
            if force:
                await asyncio.to_thread(fw.ensure, spec)
            else:
                missing = await asyncio.to_thread(fw.missing, spec)
                if missing:
                    log.info("Some %s rules are missing (%s); recreating them", fw.name, "; ".join(missing[:3]))
                    await asyncio.to_thread(fw.ensure, spec)
            if not self.ready.rules and not force:
                log.info("%s rules are in place again", fw.name)
            self.ready.rules = True
        except FlannelError as e:
            if self.ready.rules or force:
                log.error("Failed to set up %s rules: %s (retrying every %ds)", fw.name, e,
                          self.opts.iptables_resync)
            self.ready.rules = False

    async def rules_loop(self) -> None:
        if self._rules_setup is not None:
            await self._rules_setup  # the start-up rules first (a failure there stops the daemon)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.opts.iptables_resync):  # not wait_for: see Reconciler.run
                    await self._rules_wake.wait()
            force = self._rules_wake.is_set()
            self._rules_wake.clear()
            await self.ensure_rules(force=force)
            # Backends with state outside the kernel objects (the WireGuard key file) check it on this
            # short period rather than on the full resync: a replaced key is published within seconds.
            refresh = getattr(self.backend, "check_key", None)
            if refresh is not None:
                try:
                    await refresh()
                except (FlannelError, OSError) as e:
                    log.warning("Could not re-check the backend's key: %s", e)
            # A subnet.env that could not be written is retried here too: with notification-driven passes,
            # a quiet node may not run a reconcile pass (which also writes it) for a whole resync period.
            if self.lease is not None:
                self.write_subnet_env()
            self.metrics.flush_status(self)

    # --- subnet.env ----------------------------------------------------------------------

    def write_subnet_env(self) -> None:
        assert self.config is not None and self.lease is not None
        if not self._env_allowed:
            return
        cfg, lease = self.config, self.lease
        args = (cfg.network if cfg.enable_ipv4 else None, lease.subnet if cfg.enable_ipv4 else None,
                self.mtu, self.opts.ip_masq,
                cfg.ipv6_network if cfg.enable_ipv6 else None, lease.subnet6 if cfg.enable_ipv6 else None)
        # This runs after every reconcile pass; render the text only when what goes into it changed.
        if args != self._env_args:
            self._env_args, self._env_text = args, SubnetEnv(*args).render()
        text = self._env_text
        try:
            if text == self._env_written:
                # Unchanged: look at the file itself only now and then (someone may have deleted it), not
                # after every reconcile pass.
                now = time.monotonic()
                if now - self._env_checked < ENV_CHECK_INTERVAL:
                    return
                self._env_checked = now
                if read_text(self.opts.subnet_file) == text:
                    return
            atomic_write(self.opts.subnet_file, text, 0o644)
        except (OSError, ValueError) as e:
            self.ready.subnet_file = False
            if str(e) != self._env_error:  # once per distinct error, not once per pass
                log.error("Failed to write subnet file %s: %s (retrying after every reconcile pass)",
                          self.opts.subnet_file, e)
            self._env_error = str(e)
            return
        if self._env_error is not None:
            log.info("Subnet file %s can be written again", self.opts.subnet_file)
            self._env_error = None
        self._env_written = text
        self.ready.subnet_file = True
        log.info("Wrote subnet file to %s", self.opts.subnet_file)

    # --- events ----------------------------------------------------------------------------

    def on_config(self, text: str | None) -> None:
        where = getattr(self.sm, "config_key", "network config")
        if text is None:
            log.error("Network config %s was deleted; continuing with the running config", where)
            return
        try:
            new = parse_config(text)
            catalog.check_backend(new)
        except ConfigError as e:
            log.error("New network config %s is invalid, keeping the running one: %s", where, e)
            return
        cur = self.config
        assert cur is not None
        # Backend keys are case-insensitive, as Go decodes them: {"type": "vxlan"} is the same backend.
        same_backend = _fold(new.backend) == _fold(cur.backend)
        if new == cur and same_backend:
            return
        if replace(new, enable_nftables=cur.enable_nftables) == cur and same_backend:
            log.info("Network config changed EnableNFTables (%s -> %s); switching firewall mode in place",
                     cur.enable_nftables, new.enable_nftables)
            self.config = new
            setup = self._rules_setup
            if setup is not None and not setup.done():
                # The start-up rules are still being written (on a thread, from the old config): switch
                # once they are, so that the mode in force ends up the one the new config asks for.
                async def after_setup() -> None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(setup)
                    self._switch_firewall(cur)

                self._pending.add(t := asyncio.create_task(after_setup(), name="firewall-switch"))
                t.add_done_callback(self._pending.discard)
                return
            self._switch_firewall(cur)
            return
        if self._restart_task is not None:
            return
        delay = self.rng.uniform(0, RESTART_SPREAD)
        log.warning("Network config changed (Network %s -> %s, backend %s -> %s); restarting in %.1fs "
                    "(a random delay, so that nodes do not all restart at once)", cur.network, new.network,
                    cur.backend_type, new.backend_type, delay)

        async def later() -> None:
            await asyncio.sleep(delay)
            log.error("Exiting so that the supervisor restarts flanneld with the new network config")
            self.exit_code = 1
            self.stop.set()

        self._restart_task = asyncio.create_task(later(), name="config-restart")

    def _switch_firewall(self, previous: NetworkConfig) -> None:
        """EnableNFTables changed: the new mode's rules first, then the other's removed (make-before-break)."""
        try:
            self.firewall = self.choose_firewall(make_before_break=self.rules_wanted())
        except Fatal as e:
            log.error("%s; keeping the %s rules", e, self.firewall.name if self.firewall else "current")
            self.config = previous
            return
        self._rules_wake.set()

    def _note_rejected(self, keys: Iterable[str]) -> None:
        assert self.table is not None
        verdicts = self.table.verdicts
        new = []
        for key in keys:
            v = verdicts.get(key)
            if v is not None and v.rejected and (key, v.rejected) not in self._rejected_seen:
                self._rejected_seen.add((key, v.rejected))
                new.append((key, v.rejected))
        for key, why in sorted(new):  # ``keys`` is a set: log in an order that does not depend on hashing
            log.warning("Ignoring subnet lease %s: %s", key, why)

    async def consume_events(self) -> None:
        assert self.table is not None and self.reconciler is not None
        table, rec = self.table, self.reconciler
        async for batch in self.sm.lease_events():
            changed: set[str] = set()
            resync = False
            for ev in batch:
                if isinstance(ev, LeaseAdded):
                    changed |= table.put(lease_key(ev.key), ev.lease)
                elif isinstance(ev, LeaseRemoved):
                    changed |= table.remove(lease_key(ev.key))
                elif isinstance(ev, LeaseResync):
                    before = len(table.leases)
                    changed |= table.replace_all((le.key_name, le) for le in ev.leases)
                    if rec.first_pass.is_set():
                        log.info("lease resync: %d leases (was %d), %d changed", len(table.leases), before,
                                 len(changed))
                    resync = True
                elif isinstance(ev, BadLeaseSeen):
                    if self._bad_seen.get(ev.key) != ev.reason:
                        self._bad_seen[ev.key] = ev.reason
                elif isinstance(ev, ConfigChanged):
                    self.on_config(ev.text)
            self._note_rejected(changed)
            if changed or resync:
                self.ready.in_sync = False  # until the pass that applies it
            if resync:
                rec.mark(changed)
                rec.request_full("lease stream resync")
            else:
                await rec.apply_now(changed)
            self.synced.set()

    def on_lease_replaced(self, lease: Lease) -> None:
        assert self.table is not None and self.reconciler is not None
        old, self.lease = self.lease, lease
        if old is not None and (old.subnet, old.subnet6) != (lease.subnet, lease.subnet6):
            log.warning("Subnet changed from %s to %s", old.name, lease.name)
            self._rules_wake.set()
            self.reconciler.mark(self.table.set_own(lease))
            self.reconciler.request_full("own lease changed")

    def after_pass(self) -> None:
        assert self.reconciler is not None
        self.ready.in_sync = self.reconciler.stats.in_sync
        if self.lease is not None:
            self.write_subnet_env()
        self.metrics.after_pass(self)

    # --- start ---------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        now = time.monotonic()
        log.debug("start-up step %s done after %.1f ms", name, (now - self._t_last) * 1000)
        self._t_last = now

    async def find_uplink(self) -> Uplink:
        opts = self.opts

        want6 = self.config is not None and self.config.enable_ipv6
        v6_only = self.config is not None and self.config.ipv6_only

        def pick(n: Any) -> Uplink:
            from pyflannel.daemon.iface import read_v6_addrs, select_v6, usable_v6

            if v6_only:  # the link may have no IPv4 address; PublicIP is not published (issue 13)
                return pick6(n)
            up = select_uplink(n.links(), n.default_route_oif(), n.route_get, opts.iface, opts.iface_regex,
                               opts.iface_can_reach, opts.public_ip)
            nets: list[IPv4Network | IPv6Network] = [a.network for a in up.link.addrs]
            addr6 = pub6 = None
            if want6:
                # EnableIPv6: the v6 address of the same uplink, never a temporary/deprecated/tentative one
                # (flannel #2293); -public-ipv6 wins for the published PublicIPv6.
                addrs6 = read_v6_addrs(up.link.index)
                addr6, pub6 = select_v6(addrs6, up.link.name, opts.public_ipv6)
                log.info("Using interface with name %s and v6 address %s", up.link.name, addr6)
                nets.extend(IPv6Network(f"{a.ip}/{a.prefixlen}", strict=False) for a in addrs6
                            if usable_v6(a) and not a.ip.is_link_local)
            return Uplink(up.link.name, up.link.index, up.link.mtu, up.iface_addr, up.public_ip,
                          addr6, pub6, tuple(nets))

        def pick6(n: Any) -> Uplink:
            from pyflannel.daemon.iface import default_route_oif6, read_v6_addrs, select_uplink6, select_v6, usable_v6

            link = select_uplink6(n.links(), read_v6_addrs, default_route_oif6(), n.default_route_oif(), opts.iface,
                                  opts.iface_regex, opts.public_ipv6, opts.iface_can_reach)
            addrs6 = read_v6_addrs(link.index)
            addr6, pub6 = select_v6(addrs6, link.name, opts.public_ipv6)
            log.info("Using interface with name %s and v6 address %s (IPv6-only network)", link.name, addr6)
            nets: list[IPv4Network | IPv6Network] = [a.network for a in link.addrs]
            nets.extend(IPv6Network(f"{a.ip}/{a.prefixlen}", strict=False) for a in addrs6
                        if usable_v6(a) and not a.ip.is_link_local)
            return Uplink(link.name, link.index, link.mtu, None, None, addr6, pub6, tuple(nets))

        return await self.dataplane.query(pick)

    async def start(self) -> None:
        self._step("start")
        self.config = cfg = await self.wait_for_config()
        self._step("config")
        try:
            self.backend = backend = self._backend or catalog.backend(cfg, self.host, self.sm)
        except ConfigError as e:
            raise Fatal(str(e)) from None
        self.uplink = uplink = await self.find_uplink()
        self._step("interface")
        try:
            await backend.setup(uplink)
        except ConfigError as e:
            raise Fatal(f"Error registering network: {e}") from None
        self.mtu = backend.mtu
        self._step("device")
        previous = self.read_previous()
        self.lease = lease = await self.acquire(previous)
        self._step("lease")
        self.ready.lease = True
        await backend.on_lease(lease)
        networks: list[IPv4Network | IPv6Network] = []
        if cfg.enable_ipv4 and cfg.network is not None:
            networks.append(cfg.network)
        if cfg.enable_ipv6 and cfg.ipv6_network is not None:
            networks.append(cfg.ipv6_network)
        protected = [n for n in uplink.networks if not any(n.version == m.version and n.subnet_of(m)  # type: ignore[arg-type]
                                                           for m in networks)]

        def entries_for(le: Lease) -> tuple[tuple[Any, ...], str]:
            pe = backend.peer_entries(le)
            return pe.entries, pe.rejected

        self.table = PeerTable(networks, protected, lease.primary.prefixlen, backend.backend_type, entries_for, lease)
        self.reconciler = Reconciler(backend, self.dataplane, self.table, lambda: self.lease, self.after_pass,
                                     self.rng)
        # The firewall rules are set up while the peer table fills and the first pass runs, as flanneld's
        # goroutines do: iptables is a child process per call (about 0.1 s at start), and the peers' kernel
        # entries need nothing from it. subnet.env still waits for the rules (``setup_rules``), so what
        # reads it (docker, the CNI plugin) never starts before the masquerade rules exist.
        self._rules_setup = asyncio.create_task(self.setup_rules(), name="rules-setup")

    async def setup_rules(self) -> None:
        """The firewall at start: choose the mode, write its rules, then write subnet.env."""
        # This thread's work is many short waits for iptables children while the event loop's thread builds
        # the peer table (pure Python): at the default 5 ms switch interval each hand-back of the GIL waits
        # that long, and the rules took 0.9 s instead of 0.1 s at 5000 peers. A shorter interval while it runs.
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SETUP_SWITCH_INTERVAL)
        try:
            if self.rules_wanted():
                self.firewall = await asyncio.to_thread(self.choose_firewall, True)
            await self.ensure_rules(force=True)
        finally:
            sys.setswitchinterval(previous)
        self._step("rules")
        self._env_allowed = True
        self.write_subnet_env()
        self._step("subnet file")
        if self.reconciler is not None and self.reconciler.stats.passes:
            # The first pass may have finished first and written the status file with "rules not installed";
            # a readiness change is written at once (DaemonMetrics.after_pass), so flannelctl sees it now.
            self.metrics.after_pass(self)

    def lease_attrs(self) -> Any:
        assert self.backend is not None and self.uplink is not None
        return self.backend.lease_attrs(self.uplink)

    # --- root tasks ----------------------------------------------------------------------

    async def first_sync_and_notify(self) -> None:
        assert self.reconciler is not None
        await self.synced.wait()
        # The first pass is a full one by construction (need_full starts True); just make sure it runs.
        self.reconciler.trigger()
        await self.reconciler.first_pass.wait()
        if self._rules_setup is not None:
            await self._rules_setup  # READY=1 means the rules are in and subnet.env is written too
        # Everything built so far (the peer table, the kernel mirror, imported modules) lives as long as the
        # daemon: moving it out of the collector's generations keeps each later collection as small as one
        # event's garbage, instead of growing with the number of peers.
        gc.freeze()
        self._collect_again()
        if sdnotify.notify("READY=1"):
            log.info("Notified systemd: READY=1")
        log.info("Running: lease %s, %d peers", self.lease.name if self.lease else "-",
                 self.reconciler.stats.desired_peers)

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.synced = asyncio.Event()
        # Start-up allocates the whole peer table and kernel mirror at once: at 5000 peers the collector ran
        # 256 times over it (56 ms of a 1.6 s join), though nearly all of it lives as long as the daemon. It is off
        # until the first pass (then gc.freeze moves it all out of reach), and back on after START_GC_GRACE
        # at the latest, so a start that waits long (etcd down) still collects its garbage.
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        gc_timer = loop.call_later(START_GC_GRACE, self._collect_again)
        stopper = asyncio.create_task(self.stop.wait())
        health: Any = None
        tasks: set[asyncio.Task[Any]] = set()
        try:
            # The health server binds before the config is read, as flanneld's does, so /readyz can say
            # "waiting for the network config" and a port that cannot be bound fails at once.
            if self.opts.healthz_port:
                from pyflannel.daemon.health import start_health

                try:
                    health = await start_health(self)
                except OSError as e:
                    raise Fatal(str(e)) from None
            starting = asyncio.create_task(self.start())
            done, _ = await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if starting not in done:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("Exiting cleanly...")
                return self.exit_code
            starting.result()
            assert self.reconciler is not None
            rec = self.reconciler
            tasks = {
                asyncio.create_task(self.consume_events(), name="lease-events"),
                asyncio.create_task(rec.watch_kernel(), name="kernel-notifications"),
                asyncio.create_task(rec.run(self.opts.resync_period), name="reconciler"),
                asyncio.create_task(self.sm.keep_lease(self.lease_attrs, self.on_lease_replaced), name="lease"),
                asyncio.create_task(self.rules_loop(), name="rules"),
                asyncio.create_task(self.first_sync_and_notify(), name="first-sync"),
            }
            if self._rules_setup is not None:
                tasks.add(self._rules_setup)
            if health is not None:
                tasks.add(asyncio.create_task(health.serve_forever(), name="healthz"))
            while True:
                done, _ = await asyncio.wait(tasks | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                crashed = [t for t in done if t is not stopper and (t.cancelled() or t.exception())]
                for t in done:
                    tasks.discard(t)
                fatal = [t.exception() for t in crashed if not t.cancelled() and isinstance(t.exception(), Fatal)]
                if fatal:  # e.g. neither firewall mode usable: one line, as from start()
                    log.error("%s", fatal[0])
                    self.exit_code = 1
                    break
                if crashed:
                    for t in crashed:
                        log.error("task %s died: %r", t.get_name(), t.exception() if not t.cancelled() else "cancelled")
                    self.exit_code = 1
                    break
                if stopper in done:
                    break
            log.info("Exiting cleanly...")
            return self.exit_code
        except Fatal as e:
            log.error("%s", e)
            return 1
        finally:
            gc_timer.cancel()
            self._collect_again()
            stopper.cancel()
            if self._restart_task is not None:
                tasks.add(self._restart_task)
            if self._rules_setup is not None:
                tasks.add(self._rules_setup)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            if health is not None:
                with contextlib.suppress(Exception):
                    await health.close()
            if self.backend is not None:
                with contextlib.suppress(Exception):
                    await self.backend.close()
            await self.sm.close()
            await self.dataplane.close()

    def _collect_again(self) -> None:
        if self._gc_was_enabled and not gc.isenabled():
            gc.enable()

    def _on_signal(self, sig: int) -> None:
        log.info("Received %s, shutting down (the data plane stays in place)", signal.Signals(sig).name)
        self.stop.set()
        # A second signal kills at once, as with flanneld.
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)


def run(opts: Options) -> int:
    return asyncio.run(Daemon(opts).main())

