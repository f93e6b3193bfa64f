"""A throwaway flannel cluster built from network namespaces, shared by ``make demo`` and the root tests.

Why this exists
===============
flanneld only shows what it does when several nodes, an etcd and some pods talk to each other over a real
kernel: vxlan devices, per-peer route + neigh + fdb entries, iptables chains, a pod bridge.  Virtual machines
are slow and hard to clean; network namespaces give each simulated host its own interfaces, routes, sysctls
and netfilter tables for a few milliseconds each, and disappear completely when deleted.  The demo and the
netns test tier need exactly the same topology, so it is built in one place (this module) instead of twice.

Topology (``prefix`` defaults to ``pfl``)::

    {prefix}-lan    the LAN "switch": bridge br-lan 198.18.0.1/24, etcd listens on :2379, ip_forward=0
      veth-n1 ----- eth0 198.18.0.11/24  {prefix}-n1   ip_forward=1, default via 198.18.0.1
      veth-n2 ----- eth0 198.18.0.12/24  {prefix}-n2     docker0 = FLANNEL_SUBNET (e.g. 100.64.52.1/24)
      ...                                                  veth1 ---- eth0 100.64.52.2  {prefix}-n1p1
                                                           veth2 ---- eth0 100.64.52.3  {prefix}-n1p2

Safety rules the builder enforces, because it runs as root on a developer's machine:

* Only the root namespace's list of *named* namespaces is changed (create/delete ``{prefix}-*``).  Every
  link, address, route and sysctl is written inside a namespace this module created, through
  ``IPRoute(netns=..., flags=0)`` (``flags=0``: pyroute2 0.9 would otherwise silently create a missing
  namespace) or ``ip netns exec``.
* Addresses come only from 198.18.0.0/15 (node LAN) and 100.64.0.0/10 (pods); :meth:`Cluster.ping` refuses
  anything else.  IPv6 is disabled in every namespace so no link-local/multicast chatter is generated.
  Child processes get an environment without ``*_proxy`` variables so etcdctl/httpx never dial a proxy.
* :meth:`Cluster.down` and :func:`destroy_prefix` are idempotent and work from whatever is left: they kill
  every process found in the prefix's namespaces (``ip netns pids``; SIGTERM, then SIGKILL, signalled through
  a pidfd after re-checking that the pid still lives in that namespace), then delete the namespaces, pods
  first.  Deleting a namespace destroys its veths, bridges, vxlan devices and iptables rules with it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute, netns

if TYPE_CHECKING:
    from support.etcd import EtcdServer

log = logging.getLogger(__name__)

LAN_BRIDGE = "br-lan"
LAN_GATEWAY = "198.18.0.1"
LAN_PREFIXLEN = 24
LAN_MTU = 1500
NODE_IFACE = "eth0"
POD_BRIDGE = "docker0"
ETCD_CLIENT_PORT = 2379
ETCD_ENDPOINT = f"http://{LAN_GATEWAY}:{ETCD_CLIENT_PORT}"
CONFIG_KEY = "/coreos.com/network/config"
SUBNETS_PREFIX = "/coreos.com/network/subnets/"
VXLAN_DEVICE = "flannel.1"
MAX_NODES = 200  # node i gets 198.18.0.(10+i); stay below the broadcast address

POD_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
LAN_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
#: The only destinations this test bed may ever send traffic to.
ALLOWED_NETWORKS = (POD_RANGE, LAN_RANGE)

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,24}$")
_POD_NS_RE = re.compile(r"-n\d+p\d+$")
_NODE_NS_RE = re.compile(r"-n\d+$")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")


class ClusterError(RuntimeError):
    """The test bed could not be built, used or removed."""


class CommandError(subprocess.CalledProcessError):
    """A command inside a namespace failed; unlike its base class, ``str()`` shows the namespace and stderr."""

    def __init__(self, ns: str, proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(proc.returncode, proc.args, proc.stdout, proc.stderr)
        self.ns = ns

    def __str__(self) -> str:
        argv = self.cmd[4:] if isinstance(self.cmd, list) else self.cmd
        err = (self.stderr or "").strip() or (self.output or "").strip()
        return f"in netns {self.ns}: {argv!r} exited {self.returncode}: {err[-800:]}"


@dataclass(eq=False)
class Node:
    """One simulated host: its namespace, LAN address and a directory for its subnet file and logs."""

    name: str  # "n1"
    index: int  # 1
    ns: str  # "{prefix}-n1"
    lan_ip: str  # "198.18.0.11"
    dir: Path  # workdir/n1
    pods: list[Pod] = field(default_factory=list, repr=False)

    @property
    def subnet_file(self) -> Path:
        return self.dir / "subnet.env"

    @property
    def flanneld_log(self) -> Path:
        return self.dir / "flanneld.log"


@dataclass(eq=False)
class Pod:
    """A pod namespace whose eth0 hangs off the node's docker0 bridge."""

    name: str  # "n1p1"
    ns: str  # "{prefix}-n1p1"
    ip: str  # "100.64.52.2"
    gateway: str  # "100.64.52.1"
    host_ifname: str  # "veth1" (in the node namespace)
    node: Node = field(repr=False)


