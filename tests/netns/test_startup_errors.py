"""Start-up errors are one line naming the thing and the value, then exit 1 (bad flags: exit 2).

The real ``flanneld`` console script runs in a network namespace of its own with a real etcd on
its loopback holding a valid config, so start-up gets as far as the step under test: no such
interface, an interface without an IPv4 address, a health port already taken (by etcd itself),
and the kernel refusing netlink requests (flanneld run as root without CAP_NET_ADMIN, through
``setpriv``). Each must end within a few seconds with exit status 1 and no traceback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.etcd import EtcdServer, etcdctl, start_etcd

pytestmark = pytest.mark.root

FLANNELD = Path(sys.executable).parent / "flanneld"
CONFIG = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
RUN_TIMEOUT = 60  # a generous upper bound for a hang, not a performance check


@dataclass(frozen=True)
class Node:
    ns: str
    etcd: EtcdServer
    workdir: Path


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture
def node(netns_prefix: str, tmp_path: Path) -> Iterator[Node]:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd/etcdctl not found on PATH (Debian's etcd-server and etcd-client)")
    ns = f"{netns_prefix}-n1"
    sh("ip", "netns", "add", ns)
    etcd: EtcdServer | None = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # an uplink with an address, and one without any (veth pairs: this kernel may have no dummy driver)
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        sh("ip", "-n", ns, "addr", "add", "198.18.0.11/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "add", "bare0", "type", "veth", "peer", "name", "bare0p")
        for dev in ("eth0", "eth0p", "bare0", "bare0p"):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", "198.18.0.1", "dev", "eth0")
        etcd = start_etcd(tmp_path / "etcd", netns=ns)
        etcdctl(etcd, "put", "/coreos.com/network/config", CONFIG, check=True)
        yield Node(ns, etcd, tmp_path)
    finally:
        if etcd is not None:
            etcd.stop()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def flanneld(node: Node, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    if not FLANNELD.exists():
        pytest.skip(f"flanneld console script not found at {FLANNELD} (pip install -e .)")
    argv = ["ip", "netns", "exec", node.ns, *prefix, str(FLANNELD), f"-etcd-endpoints={node.etcd.client_url}",
            f"-subnet-file={node.workdir / 'subnet.env'}", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"flanneld {' '.join(args)} did not exit; stderr: {e.stderr!r}") from None


def error_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    """The error lines flanneld wrote (klog: they start with E), after checking there is no traceback."""
    assert "Traceback" not in p.stderr, p.stderr
    return [ln for ln in p.stderr.splitlines() if ln.startswith("E")]


def test_no_such_interface(node: Node) -> None:
    p = flanneld(node, "-iface=nosuch")
    assert p.returncode == 1, p.stderr
    errs = error_lines(p)
    assert len(errs) == 1, p.stderr
    assert "Failed to find interface to use that matches" in errs[0] and "iface=['nosuch']" in errs[0]


def test_interface_without_an_ipv4_address(node: Node) -> None:
    p = flanneld(node, "-iface=bare0")
    assert p.returncode == 1, p.stderr
    errs = error_lines(p)
    assert len(errs) == 1 and errs[0].endswith("Failed to find IPv4 address for interface bare0"), p.stderr


def test_health_port_already_bound(node: Node) -> None:
    port = int(node.etcd.client_url.rsplit(":", 1)[1])  # etcd listens there
    p = flanneld(node, "-iface=eth0", "-healthz-ip=127.0.0.1", f"-healthz-port={port}")
    assert p.returncode == 1, p.stderr
    errs = error_lines(p)
    assert len(errs) == 1, p.stderr
    assert errs[0].endswith(f"cannot listen on -healthz-ip/-healthz-port 127.0.0.1:{port}: address already in use")
    assert "Couldn't fetch network config" not in p.stderr  # it failed before start-up, not after


def test_netlink_refused_without_cap_net_admin(node: Node) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not found (util-linux)")
    p = flanneld(node, "-iface=eth0", prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", "--"))
    assert p.returncode == 1, p.stderr
    errs = error_lines(p)
    assert len(errs) == 1, p.stderr
    assert "operation not permitted" in errs[0].lower() and "CAP_NET_ADMIN" in errs[0], errs[0]
    link = subprocess.run(["ip", "-n", node.ns, "link", "show", "flannel.1"], capture_output=True, check=False)
    assert link.returncode != 0  # nothing was created


def test_bad_flag_is_exit_2_one_line(node: Node) -> None:
    p = flanneld(node, "-iface=eth0", "-healthz-port=notaport")
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "healthz-port" in lines[0] and "notaport" in lines[0], p.stderr
