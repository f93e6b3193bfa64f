"""Kubernetes mode: a fresh node joining a cluster of 1000 flannel Nodes, pyflannel against Go flanneld.

Issue 12 asks for the join time with 1000 Node objects in a real kube-apiserver, against Go
flanneld v0.28.9 in the same run. One etcd 3.6 + kube-apiserver (tests/support/kube.py) runs in
the LAN namespace; 1000 Nodes are created there with concurrent POSTs (httpx), each with a podCIDR
inside the Network and the annotations a running vxlan flanneld leaves (kube-subnet-manager,
backend-type, backend-data with a VtepMAC, public-ip in 198.19.0.0/16). Node n1 runs pyflannel, n2
Go flanneld (each its own namespace), both with the kubeconfig of ServiceAccount kube-flannel/flannel.

A run: the node is made fresh (no flannel.1, no subnet file, no flannel annotations on its Node, so
the other daemon's node is no peer either: exactly K peers), a kernel poller is started in the node's
namespace (rtnetlink dumps every 10 ms via pyflannel.adapters.nlbulk), then the daemon. The time is
process start -> K routes on flannel.1, and then K neighbours and K FDB entries, as the poller saw
them; the same end point for both daemons. pyflannel's "Running:" log line is recorded as well.
Peak RSS is VmHWM right after the end point; the CPU time (user + system, the daemon and its waited-for
children such as iptables) at the end point is a figure the host's load changes much less than the
wall time. Runs alternate between the two daemons.

    python -m bench.kube_join --nodes 1000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from support import kube as ks
from support.cluster import Cluster, Node, destroy_prefix

from bench.common import log_size, report, reset_node, summary, vm_hwm_kb, wait_log

NETWORK = "100.64.0.0/12"
NET_CONF = json.dumps({"Network": NETWORK, "Backend": {"Type": "vxlan"}})
P = "flannel.alpha.coreos.com/"
FLANNEL_KEYS = ("kube-subnet-manager", "backend-type", "backend-data", "public-ip")

CREATE_SCRIPT = r"""
import asyncio, json, sys, time
import httpx
url, token, ca, n, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
P = "flannel.alpha.coreos.com/"
def node(i):
    mac = "0e:%02x:%02x:%02x:%02x:%02x" % (0xb0, (i >> 16) & 255, (i >> 8) & 255, i & 255, 1)
    cidr = f"100.{72 + i // 256}.{i % 256}.0/24"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"peer-{i:05d}", "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                P + "kube-subnet-manager": "true", P + "backend-type": "vxlan",
                P + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
                P + "public-ip": f"198.19.{i // 250}.{i % 250 + 1}"}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}
async def main():
    t = time.monotonic()
    sem = asyncio.Semaphore(conc)
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, verify=ca, limits=limits, timeout=60,
                                 headers={"Authorization": "Bearer " + token}) as c:
        async def one(i):
            async with sem:
                r = await c.post("/api/v1/nodes", json=node(i))
                if r.status_code not in (201, 409):
                    raise SystemExit(f"POST node peer-{i:05d}: HTTP {r.status_code}: {r.text[:200]}")
        await asyncio.gather(*(one(i) for i in range(n)))
    print(json.dumps({"seconds": time.monotonic() - t}))
asyncio.run(main())
"""

# Runs in the node's namespace: prints "ready", then polls until K routes on flannel.1 (and K
# neighbours and FDB entries) exist; prints the monotonic times (CLOCK_MONOTONIC is system-wide).
POLL_SCRIPT = r"""
import json, sys, time
from ipaddress import IPv4Network
from pyflannel.adapters.nlbulk import BulkNetlink
from pyroute2 import IPRoute
k, timeout = int(sys.argv[1]), float(sys.argv[2])
nl = BulkNetlink()
ipr = IPRoute()
up = ipr.link_lookup(ifname="eth0")[0]
net = IPv4Network("100.64.0.0/10")
print("ready", flush=True)
deadline = time.monotonic() + timeout
dev = None
t_routes = None
counts = [0, 0, 0]
polls = 0
while time.monotonic() < deadline:
    polls += 1
    if dev is None:
        found = ipr.link_lookup(ifname="flannel.1")
        if not found:
            time.sleep(0.01)
            continue
        dev = found[0]
    try:
        s = nl.observe(dev, "flannel.1", up, "eth0", net)
    except OSError:
        dev = None
        continue
    now = time.monotonic()
    kinds = [type(e).__name__ for e in s]
    counts = [kinds.count("Route"), kinds.count("Neigh"), kinds.count("Fdb")]
    if t_routes is None and counts[0] == k:
        t_routes = now
    if counts == [k, k, k]:
        print(json.dumps({"routes": t_routes, "all": now, "counts": counts, "polls": polls}), flush=True)
        sys.exit(0)
    time.sleep(0.01)
