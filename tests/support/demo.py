"""``make demo``: a 3-node pyflannel cluster in network namespaces, pods pinging each other over vxlan.

    python -m support.demo up       build it, prove pod-to-pod traffic works, leave it running
    python -m support.demo status   show nodes, leases and peer routes of the running demo
    python -m support.demo down     remove it (idempotent)

It is the newcomer's first command, so it must either show a working overlay or fail with one clear
message and leave nothing behind: every step runs inside the namespaces of
:class:`support.cluster.Cluster` (prefix ``pfldemo``), and any failure tears all of them down.
Logs are kept in /run/pyflannel-demo until ``make demo-down``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from support.cluster import Cluster, ClusterError, Node, Pod, destroy_prefix, netns_pids

PREFIX = "pfldemo"
WORKDIR = Path("/run/pyflannel-demo")
NODES = 3
PODS_PER_NODE = 2
PING_TRIES = 3
NETWORK_CONFIG = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
SUBNET_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 20.0


class DemoError(Exception):
    """A step of the demo failed; the message is shown to the user as is."""


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP during ``up``: unwind through the same teardown as a failure."""


def _say(msg: str) -> None:
    print(msg, flush=True)


def _cluster() -> Cluster:
    return Cluster(prefix=PREFIX, nodes=NODES, workdir=WORKDIR)


# ---- up ---------------------------------------------------------------------------------------------------


def cmd_up() -> int:
    if os.geteuid() != 0:
        print("pyflannel demo: must run as root (it creates network namespaces); try: sudo make demo", file=sys.stderr)
        return 1
    removed = destroy_prefix(PREFIX)
    if removed:
        _say(f"removed leftovers of an earlier demo: {', '.join(removed)}")
    shutil.rmtree(WORKDIR, ignore_errors=True)  # a fresh etcd data dir and fresh logs

    main_pid = os.getpid()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        # pyroute2 forks short-lived helpers to enter namespaces, and they inherit this handler; it stops
        # them with SIGTERM.  A helper must just die: raising would run our teardown in a copy of us.
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    cluster = _cluster()
    try:
        failed = _build(cluster)
    except (Exception, KeyboardInterrupt, _Interrupted) as exc:
        if isinstance(exc, _Interrupted):
            reason = f"interrupted by {exc}"
        elif isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        else:
            reason = str(exc) or type(exc).__name__
        print(f"\npyflannel demo FAILED: {reason}", file=sys.stderr)
        print("tearing the demo cluster down ...", file=sys.stderr)
        try:
            cluster.down()
        except ClusterError as down_exc:
            print(f"teardown problem: {down_exc}; run `make demo-down`", file=sys.stderr)
        print(f"logs kept in {WORKDIR} (make demo-down removes them)", file=sys.stderr)
        return 1
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    cluster.detach()  # etcd and flanneld keep running after we exit
    if failed:
        print(f"\n{failed} ping(s) FAILED. The cluster is left running for inspection", file=sys.stderr)
        print(f"(logs: {WORKDIR}/n*/flanneld.log); make demo-down removes it", file=sys.stderr)
        return 2
    _say("\nAll pods reach every pod on the other nodes.")
    _say(f"The cluster keeps running (namespaces {PREFIX}-*, logs in {WORKDIR}); make demo-down removes it")
    return 0


def _build(cluster: Cluster) -> int:
    """Build and check the demo; return the number of failed pings (raise DemoError on a broken step)."""
    if not cluster.flanneld.exists():
        raise DemoError(f"flanneld not found at {cluster.flanneld} (run `make setup`)")
    _say(f"[1/6] creating {NODES} nodes on the LAN 198.18.0.0/24 (namespaces {PREFIX}-*)")
    cluster.up()
    _say(f"[2/6] starting etcd at {cluster.etcd_endpoint}")
    cluster.start_etcd()
    _say(f"[3/6] network config: {NETWORK_CONFIG}")
    cluster.put_config(NETWORK_CONFIG)
    _say(f"[4/6] starting flanneld on {', '.join(n.name for n in cluster.nodes)}")
    for node in cluster.nodes:
        cluster.start_flanneld(node)
    for node in cluster.nodes:
        env = cluster.wait_subnet_env(node, timeout=SUBNET_TIMEOUT)
        _say(f"      {node.name}: FLANNEL_SUBNET={env['FLANNEL_SUBNET']} FLANNEL_MTU={env['FLANNEL_MTU']}")
    _say(f"[5/6] adding {PODS_PER_NODE} pods per node")
    for node in cluster.nodes:
        pods = cluster.add_pods(node, PODS_PER_NODE)
        _say(f"      {node.name}: " + ", ".join(f"{p.name}={p.ip}" for p in pods))
    _wait_converged(cluster)
    _say(f"[6/6] ping matrix (each pod pings every pod on the other nodes, up to {PING_TRIES} tries)")
    results = ping_matrix(cluster)
    _say(format_matrix(cluster.pods, results))
    _say("")
    _say(format_nodes(cluster))
    return sum(1 for ok in results.values() if not ok)


