"""Mixed clusters for the interop tier: pyflannel and Go flanneld v0.28.9 side by side in network namespaces.

Why this exists
===============
pyflannel claims to be a drop-in for flanneld: a cluster may mix both.  Recorded kernel state and strings
only show that we write what Go wrote once; a Go flanneld node in the same cluster shows, on every run,
that each side reads the other's etcd leases and ``subnet.env``, installs routes/neighbours/FDB entries
the other can use, and keeps them through the other's restarts and departures.

Each test gets its own namespace prefix (``pfi<hex>``) and a 3-node :class:`support.cluster.Cluster` with
real etcd; :class:`Mixed` knows which nodes run which implementation.  Needs root, the Go flanneld built
by ``make testdeps`` and the bridge netfilter sysctls (see :func:`_br_netfilter_reason`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import checks, peers
from support.cluster import Cluster, Node, destroy_prefix, prefix_namespaces
from support.etcd import use_etcd_version

CONFIG = checks.DEFAULT_CONFIG
BR_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def _br_netfilter_reason() -> str | None:
    """Go flanneld v0.28 exits at start-up ("Failed to check br_netfilter") unless this sysctl file exists.

    It exists once the br_netfilter module is loaded (built in on some kernels); the sysctl is per network
    namespace, so loading it once in the root namespace is enough.  We try ``modprobe br_netfilter`` once.
    """
    if BR_NF.exists():
        return None
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False, timeout=30)
    if BR_NF.exists():
        return None
    return f"{BR_NF} is missing and `modprobe br_netfilter` did not load it (Go flanneld refuses to start)"


def _require_env() -> Path:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "needs root and iproute2's `ip` (creates network namespaces)"
        if peers.in_ci():
            pytest.fail(f"CI must not skip: {reason}", pytrace=False)
        pytest.skip(reason)
    go = peers.require("flanneld")
    reason = _br_netfilter_reason()
    if reason is not None:
        if peers.in_ci():
            pytest.fail(f"CI must not skip: {reason}", pytrace=False)
        pytest.skip(reason)
    return go


@dataclass(eq=False)
class Mixed:
    """A running cluster plus which nodes run Go flanneld (``go``) and which pyflannel (``py``)."""

    c: Cluster
    go_binary: Path
    go_nodes: set[str] = field(default_factory=set)
    extra_args: dict[str, list[str]] = field(default_factory=dict)  # node name -> flags for either kind
    _notify: dict[str, socket.socket] = field(default_factory=dict, repr=False)

    def kind(self, node: Node) -> str:
        return "go" if node.name in self.go_nodes else "py"

    def label(self, node: Node) -> str:
        return f"{node.name}({self.kind(node)})"

    def start(self, node: Node, kind: str | None = None) -> subprocess.Popen[bytes]:
        """Start the node's daemon; ``kind`` ("go"/"py") switches the node's implementation first.

        Both implementations send systemd's READY=1 to $NOTIFY_SOCKET once they hold the lease and have
        written their rules and subnet.env; each start gets a fresh socket so :meth:`wait_ready` waits for
        this process, not the previous one.
        """
        if kind is not None:
            (self.go_nodes.add if kind == "go" else self.go_nodes.discard)(node.name)
        extra = self.extra_args.get(node.name, [])
        env = {"NOTIFY_SOCKET": str(self._notify_socket(node))}
        if self.kind(node) == "go":
            # klog to stderr (the node's flanneld.log); -v=1 adds the subnet events it handles.
            return self.c.start_flanneld(node, ["-v=1", *extra], env, binary=self.go_binary)
        return self.c.start_flanneld(node, extra, env)

    def stop(self, node: Node, sig: int = signal.SIGTERM) -> int:
        return self.c.stop_flanneld(node, sig)

    def _notify_socket(self, node: Node) -> Path:
        # A pathname AF_UNIX socket works across network namespaces (they share the filesystem).
        old = self._notify.pop(node.name, None)
        if old is not None:
            old.close()
        path = node.dir / "notify.sock"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(0.2)
        self._notify[node.name] = sock
        return path

    def wait_ready(self, node: Node, timeout: float = 30.0) -> None:
        """Wait for READY=1 from the daemon last started on ``node``; fail at once if it exits."""
        sock = self._notify[node.name]
        deadline = time.monotonic() + timeout
        while True:
            proc = self.c.flanneld_process(node)
            if proc is None or proc.poll() is not None:
                raise AssertionError(f"{self.label(node)} exited:\n{node.flanneld_log.read_text()[-2000:]}")
            try:
                if b"READY=1" in sock.recv(4096):
                    return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label(node)} sent no READY=1 within {timeout:.0f}s")

    def close(self) -> None:
        for sock in self._notify.values():
            sock.close()
        self._notify.clear()

    @property
    def py(self) -> list[Node]:
        return [n for n in self.c.nodes if self.kind(n) == "py"]

    @property
    def go(self) -> list[Node]:
        return [n for n in self.c.nodes if self.kind(n) == "go"]


@pytest.fixture
def interop_prefix() -> Iterator[str]:
    """A fresh namespace prefix; the test fails if it leaves ``{prefix}-*`` behind (removed either way)."""
    prefix = f"pfi{secrets.token_hex(2)}"
    destroy_prefix(prefix)
    yield prefix
    left = prefix_namespaces(prefix)
    destroy_prefix(prefix)
    assert not left, f"test left network namespaces behind: {left}"


@pytest.fixture
def mixed(interop_prefix: str, tmp_path: Path) -> Iterator[Callable[..., Mixed]]:
    """Factory: ``mixed(go=("n3",))`` builds 3 nodes, etcd, the vxlan config, starts every daemon and waits
    until every node's kernel matches the leases.  The cluster is torn down after the test."""
    go_binary = _require_env()
    made: list[Cluster] = []
    made_mixed: list[Mixed] = []

    def factory(
        nodes: int = 3, go: tuple[str, ...] = ("n3",), config: str = CONFIG, pods: int = 2,
        extra_args: dict[str, list[str]] | None = None, before_start: Callable[[Cluster], None] | None = None,
        etcd_version: str | None = None,
    ) -> Mixed:  # fmt: skip
        c = Cluster(prefix=interop_prefix, nodes=nodes, workdir=tmp_path / "cluster")
        made.append(c)
        c.up()
        if before_start is not None:
            before_start(c)
        if etcd_version is not None:
            peers.require(peers.ETCD_VERSIONS[etcd_version])
            with use_etcd_version(etcd_version):
                c.start_etcd()
        else:
            c.start_etcd()
        c.put_config(config)
        m = Mixed(c, go_binary, set(go), dict(extra_args or {}))
        made_mixed.append(m)
        for n in c.nodes:
            m.start(n)
        for n in c.nodes:
            m.wait_ready(n)
        checks.wait_converged(c, timeout=30)
        for n in c.nodes:
            c.add_pods(n, pods)
        return m

    yield factory
    for m in made_mixed:
        m.close()
    for c in made:
        c.down()


def complaints(node: Node, about: tuple[str, ...] = ()) -> list[str]:
    """Error/fatal lines in the node's daemon log, plus warnings that mention any string in ``about``.

    Both implementations log in klog's format (level letter, then mmdd), so one reader serves both.
    """
    try:
        lines = node.flanneld_log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    bad = []
    for line in lines:
        level = line[:1]
        if len(line) < 6 or not line[1:5].isdigit():
            continue
        if level in "EF" or (level == "W" and any(a in line for a in about)):
            bad.append(line)
    return bad


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the mixed clusters' ping matrices at the end of the run (CI's log shows them)."""
    from .pings import RECORDED

    if not RECORDED:
        return
    terminalreporter.section("interop ping matrices (pyflannel + Go flanneld v0.28.9)")
    for text in RECORDED:
        for line in text.splitlines():
            terminalreporter.write_line(line)