print(json.dumps({"routes": t_routes, "all": None, "counts": counts, "polls": polls}), flush=True)
sys.exit(1)
"""


def create_peers(c: Cluster, api: ks.KubeApiServer, n: int, concurrency: int = 32) -> float:
    """``n`` flannel Nodes via concurrent POSTs from the LAN namespace (where the apiserver listens)."""
    out = c.exec(c.lan_ns, [sys.executable, "-c", CREATE_SCRIPT, api.url, api.admin_token, str(api.ca_file),
                            str(n), str(concurrency)], timeout=600).stdout
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def strip_flannel(api: ks.KubeApiServer, name: str) -> None:
    """Remove the flannel annotations from a Node (keeps the kubelet's ttl one: Go flanneld panics on none)."""
    api.annotate(name, {P + key: None for key in FLANNEL_KEYS})


def start_poller(c: Cluster, node: Node, k: int, timeout: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-c", POLL_SCRIPT, str(k), str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"kernel poller in {node.ns} did not start: {line!r} {err[-500:]}")
    return proc


def finish_poller(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    if not out.strip():
        raise RuntimeError(f"kernel poller gave nothing (rc {proc.returncode}): {err[-500:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


class KubeBed:
    """Cluster (LAN + nodes) with the apiserver in the LAN namespace and a flannel kubeconfig."""

    def __init__(self, nodes: int, tag: str, *, keep: bool = False) -> None:
        self.keep = keep
        self.prefix = f"pfk{tag}{os.urandom(1).hex()}"
        destroy_prefix(self.prefix)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"pyflannel-{self.prefix}-"))
        self.c = Cluster(prefix=self.prefix, nodes=nodes, workdir=self.tmp / "cluster")
        self.api: ks.KubeApiServer | None = None
        self.c.up()
        try:
            self.api = ks.start_apiserver(self.tmp / "api", host="198.18.0.1", netns=self.c.lan_ns)
            self.kubeconfig = ks.flannel_kubeconfig(self.api, self.tmp / "flannel.kubeconfig")
            self.net_conf = self.tmp / "net-conf.json"
            self.net_conf.write_text(NET_CONF)
        except BaseException:
            self.down()
            raise

    def args(self, *, go: bool, healthz_port: int = 0) -> list[str]:
        a = ["--kube-subnet-mgr", f"--kubeconfig-file={self.kubeconfig}", f"--net-config-path={self.net_conf}"]
        if healthz_port and not go:
            a.append(f"--healthz-port={healthz_port}")
        return a

    def start(self, node: Node, *, go: bool, healthz_port: int = 0) -> subprocess.Popen[bytes]:
        return self.c.start_flanneld(node, self.args(go=go, healthz_port=healthz_port), env={"NODE_NAME": node.name},
                                     binary=ks.binary("flanneld") if go else None)

    def down(self) -> None:
        try:
            self.c.down()
        finally:
            if self.api is not None:
                self.api.close()
            destroy_prefix(self.prefix)
            if self.keep:
                print(f"(logs kept in {self.tmp})")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)


def one_run(bed: KubeBed, node: Node, k: int, *, go: bool, timeout: float) -> dict[str, Any]:
    assert bed.api is not None
    reset_node(bed.c, node)
    for n in bed.c.nodes:  # the other daemon's node too: exactly k peers
        strip_flannel(bed.api, n.name)
    poller = start_poller(bed.c, node, k, timeout)
    since = log_size(node.flanneld_log)
    t0 = time.monotonic()
    proc = bed.start(node, go=go)
    try:
        res = finish_poller(poller, timeout)
        hwm = vm_hwm_kb(proc.pid) if proc.poll() is None else 0
        cpu = cpu_seconds(proc.pid) if proc.poll() is None else float("nan")
        running = None
        if not go:
            running = wait_log(node.flanneld_log, f"Running: lease 100.64.1.0/24, {k} peers", since, timeout=30) - t0
        if res["all"] is None:
            raise RuntimeError(f"{'go' if go else 'py'}: kernel has {res['counts']}, expected {k} each, after "
                               f"{timeout}s; log tail:\n{node.flanneld_log.read_text(errors='replace')[-1500:]}")
        time.sleep(0.5)
        if proc.poll() is None:
            hwm = max(hwm, vm_hwm_kb(proc.pid))
    finally:
        if proc.poll() is None:
            bed.c.stop_flanneld(node, signal.SIGTERM)
        if poller.poll() is None:
            os.killpg(poller.pid, signal.SIGKILL)
    return {"routes_s": res["routes"] - t0, "all_s": res["all"] - t0, "running_s": running,
            "vmhwm_mb": hwm / 1024, "cpu_s": cpu, "polls": res["polls"]}


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its waited-for children (iptables etc.), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def uptime() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--keep", action="store_true", help="keep the daemons' and apiserver's logs")
    args = ap.parse_args()
    k = args.nodes
    bed = KubeBed(2, "j", keep=args.keep)
    figures: dict[str, Any] = {"nodes": k, "network": NETWORK}
    try:
        assert bed.api is not None
        n_py, n_go = bed.c.nodes
        bed.api.create_node(n_py.name, "100.64.1.0/24", internal_ip=n_py.lan_ip)
        bed.api.create_node(n_go.name, "100.64.2.0/24", internal_ip=n_go.lan_ip)
        secs = create_peers(bed.c, bed.api, k)
        print(f"({k} Nodes created in {secs:.1f}s, {k / secs:.0f}/s; load {uptime()})")
        figures["create_nodes_s"] = secs
        runs: dict[str, list[dict[str, Any]]] = {"pyflannel": [], "go": []}
        loads = []
        for i in range(args.runs):
            for name, node, go in (("pyflannel", n_py, False), ("go", n_go, True)):
                r = one_run(bed, node, k, go=go, timeout=args.timeout)
                r["load"] = uptime()
                loads.append(r["load"])
                runs[name].append(r)
                extra = f", Running: {r['running_s']:.3f}s" if r["running_s"] is not None else ""
                print(f"  run {i + 1} {name}: routes {r['routes_s']:.3f}s, all {r['all_s']:.3f}s{extra}, "
                      f"CPU {r['cpu_s']:.2f}s, VmHWM {r['vmhwm_mb']:.1f} MB (load {r['load']})")
        figures["runs"] = runs
        figures["loadavg"] = loads
        med = {}
        for name, rs in runs.items():
            s = summary([r["all_s"] for r in rs])
            figures[f"{name}_join_s"] = s
            figures[f"{name}_routes_s"] = summary([r["routes_s"] for r in rs])
            figures[f"{name}_vmhwm_mb"] = max(r["vmhwm_mb"] for r in rs)
            figures[f"{name}_cpu_s"] = summary([r["cpu_s"] for r in rs])
            med[name] = s["median"]
            print(f"kube join K={k} {name}: median {s['median']:.3f} s (min {s['min']:.3f}, max {s['max']:.3f}, "
                  f"n={s['n']}); CPU median {figures[f'{name}_cpu_s']['median']:.2f} s; "
                  f"VmHWM {figures[f'{name}_vmhwm_mb']:.1f} MB")
        py_running = [r["running_s"] for r in runs["pyflannel"] if r["running_s"] is not None]
        if py_running:
            figures["pyflannel_running_s"] = summary(py_running)
            print(f"kube join K={k} pyflannel 'Running:' line: median {statistics.median(py_running):.3f} s")
        figures["ratio_py_over_go"] = med["pyflannel"] / med["go"]
        print(f"kube join K={k} ratio pyflannel/go: {figures['ratio_py_over_go']:.2f}")
    finally:
        bed.down()
    report("kube_join", figures)


if __name__ == "__main__":
    main()