def _wait_converged(cluster: Cluster) -> None:
    """Give the daemons a moment to install every peer route before pinging (failures show in the matrix)."""
    want = len(cluster.nodes) - 1
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while time.monotonic() < deadline:
        counts = [len(cluster.peer_routes(n) or []) for n in cluster.nodes]
        if all(c >= want for c in counts):
            return
        for node in cluster.nodes:
            proc = cluster.flanneld_process(node)
            if proc is not None and proc.poll() is not None:
                raise DemoError(f"flanneld on {node.name} exited with {proc.returncode}; see {node.flanneld_log}")
        time.sleep(0.2)
    _say(f"      warning: not every node has {want} peer routes after {CONVERGE_TIMEOUT:.0f}s")


def ping_matrix(cluster: Cluster) -> dict[tuple[str, str], bool]:
    """{(src pod, dst pod): reachable} for every pair of pods on different nodes."""
    pairs = [(src, dst) for src in cluster.pods for dst in cluster.pods if src.node is not dst.node]

    def probe(pair: tuple[Pod, Pod]) -> bool:
        src, dst = pair
        return any(cluster.ping(src, dst.ip, count=1, timeout=2) for _ in range(PING_TRIES))

    with ThreadPoolExecutor(max_workers=8) as pool:
        oks = list(pool.map(probe, pairs))
    return {(s.name, d.name): ok for (s, d), ok in zip(pairs, oks, strict=True)}


def format_matrix(pods: Sequence[Pod], results: dict[tuple[str, str], bool]) -> str:
    lines = [f"{'from / to':<22}" + "".join(f"{p.name:>8}" for p in pods)]
    for src in pods:
        cells = []
        for dst in pods:
            ok = results.get((src.name, dst.name))
            cells.append(f"{'-' if ok is None else 'ok' if ok else 'FAIL':>8}")
        lines.append(f"{src.name + ' ' + src.ip:<22}" + "".join(cells))
    lines.append("(- = same node, not tested: that traffic never leaves the docker0 bridge)")
    return "\n".join(lines)


# ---- status -----------------------------------------------------------------------------------------------


def _flanneld_state(node: Node) -> str:
    for pid in netns_pids(node.ns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(Path(arg.decode(errors="replace")).name.endswith("flanneld") for arg in cmdline[:2]):
            return f"pid {pid}"
    return "not running"


def format_nodes(cluster: Cluster) -> str:
    """The node table: LAN IP, leased subnet, VtepMAC from etcd, peer routes on flannel.1, flanneld pid."""
    try:
        leases: dict[str, dict[str, Any]] = cluster.leases()
        etcd_note = ""
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        leases, etcd_note = {}, f"(etcd not reachable: {first})"
    by_ip = {str(attrs.get("PublicIP")): (subnet, attrs) for subnet, attrs in leases.items()}
    want = len(cluster.nodes) - 1
    rows = [("NODE", "LAN IP", "SUBNET", "VTEP MAC", "PEER ROUTES", "FLANNELD")]
    for node in cluster.nodes:
        subnet, attrs = by_ip.get(node.lan_ip, ("-", {}))
        if subnet == "-":
            with contextlib.suppress(OSError):
                subnet = cluster.read_subnet_env(node).get("FLANNEL_SUBNET", "-") + " (file)"
        backend = attrs.get("BackendData") or {}
        mac = str(backend.get("VtepMAC", "-")) if isinstance(backend, dict) else "-"
        try:
            routes = cluster.peer_routes(node)
            peers = "no flannel.1" if routes is None else f"{len(routes)}/{want}"
        except OSError as exc:
            peers = f"error: {exc}"
        rows.append((node.name, node.lan_ip, subnet, mac, peers, _flanneld_state(node)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    return text + (f"\n{etcd_note}" if etcd_note else "")


def cmd_status() -> int:
    if os.geteuid() != 0:
        print("pyflannel demo: status must run as root (it reads the namespaces); try: sudo", file=sys.stderr)
        return 1
    cluster = _cluster()
    found = cluster.namespaces()
    if not found:
        print("no demo cluster is running (make demo starts one)")
        return 1
    print(format_nodes(cluster))
    pods = [n for n in found if re.fullmatch(rf"{PREFIX}-n\d+p\d+", n)]
    print(f"\n{len(found)} namespaces ({len(pods)} pods); make demo-down removes them")
    return 0


# ---- down -------------------------------------------------------------------------------------------------


def cmd_down() -> int:
    if os.geteuid() != 0:
        print(
            "pyflannel demo: must run as root (it deletes network namespaces); try: sudo make demo-down",
            file=sys.stderr,
        )
        return 1
    try:
        removed = destroy_prefix(PREFIX)
    except ClusterError as exc:
        print(f"pyflannel demo: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(WORKDIR, ignore_errors=True)
    print(f"removed {len(removed)} namespaces and {WORKDIR}" if removed else "no demo cluster was running")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.demo", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
