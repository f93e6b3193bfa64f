"""Shared helpers for the fault tier: real namespaces, a real etcd, real flanneld processes.

Every test here needs root, iproute2 and etcd/etcdctl; without them it is skipped with the reason.
Each test takes ``netns_prefix`` (a fresh prefix; the test fails if it leaves ``{prefix}-*`` behind)
and records one or more result rows for the closing report with :func:`record` or :func:`scenario`:
a JSON line appended to the file named by ``PYFLANNEL_FAULT_REPORT`` (nothing is written when unset).

Typical use::

    def test_x(netns_prefix, tmp_path):
        with scenario("etcd restart", peers=2) as row:
            c = start_cluster(netns_prefix, tmp_path / "c", nodes=2)
            try:
                ...
                row.pings_sent, row.pings_lost = ping_pods(c)
            finally:
                c.down()

The helpers only send traffic to 198.18.0.0/15 and 100.64.0.0/10 (``Cluster.ping`` and
:func:`ping_stats` refuse anything else).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from support import checks
from support.checks import etcd_py, kernel, own_subnet, wait_for

__all__ = ["etcd_py", "kernel", "own_subnet", "wait_for"]  # re-exported for the fault tests
from support.cluster import (
    ETCD_ENDPOINT,
    Cluster,
    Node,
    Pod,
    check_destination,
    destroy_prefix,
    log_tail,
    prefix_namespaces,
)

ROOT_OK = os.geteuid() == 0 and all(shutil.which(p) for p in ("ip", "etcd", "etcdctl", "ping"))
SKIP_REASON = "needs root, iproute2, ping and etcd/etcdctl (creates network namespaces, runs a real etcd)"

CONFIG = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
NETWORK = IPv4Network("100.64.0.0/16")
LAN = IPv4Network("198.18.0.0/24")
SUBNETS = "/coreos.com/network/subnets/"
CONFIG_KEY = "/coreos.com/network/config"
REPORT_ENV = "PYFLANNEL_FAULT_REPORT"


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def netns_prefix() -> Iterator[str]:
    """A fresh namespace prefix such as ``pff3fa2``; the test fails if it leaves ``{prefix}-*`` behind.

    Leftovers are removed either way, so one broken test does not break the next.
    """
    if not ROOT_OK:
        pytest.skip(SKIP_REASON)
    prefix = f"pff{secrets.token_hex(2)}"
    destroy_prefix(prefix)
    yield prefix
    left = prefix_namespaces(prefix)
    destroy_prefix(prefix)
    assert not left, f"test left network namespaces behind: {left}"


@pytest.fixture
def cluster_factory(netns_prefix: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``cluster_factory(nodes=3, extra_args=(), config=CONFIG)``: a running cluster, torn down afterwards."""
    made: list[Cluster] = []

    def factory(nodes: int = 3, extra_args: Sequence[str] = (), config: str | None = CONFIG) -> Cluster:
        if made:
            raise RuntimeError("one cluster per test: they would share the prefix")
        c = start_cluster(netns_prefix, tmp_path / "cluster", nodes, extra_args, config)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.down()


# ------------------------------------------------------------------------------------------------
# Result rows for the closing report


@dataclass
class Row:
    scenario: str
    peers: int = 0
    duration_s: float = 0.0
    pings_sent: int = 0
    pings_lost: int = 0
    routes_lost: int = 0
    result: str = "pass"
    note: str = ""


def record(
    scenario: str,
    *,
    peers: int = 0,
    duration_s: float = 0.0,
    pings_sent: int = 0,
    pings_lost: int = 0,
    routes_lost: int = 0,
    result: str = "pass",
    note: str = "",
) -> dict[str, Any]:
    """Append one result row (a JSON line) to ``$PYFLANNEL_FAULT_REPORT`` if set; return the row."""
    if result not in ("pass", "fail"):
        raise ValueError(f"result must be 'pass' or 'fail', not {result!r}")
    row = asdict(Row(scenario, peers, round(duration_s, 2), pings_sent, pings_lost, routes_lost, result, note))
    checks.record_fault(**row)
    return row