# --------------------------------------------------------------------------------------------------------
# Module-level helpers (no Cluster object needed)
# --------------------------------------------------------------------------------------------------------


def require_root() -> None:
    """Raise :class:`ClusterError` unless we are root and iproute2's ``ip`` is installed."""
    if os.geteuid() != 0:
        raise ClusterError("the netns test bed needs root (it creates network namespaces)")
    if shutil.which("ip") is None:
        raise ClusterError("iproute2's `ip` command is not installed")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for processes started in the test bed: ours minus proxies and ETCD*, plus ``extra``.

    Proxies would make etcdctl (gRPC) or httpx dial an address outside the test bed; a stray
    ``ETCDCTL_ENDPOINTS`` would fight with the ``--endpoints`` flag.
    """
    env = {
        k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS and not k.startswith(("ETCD_", "ETCDCTL_"))
    }
    if extra:
        env.update(extra)
    return env


def check_destination(dst: str) -> str:
    """Return ``dst`` if it lies in 100.64.0.0/10 or 198.18.0.0/15, else raise ValueError."""
    try:
        addr = ipaddress.ip_address(dst)
    except ValueError as exc:
        raise ValueError(f"not an IP address: {dst!r}") from exc
    if not any(addr in net for net in ALLOWED_NETWORKS):
        allowed = ", ".join(str(n) for n in ALLOWED_NETWORKS)
        raise ValueError(f"refusing to send traffic to {dst}: the test bed only uses {allowed}")
    return str(addr)


def parse_subnet_env(text: str) -> dict[str, str]:
    """Parse flannel's subnet file (``KEY=VALUE`` lines; blank lines and ``#`` comments ignored)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


def prefix_namespaces(prefix: str) -> list[str]:
    """Existing namespaces named ``{prefix}-*``, in teardown order: pods, then nodes, then the rest (lan)."""
    _check_prefix(prefix)

    def rank(name: str) -> tuple[int, str]:
        if _POD_NS_RE.search(name):
            return (0, name)
        if _NODE_NS_RE.search(name):
            return (1, name)
        return (2, name)

    return sorted((n for n in netns.listnetns() if n.startswith(f"{prefix}-")), key=rank)


def netns_pids(ns: str) -> list[int]:
    """Pids of the processes living in the named namespace (``ip netns pids``); [] if it is gone."""
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        return []
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit() and int(tok) != os.getpid()]


