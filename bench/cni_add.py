"""Benchmark: how long a pod ADD through the ``flannel`` CNI plugin takes, next to Debian's bridge alone.

Why: the kubelet/containerd run the plugin once per pod, as a fresh process, so its latency is pod start-up
latency.  Debian's ``bridge`` plugin (Go) takes ~13 ms per ADD on a small VM; a Python meta-plugin in front
of it adds the interpreter start-up plus its own work.  Target: flannel ADD median <= 60 ms.

What is measured (wall time of one process, start to exit, as the runtime sees it):

* ``flannel ADD``: the real console script (``.venv/bin/flannel``), which reads subnet.env, saves the delegate
  config and executes ``/usr/lib/cni/bridge`` (which executes ``host-local``);
* ``bridge ADD``: ``/usr/lib/cni/bridge`` called directly with the very config flannel hands it;
* ``flannel start-up``: the console script with no CNI_COMMAND (prints its version and exits): the floor
  that interpreter start-up and imports set.

Set-up: a 1-node netns test bed (``support.cluster``, no etcd/flanneld) with a hand-written
subnet.env (100.64.7.1/24), one pod namespace reused by every iteration.  The timing loop runs in a child
process inside the node namespace, so ``ip netns exec`` is not part of any figure.  ADD and DEL alternate
(only ADD is timed), flannel and bridge iterations are interleaved so drift affects both alike.  host-local
and flannel keep their state in a temp dir.  Everything is removed at the end, also on failure.

Usage (root)::

    .venv/bin/python bench/cni_add.py [--iterations 100] [--warmup 5] [--output bench/results/cni_add.json]

Prints one line per figure and writes the figures plus the raw samples to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEBIAN_CNI = Path("/usr/lib/cni")
SUBNET_ENV = "FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
TARGET_MEDIAN_MS = 60.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p95 of 100 samples is the 95th smallest)."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p95_ms": round(percentile(samples, 95), 2),
        "min_ms": round(min(samples), 2),
        "max_ms": round(max(samples), 2),
        "samples_ms": [round(x, 3) for x in samples],
    }


# --------------------------------------------------------------------------------------------------------
# Inner: runs inside the node namespace, spawns the plugins, reports raw timings as JSON on stdout
# --------------------------------------------------------------------------------------------------------


def _call(argv: list[str], env: dict[str, str], stdin: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=stdin.encode(), capture_output=True, env=env, check=False)
    dt = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} {env.get('CNI_COMMAND')} exited {proc.returncode}: "
                           f"{proc.stdout.decode(errors='replace')} {proc.stderr.decode(errors='replace')[-400:]}")
    return dt


def inner(params: dict[str, Any]) -> dict[str, list[float]]:
    base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_NETNS": params["netns"],
            "CNI_IFNAME": "eth0", "CNI_PATH": str(DEBIAN_CNI)}
    flannel_conf = json.dumps(params["flannel_conf"])
    bridge_conf = json.dumps(params["bridge_conf"])
    bridge = str(DEBIAN_CNI / "bridge")
    out: dict[str, list[float]] = {"flannel": [], "bridge": [], "startup": []}
    for i in range(params["warmup"] + params["iterations"]):
        record = i >= params["warmup"]
        for kind, argv, conf in (("flannel", [params["flannel"]], flannel_conf), ("bridge", [bridge], bridge_conf)):
            cid = f"bench-{kind}-{i:04d}"
            dt = _call(argv, {**base, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid}, conf)
            _call(argv, {**base, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid}, conf)
            if record:
                out[kind].append(dt)
        t0 = time.perf_counter()
        subprocess.run([params["flannel"]], env={"PATH": base["PATH"]}, capture_output=True, check=True)
        if record:
            out["startup"].append((time.perf_counter() - t0) * 1000)
    return out


# --------------------------------------------------------------------------------------------------------
# Outer: builds and removes the test bed
# --------------------------------------------------------------------------------------------------------


def plugins_version() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def outer(args: argparse.Namespace) -> dict[str, Any]:
    from support.cluster import Cluster, destroy_prefix

    from pyflannel.core import cni_conf

    if os.geteuid() != 0:
        raise SystemExit("bench/cni_add.py needs root (it creates network namespaces)")
    flannel = Path(args.flannel)
    if not flannel.exists():
        raise SystemExit(f"flannel console script not found: {flannel} (pip install -e .)")
    prefix = f"pfcnb{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="pyflannel-bench-cni-") as tmp:
        work = Path(tmp)
        c = Cluster(prefix=prefix, nodes=1, workdir=work / "cluster")
        try:
            c.up()
            node = c.nodes[0]
            node.subnet_file.write_text(SUBNET_ENV)
            pod = f"{prefix}-n1p1"
            subprocess.run(["ip", "netns", "add", pod], check=True, capture_output=True)
            c.exec(pod, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"])
            c.exec(pod, ["ip", "link", "set", "lo", "up"])
            flannel_conf = {
                "name": "cbr0", "cniVersion": "0.3.1", "type": "flannel",
                "delegate": {"hairpinMode": True, "isDefaultGateway": True},
                "subnetFile": str(node.subnet_file), "dataDir": str(work / "flannel-data"),
                "ipam": {"dataDir": str(work / "ipam")},
            }
            netconf = cni_conf.parse_netconf(json.dumps(flannel_conf))
            bridge_conf = cni_conf.delegate_config(netconf, cni_conf.parse_subnet_env(SUBNET_ENV))
            params = {"netns": f"/run/netns/{pod}", "flannel": str(flannel), "flannel_conf": flannel_conf,
                      "bridge_conf": bridge_conf, "iterations": args.iterations, "warmup": args.warmup}
            proc = c.exec(node.ns, [sys.executable, str(Path(__file__).resolve()), "--inner"],
                          input=json.dumps(params), timeout=60 + args.iterations * 5)
            raw = json.loads(proc.stdout)
            leftovers = sorted(os.listdir(work / "flannel-data"))
        finally:
            c.down()
            destroy_prefix(prefix)
    if leftovers:
        raise SystemExit(f"flannel left scratch files behind: {leftovers}")
    return {
        "benchmark": "cni_add",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "iterations": args.iterations,
        "warmup": args.warmup,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "containernetworking_plugins": plugins_version()},
        "target_flannel_add_median_ms": TARGET_MEDIAN_MS,
        "flannel_add": summary(raw["flannel"]),
        "bridge_add": summary(raw["bridge"]),
        "flannel_startup": summary(raw["startup"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "cni_add.json"))
    ap.add_argument("--flannel", default=str(Path(sys.executable).parent / "flannel"))
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        json.dump(inner(json.load(sys.stdin)), sys.stdout)
        return 0
    res = outer(args)
    for label, key in (("flannel ADD", "flannel_add"), ("bridge ADD", "bridge_add"),
                       ("flannel start-up", "flannel_startup")):
        print(f"{label} median: {res[key]['median_ms']:.1f} ms")
        print(f"{label} p95: {res[key]['p95_ms']:.1f} ms")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