@contextmanager
def scenario(name: str, peers: int = 0, note: str = "") -> Iterator[Row]:
    """Time a block and record its row: result "fail" (with the error in the note) if it raises."""
    row = Row(name, peers, note=note)
    t0 = time.monotonic()
    try:
        yield row
    except BaseException as e:
        row.result = "fail"
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        row.note = f"{row.note}; {msg}" if row.note else msg
        raise
    finally:
        row.duration_s = time.monotonic() - t0
        record(**asdict(row))


# ------------------------------------------------------------------------------------------------
# Cluster helpers (from tests/netns/test_vxlan_cluster.py, made reusable)


def flannel_addresses(node_ns: str) -> list[str]:
    """The IPv4 addresses on flannel.1 as ``a.b.c.d/len`` ([] if there is no device)."""
    from pyroute2 import IPRoute

    with IPRoute(netns=node_ns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname="flannel.1")
        if not idx:
            return []
        return [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", family=2, index=idx[0])]


_etcd_users: weakref.WeakKeyDictionary[Cluster, str] = weakref.WeakKeyDictionary()


def set_etcd_user(c: Cluster, user: str | None) -> None:
    """Run every later :func:`etcdctl` on ``c`` as ``user`` (``name:password``), e.g. root once auth is on."""
    if user is None:
        _etcd_users.pop(c, None)
    else:
        _etcd_users[c] = user


def etcdctl(c: Cluster, *args: str, user: str | None = None, input: str | None = None,
            check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``etcdctl`` (v3) in the LAN namespace; ``input`` feeds stdin (``put KEY`` with no value reads the
    value from stdin: the way to store values above 128 KiB). ``user`` is ``name:password``, by default
    the one given to :func:`set_etcd_user`; ``""`` runs without credentials."""
    argv = ["etcdctl", "--endpoints", ETCD_ENDPOINT]
    user = _etcd_users.get(c) if user is None else user
    if user:
        argv.append(f"--user={user}")
    return c.exec(c.lan_ns, [*argv, *args], check=check, timeout=timeout, env={"ETCDCTL_API": "3"}, input=input)


def leases(c: Cluster, user: str | None = None) -> dict[str, str]:
    """Every key under the subnets prefix and its value, as etcdctl prints them."""
    # JSON output: keys and values come base64-encoded, so a value that is not UTF-8 cannot break the test.
    out = json.loads(etcdctl(c, "get", "--prefix", SUBNETS, "-w", "json", user=user).stdout)
    return {
        base64.b64decode(kv["key"]).decode(errors="replace"): base64.b64decode(kv.get("value", "")).decode(
            errors="replace")
        for kv in out.get("kvs") or []
    }


def node_leases(c: Cluster, ls: dict[str, str] | None = None) -> dict[str, str]:
    """Only the leases the cluster's nodes hold (by their subnet files), ignoring anything a test injected."""
    ls = leases(c) if ls is None else ls
    keys = set()
    for n in c.nodes:
        try:
            sn = own_subnet(c, n)
        except (FileNotFoundError, KeyError):
            continue
        keys.add(f"{SUBNETS}{sn.network_address}-{sn.prefixlen}")
    return {k: v for k, v in ls.items() if k in keys}


def expected(c: Cluster, node: Node, ls: dict[str, str] | None = None) -> dict[str, set[tuple[str, ...]]]:
    """What ``node`` should hold for the other *nodes'* leases (injected test leases are ignored)."""
    return checks.expected(c, node, node_leases(c) if ls is None else ls)


def start_cluster(prefix: str, workdir: Path, nodes: int = 3, extra_args: Sequence[str] = (),
                  config: str | None = CONFIG) -> Cluster:
    """A running cluster (see support.checks.start_cluster); ``config=None`` starts flanneld
    with no network config in etcd and does not wait for it."""
    return checks.start_cluster(prefix, workdir, nodes, tuple(extra_args), config)


def missing_routes(c: Cluster, nodes: Sequence[Node] | None = None) -> int:
    """How many routes to the other nodes' subnets are absent from the nodes' kernels right now."""
    ls = node_leases(c)
    lost = 0
    for n in nodes or c.nodes:
        lost += len(expected(c, n, ls)["routes"] - kernel(n.ns)["routes"])
    return lost


def converged(c: Cluster, nodes: Sequence[Node] | None = None) -> bool:
    ls = node_leases(c)
    return all(kernel(n.ns) == expected(c, n, ls) for n in (nodes or c.nodes) if c.flanneld_process(n))


def wait_converged(c: Cluster, timeout: float = 20, nodes: Sequence[Node] | None = None) -> None:
    wait_for(lambda: converged(c, nodes), timeout, "every node to match the leases")


def flanneld_log(node: Node) -> str:
    try:
        return node.flanneld_log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def alive(c: Cluster, node: Node) -> bool:
    proc = c.flanneld_process(node)
    return proc is not None and proc.poll() is None


def assert_alive(c: Cluster, nodes: Sequence[Node] | None = None) -> None:
    for n in nodes or c.nodes:
        proc = c.flanneld_process(n)
        assert proc is not None and proc.poll() is None, (
            f"{n.name}: flanneld exited with {proc.returncode if proc else None}\n{log_tail(n.flanneld_log, 40)}"
        )


# ------------------------------------------------------------------------------------------------
# Traffic

_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping_stats(c: Cluster, src: Pod | Node | str, dst_ip: str, count: int = 3, interval: float = 0.2,
               timeout: float = 1.0) -> tuple[int, int]:
    """``ping -c count`` from a pod/node/namespace; returns (sent, received). Only to the test ranges."""
    dst = check_destination(dst_ip)
    ns = src if isinstance(src, str) else src.ns
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}", "-W", f"{timeout:g}", dst]
    proc = c.exec(ns, argv, check=False, timeout=count * (interval + timeout) + 15)
    m = _PING_RE.search(proc.stdout)
    if not m:
        return count, 0
    return int(m.group(1)), int(m.group(2))


def ping_pods(c: Cluster, count: int = 3, interval: float = 0.2) -> tuple[int, int, list[tuple[str, str]]]:
    """Every pod pings every pod on another node: (sent, lost, [(src, dst) pairs that lost any])."""
    sent = lost = 0
    bad: list[tuple[str, str]] = []
    for a in c.pods:
        for b in c.pods:
            if a.node is b.node:
                continue
            s, r = ping_stats(c, a, b.ip, count, interval)
            sent += s
            lost += s - r
            if r < s:
                bad.append((a.name, b.name))
    return sent, lost, bad


# ------------------------------------------------------------------------------------------------
# Watching every route a node ever gets


class RouteMonitor:
    """``ip -o monitor route`` in each node namespace, so a test can say a route was *never* installed."""

    def __init__(self, c: Cluster, nodes: Sequence[Node] | None = None) -> None:
        self.c = c
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for n in nodes or c.nodes:
            path = n.dir / "ip-monitor-route.log"
            self.procs[n.name] = (c.popen(n.ns, ["ip", "-o", "-4", "monitor", "route"], path), path)
        time.sleep(0.3)  # let the monitors subscribe before the test changes anything

    def stop(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, (proc, path) in self.procs.items():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            out[name] = path.read_text(errors="replace").splitlines() if path.exists() else []
        return out


def bad_route_lines(lines: Sequence[str], own: IPv4Network, protected: Sequence[IPv4Network] = (LAN,)) -> list[str]:
    """Main-table routes added on flannel.1 whose destination overlaps ``own`` or a protected network."""
    bad = []
    for line in lines:
        if line.startswith("Deleted") or "dev flannel.1" not in line or " table " in line:
            continue
        tok = line.split()[0]
        if tok in ("local", "broadcast", "unreachable", "blackhole", "prohibit"):
            continue
        try:
            dst = IPv4Network(tok if "/" in tok else f"{tok}/32", strict=False)
        except ValueError:
            continue
        if dst.overlaps(own) or any(dst.overlaps(p) for p in protected):
            bad.append(line)
    return bad


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault scenarios' rows (peers, duration, pings, routes lost) at the end of the run."""
    path = os.environ.get(REPORT_ENV)
    if not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return
    tr = terminalreporter
    tr.section("fault scenarios")
    tr.write_line(f"{'scenario':<70} {'peers':>5} {'secs':>6} {'pings':>6} {'lost':>5} {'routes lost':>11}  result")
    for r in rows:
        tr.write_line(f"{r['scenario'][:70]:<70} {r['peers']:>5} {r['duration_s']:>6.1f} {r['pings_sent']:>6} "
                      f"{r['pings_lost']:>5} {r['routes_lost']:>11}  {r['result']}")