def kill_netns_processes(namespaces: Iterable[str], grace: float = 5.0) -> None:
    """SIGTERM every process in ``namespaces``, wait up to ``grace`` seconds, then SIGKILL the rest."""
    names = list(namespaces)
    victims = _collect_victims(names)
    if not victims:
        return
    log.debug("SIGTERM to %d process(es) in %s", len(victims), names)
    for pid, ident in victims:
        _signal_in_ns(pid, ident, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        victims = _collect_victims(names)
        if not victims:
            return
        time.sleep(0.1)
    for pid, ident in victims:
        log.warning("pid %d ignored SIGTERM; sending SIGKILL", pid)
        _signal_in_ns(pid, ident, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _collect_victims(names) and time.monotonic() < deadline:
        time.sleep(0.1)


def destroy_prefix(prefix: str, grace: float = 5.0) -> list[str]:
    """Kill the processes in and delete every namespace named ``{prefix}-*``; return the names deleted.

    Used by ``make demo-down`` and by test set-up to clear what a crashed run left behind.  Idempotent.
    """
    names = prefix_namespaces(prefix)
    if not names:
        return []
    kill_netns_processes(names, grace=grace)
    removed: list[str] = []
    failures: list[str] = []
    for name in names:
        try:
            netns.remove(name)
            removed.append(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append(f"{name}: {exc}")
    left = prefix_namespaces(prefix)
    if failures or left:
        raise ClusterError(f"could not delete namespaces {left}: {'; '.join(failures)}")
    log.debug("deleted namespaces %s", removed)
    return removed


def _check_prefix(prefix: str) -> None:
    # No "-" allowed: destroy_prefix("a") must never match another cluster called "a-b".
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"invalid prefix {prefix!r}: use 1-24 letters, digits or '_' (no '-')")


def _ns_ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _collect_victims(names: Sequence[str]) -> list[tuple[int, tuple[int, int]]]:
    victims: list[tuple[int, tuple[int, int]]] = []
    for name in names:
        ident = _ns_ident(f"{netns.NETNS_RUN_DIR}/{name}")
        if ident is None:
            continue
        victims.extend((pid, ident) for pid in netns_pids(name))
    return victims


def _signal_in_ns(pid: int, ident: tuple[int, int], sig: int) -> None:
    """Signal ``pid`` only if it still lives in the namespace ``ident`` (guards against pid reuse)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if _ns_ident(f"/proc/{pid}/ns/net") != ident:
            return
        signal.pidfd_send_signal(pidfd, sig)
    except OSError:
        pass
    finally:
        os.close(pidfd)


# --------------------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------------------


class Cluster:
    """A LAN namespace, ``nodes`` node namespaces and, on demand, pods, etcd and flanneld processes.

    Constructing the object touches nothing; :meth:`up` builds, :meth:`down` removes.  ``with Cluster() as c``
    does both.  A Cluster built with the same prefix/nodes/workdir can drive an already running test bed
    (that is how ``demo status`` works).
    """

    etcd_endpoint = ETCD_ENDPOINT

    def __init__(
        self,
        prefix: str = "pfl",
        nodes: int = 3,
        workdir: Path | None = None,
        *,
        flanneld: Path | str | None = None,
    ) -> None:
        _check_prefix(prefix)
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}, not {nodes}")
        self.prefix = prefix
        self.lan_ns = f"{prefix}-lan"
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pyflannel-{prefix}-")) if workdir is None else workdir
        self.flanneld = Path(flanneld) if flanneld else Path(sys.executable).parent / "flanneld"
        self.nodes: list[Node] = [
            Node(
                name=f"n{i}",
                index=i,
                ns=f"{prefix}-n{i}",
                lan_ip=f"198.18.0.{10 + i}",
                dir=self.workdir / f"n{i}",
            )
            for i in range(1, nodes + 1)
        ]
        self.etcd: EtcdServer | None = None
        self._owner_pid = os.getpid()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._flanneld: dict[str, subprocess.Popen[bytes]] = {}

    # ---- context manager -------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # ---- lookup ----------------------------------------------------------------------------------------

    @property
    def pods(self) -> list[Pod]:
        return [pod for node in self.nodes for pod in node.pods]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def namespaces(self) -> list[str]:
        """This cluster's namespaces that currently exist, in teardown order."""
        return prefix_namespaces(self.prefix)

    # ---- build / tear down -----------------------------------------------------------------------------

    def up(self) -> Cluster:
        """Create the LAN and the node namespaces.  On any failure everything is removed again."""
        require_root()
        leftovers = self.namespaces()
        if leftovers:
            # Not rolled back: they are not ours (another running cluster, or a crashed run's leftovers).
            raise ClusterError(
                f"namespaces {leftovers} already exist; remove them first "
                f"(support.cluster.destroy_prefix({self.prefix!r}))"
            )
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._create_netns(self.lan_ns, ip_forward=False)
            with IPRoute(netns=self.lan_ns, flags=0) as ipr:
                # No snooping: the LAN switch needs no multicast state, and without it it joins no group.
                ipr.link("add", ifname=LAN_BRIDGE, kind="bridge", br_mcast_snooping=0)
                (br,) = ipr.link_lookup(ifname=LAN_BRIDGE)
                ipr.link("set", index=br, mtu=LAN_MTU)
                ipr.addr("add", index=br, address=LAN_GATEWAY, prefixlen=LAN_PREFIXLEN)
                ipr.link("set", index=br, state="up")
            for node in self.nodes:
                self._build_node(node)
        except BaseException:
            log.error("cluster %s: up() failed; tearing down what was built", self.prefix)
            self.down()
            raise
        log.info("cluster %s is up: %d nodes on %s/%d", self.prefix, len(self.nodes), LAN_GATEWAY, LAN_PREFIXLEN)
        return self

    def _create_netns(self, name: str, *, ip_forward: bool) -> None:
        netns.create(name)
        # igmp_link_local_mcast_reports=0: a Linux bridge with multicast snooping joins 224.0.0.106 (router
        # discovery) and announces it with IGMPv3 reports to 224.0.0.22; nothing but node and pod addresses may
        # appear on the test LAN, and the wireguard test checks the capture for exactly that.
        settings = [f"net.ipv4.ip_forward={int(ip_forward)}", "net.ipv4.igmp_link_local_mcast_reports=0"]
        if Path("/proc/sys/net/ipv6").exists():
            # Before any link appears, so no interface ever gets an IPv6 link-local address.
            settings += ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        self.exec(name, ["sysctl", "-q", "-w", *settings])
        with IPRoute(netns=name, flags=0) as ipr:
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo, state="up")

    def _build_node(self, node: Node) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        self._create_netns(node.ns, ip_forward=True)
        port = f"veth-{node.name}"
        with IPRoute(netns=self.lan_ns, flags=0) as ipr:
            ipr.link(
                "add",
                ifname=port,
                kind="veth",
                mtu=LAN_MTU,
                peer={"ifname": NODE_IFACE, "mtu": LAN_MTU, "net_ns_fd": node.ns},
            )
            (idx,) = ipr.link_lookup(ifname=port)
            (br,) = ipr.link_lookup(ifname=LAN_BRIDGE)
            ipr.link("set", index=idx, master=br, state="up")
        with IPRoute(netns=node.ns, flags=0) as ipr:
            (eth,) = ipr.link_lookup(ifname=NODE_IFACE)
            ipr.link("set", index=eth, mtu=LAN_MTU, state="up")
            ipr.addr("add", index=eth, address=node.lan_ip, prefixlen=LAN_PREFIXLEN)
            ipr.route("add", dst="default", gateway=LAN_GATEWAY)

    def down(self) -> None:
        """Stop every process and delete every ``{prefix}-*`` namespace.  Idempotent; safe after a failed up()."""
        if os.getpid() != self._owner_pid:
            # A forked copy of us (pyroute2 forks helpers to enter namespaces) unwinding an exception must
            # not tear down the cluster its parent is still using.
            return
        errors: list[str] = []
        for proc in self._procs:  # our own children: signal them directly, then sweep the namespaces
            if proc.poll() is None:
                proc.terminate()
        if self.etcd is not None:
            try:
                self.etcd.stop()
            except Exception as exc:  # keep tearing down; report at the end
                errors.append(f"etcd stop: {exc}")
            self.etcd = None
        try:
            destroy_prefix(self.prefix)
        except ClusterError as exc:
            errors.append(str(exc))
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        self._flanneld.clear()
        for node in self.nodes:
            node.pods.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise ClusterError(f"cluster {self.prefix}: teardown incomplete: {'; '.join(errors)}")
        log.info("cluster %s is down", self.prefix)

    # ---- processes -------------------------------------------------------------------------------------

    def exec(
        self,
        ns: str,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 30.0,
        *,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` (``ip netns exec``), capturing text output."""
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(env),
            input=input,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CommandError(ns, proc)
        return proc

    def popen(
        self, ns: str, argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in namespace ``ns`` in the background, stdout+stderr appended to ``log``.

        The process gets its own session (a Ctrl-C in the terminal does not reach it) and is stopped by
        :meth:`down`.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(env),
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    # ---- etcd ------------------------------------------------------------------------------------------

    def start_etcd(self, timeout: float = 30.0) -> EtcdServer:
        """Start etcd in the LAN namespace on :data:`ETCD_ENDPOINT` and wait until it answers."""
        from support.etcd import start_etcd  # written separately; imported only when needed

        if self.etcd is not None:
            return self.etcd
        if self.lan_ns not in netns.listnetns():
            raise ClusterError(f"namespace {self.lan_ns} does not exist: call up() first")
        data = self.workdir / "etcd"
        data.mkdir(parents=True, exist_ok=True)
        self.etcd = start_etcd(
            data,
            name=f"{self.prefix}-etcd",
            host=LAN_GATEWAY,
            client_port=ETCD_CLIENT_PORT,
            netns=self.lan_ns,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while True:
            proc = self.etcdctl("endpoint", "health", check=False, timeout=5)
            if proc.returncode == 0:
                return self.etcd
            if time.monotonic() > deadline:
                raise ClusterError(f"etcd at {ETCD_ENDPOINT} is not healthy: {proc.stderr.strip()[-400:]}")
            time.sleep(0.2)

    def detach(self) -> None:
        """Let etcd and flanneld outlive this Python process (``demo up`` leaves the cluster running).

        ``support.etcd`` kills the servers it started at interpreter exit, which is right for
        tests but not for the demo; :meth:`down` (or :func:`destroy_prefix`) still finds and stops them.
        """
        if self.etcd is None:
            return
        from support import etcd as etcd_module

        live = getattr(etcd_module, "_live", None)  # its at-exit kill list; no public switch exists yet
        if live is not None:
            live.discard(self.etcd)

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl --endpoints <etcd> <args>`` (v3 API) in the LAN namespace."""
        return self.exec(
            self.lan_ns,
            ["etcdctl", "--endpoints", ETCD_ENDPOINT, *args],
            check=check,
            timeout=timeout,
            env={"ETCDCTL_API": "3"},
        )

    def put_config(self, json_text: str) -> None:
        """Store the flannel network config at ``/coreos.com/network/config`` (etcd v3 API)."""
        json.loads(json_text)  # fail here, not in four daemons, on a typo
        self.etcdctl("put", CONFIG_KEY, json_text)

    def leases(self) -> dict[str, dict[str, Any]]:
        """The subnet leases in etcd: ``{"100.64.67.0/24": {"PublicIP": ..., "BackendData": ...}}``."""
        out = self.etcdctl("get", "--prefix", SUBNETS_PREFIX).stdout.splitlines()
        leases: dict[str, dict[str, Any]] = {}
        for key, value in zip(out[0::2], out[1::2], strict=False):
            subnet = key.removeprefix(SUBNETS_PREFIX).replace("-", "/")
            try:
                leases[subnet] = json.loads(value)
            except json.JSONDecodeError:
                leases[subnet] = {"raw": value}
        return leases

    # ---- flanneld --------------------------------------------------------------------------------------

    def start_flanneld(
        self,
        node: Node,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        binary: Path | str | None = None,
        wrapper: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Start flanneld in ``node``'s namespace, logging to ``node.dir/flanneld.log``.

        ``wrapper`` is an argv prefix run inside the namespace in front of flanneld (e.g.
        ``support.nft.hidden_iptables()``); it must exec flanneld so the pid stays flanneld's.
        """
        running = self._flanneld.get(node.name)
        if running is not None and running.poll() is None:
            raise ClusterError(f"flanneld is already running on {node.name} (pid {running.pid})")
        exe = Path(binary) if binary else self.flanneld
        if not exe.exists():
            raise ClusterError(f"flanneld executable not found: {exe}")
        argv = [
            *wrapper,
            str(exe),
            f"-etcd-endpoints={ETCD_ENDPOINT}",
            f"-iface={NODE_IFACE}",
            "-ip-masq",
            f"-subnet-file={node.subnet_file}",
            *extra_args,
        ]
        node.dir.mkdir(parents=True, exist_ok=True)
        proc = self.popen(node.ns, argv, node.flanneld_log, env={"PYTHONUNBUFFERED": "1", **(env or {})})
        self._flanneld[node.name] = proc
        log.info("%s: started flanneld (pid %d)", node.name, proc.pid)
        return proc

    def flanneld_process(self, node: Node) -> subprocess.Popen[bytes] | None:
        return self._flanneld.get(node.name)

    def stop_flanneld(self, node: Node, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` to the node's flanneld and wait; SIGKILL after ``timeout``.  Returns the exit code."""
        proc = self._flanneld.get(node.name)
        if proc is None:
            raise ClusterError(f"flanneld was not started on {node.name}")
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s: flanneld did not exit within %.0fs of signal %d; killing", node.name, timeout, sig)
                proc.kill()
        return proc.wait(timeout=5)

    def read_subnet_env(self, node: Node) -> dict[str, str]:
        """The node's subnet file, parsed now (FileNotFoundError if flanneld has not written it)."""
        return parse_subnet_env(node.subnet_file.read_text())

    def wait_subnet_env(self, node: Node, timeout: float = 30.0, subnet_key: str = "FLANNEL_SUBNET") -> dict[str, str]:
        """Wait until flanneld has written the node's subnet file (with ``subnet_key``: FLANNEL_IPV6_SUBNET on
        an IPv6-only network) and return it parsed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                env = self.read_subnet_env(node)
            except FileNotFoundError:
                env = {}
            if subnet_key in env and "FLANNEL_MTU" in env:
                return env
            proc = self._flanneld.get(node.name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"{node.name}: flanneld exited with {proc.returncode} before writing {node.subnet_file}\n"
                    f"{log_tail(node.flanneld_log)}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name}: no {node.subnet_file} with {subnet_key} after {timeout:.0f}s\n"
                                   f"{log_tail(node.flanneld_log)}")
            time.sleep(0.1)

    def peer_routes(self, node: Node) -> list[str] | None:
        """Destinations of the main-table routes via flannel.1 in the node, or None if there is no flannel.1."""
        with IPRoute(netns=node.ns, flags=0) as ipr:
            found = ipr.link_lookup(ifname=VXLAN_DEVICE)
            if not found:
                return None
            routes = ipr.route("dump", table=254, oif=found[0])
            return sorted(f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}" for r in routes)

    # ---- pods ------------------------------------------------------------------------------------------

    def add_pods(self, node: Node, count: int = 2) -> list[Pod]:
        """Give ``node`` ``count`` more pods on a docker0 bridge that uses the node's subnet file."""
        env = self.read_subnet_env(node)
        gw_if = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"])
        mtu = int(env["FLANNEL_MTU"])
        if not gw_if.network.subnet_of(POD_RANGE):
            raise ClusterError(f"{node.name}: FLANNEL_SUBNET {gw_if} is outside {POD_RANGE}")
        net = gw_if.network
        with IPRoute(netns=node.ns, flags=0) as ipr:
            if not ipr.link_lookup(ifname=POD_BRIDGE):
                ipr.link("add", ifname=POD_BRIDGE, kind="bridge")
                (br,) = ipr.link_lookup(ifname=POD_BRIDGE)
                ipr.link("set", index=br, mtu=mtu)
                ipr.addr("add", index=br, address=str(gw_if.ip), prefixlen=net.prefixlen)
                ipr.link("set", index=br, state="up")
        new: list[Pod] = []
        for _ in range(count):
            j = len(node.pods) + 1
            ip = net.network_address + 1 + j
            if ip not in net or ip == net.broadcast_address or ip == gw_if.ip:
                raise ClusterError(f"{node.name}: no address left in {net} for pod {j}")
            pod = Pod(
                name=f"{node.name}p{j}",
                ns=f"{self.prefix}-{node.name}p{j}",
                ip=str(ip),
                gateway=str(gw_if.ip),
                host_ifname=f"veth{j}",
                node=node,
            )
            self._build_pod(pod, prefixlen=net.prefixlen, mtu=mtu)
            node.pods.append(pod)
            new.append(pod)
        return new

    def _build_pod(self, pod: Pod, *, prefixlen: int, mtu: int) -> None:
        self._create_netns(pod.ns, ip_forward=False)
        with IPRoute(netns=pod.node.ns, flags=0) as ipr:
            ipr.link(
                "add",
                ifname=pod.host_ifname,
                kind="veth",
                mtu=mtu,
                peer={"ifname": "eth0", "mtu": mtu, "net_ns_fd": pod.ns},
            )
            (idx,) = ipr.link_lookup(ifname=pod.host_ifname)
            (br,) = ipr.link_lookup(ifname=POD_BRIDGE)
            ipr.link("set", index=idx, master=br, state="up")
        with IPRoute(netns=pod.ns, flags=0) as ipr:
            (eth,) = ipr.link_lookup(ifname="eth0")
            ipr.link("set", index=eth, state="up")
            ipr.addr("add", index=eth, address=pod.ip, prefixlen=prefixlen)
            ipr.route("add", dst="default", gateway=pod.gateway)

    # ---- probes ----------------------------------------------------------------------------------------

    def ping(
        self,
        pod_or_ns: Pod | Node | str,
        dst_ip: str,
        count: int = 1,
        timeout: float = 2,
        interval: float | None = None,
    ) -> bool:
        """True if ``ping -c count -W timeout dst_ip`` inside the pod/node/namespace gets a reply."""
        dst = check_destination(dst_ip)
        ns = pod_or_ns if isinstance(pod_or_ns, str) else pod_or_ns.ns
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", f"{timeout:g}"]
        if interval is not None:
            argv += ["-i", f"{interval:g}"]
        argv.append(dst)
        budget = timeout + count * (interval if interval is not None else 1.0) + 10
        proc = self.exec(ns, argv, check=False, timeout=budget)
        return proc.returncode == 0


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, indented, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"    ({path} not readable)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or f"    ({path} is empty)"
