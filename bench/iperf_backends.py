"""iperf3 pod -> pod for vxlan, host-gw and wireguard, pyflannel and Go flanneld v0.28.9, in one run (issue 13).

Each (implementation, backend) gets a fresh 2-node cluster (real etcd, both nodes running the same
flanneld) and is measured as a ratio to node -> node on the LAN *in the same cluster*, pod and node runs
alternating, so a host whose speed drifts during the run moves both figures together. iperf3 TCP, one
stream, ``--seconds`` per run, median of ``--reps``. The data plane is the kernel's (or wireguard-go's),
so the ratios check device, MTU and route settings, and for wireguard which driver is in use.

Go flanneld's wireguard needs the kernel module (no userspace fallback); on a kernel without it the row
says "not runnable" with Go's own error, and pyflannel's row is wireguard-go. Prints a table; writes
bench/results/iperf_backends.json.

    PYTHONPATH=tests python -m bench.iperf_backends [--seconds 5] [--reps 3] [--only py:wireguard ...]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from support import checks, peers
from support.cluster import Cluster
from support.wgagent import PRIVATE_WG_DIR, kernel_wireguard_missing

from bench.common import new_cluster, report
from bench.iperf import iperf

CONFIGS = {
    "vxlan": '{"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}',
    "host-gw": '{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}',
    "wireguard": '{"Network": "100.64.0.0/16", "Backend": {"Type": "wireguard"}}',
}
IMPLS = {"py": "pyflannel", "go": "Go flanneld v0.28.9"}


def not_runnable(impl: str, backend: str) -> str | None:
    if impl == "go":
        missing = peers.missing_reason("flanneld")
        if missing:
            return missing
        if backend == "wireguard":
            return kernel_wireguard_missing()
    return None


def start(c: Cluster, impl: str, backend: str) -> None:
    c.put_config(CONFIGS[backend])
    for n in c.nodes:
        env = {"WIREGUARD_KEY_FILE": str(n.dir / "wgkey")}
        if impl == "go":
            c.start_flanneld(n, [], env, binary=peers.find("flanneld"))
        elif backend == "wireguard":
            # wireguard-go's UAPI socket directory is host-global: each node gets a private one.
            c.start_flanneld(n, [], env, wrapper=PRIVATE_WG_DIR)
        else:
            c.start_flanneld(n, [], env)
    for n in c.nodes:
        c.wait_subnet_env(n)


def driver_of(c: Cluster, impl: str, backend: str) -> str:
    if backend != "wireguard":
        return "kernel"
    text = c.nodes[0].flanneld_log.read_text(errors="replace")
    if impl == "py":
        return "wireguard-go" if "using userspace wireguard-go" in text else "kernel"
    return "kernel"


def measure(impl: str, backend: str, seconds: int, reps: int) -> dict[str, Any]:
    c = new_cluster(2, "b")
    try:
        start(c, impl, backend)
        (a,) = c.add_pods(c.nodes[0], 1)
        (b,) = c.add_pods(c.nodes[1], 1)
        checks.wait_for(lambda: c.ping(a, b.ip, timeout=1) and c.ping(b, a.ip, timeout=1), 60,
                        f"{impl} {backend}: pod to pod in both directions")
        mtu = int(c.read_subnet_env(c.nodes[0])["FLANNEL_MTU"])
        pod, node = [], []
        for _ in range(reps):
            pod.append(iperf(c, b.ns, a.ns, b.ip, seconds))
            node.append(iperf(c, c.nodes[1].ns, c.nodes[0].ns, c.nodes[1].lan_ip, seconds))
        p, d = statistics.median(pod), statistics.median(node)
        return {"runnable": True, "driver": driver_of(c, impl, backend), "pod_mtu": mtu, "pod_gbps": pod,
                "node_gbps": node, "pod_median_gbps": p, "node_median_gbps": d, "ratio": p / d}
    finally:
        c.down()


def table(results: dict[str, dict[str, Any]]) -> str:
    head = f"{'backend':<10} {'implementation':<20} {'driver':<13} {'MTU':>5} {'pod Gbit/s':>11} " \
           f"{'node Gbit/s':>12} {'pod/node':>9}"
    lines = [head, "-" * len(head)]
    for key, r in results.items():
        impl, backend = key.split(":")
        if not r["runnable"]:
            lines.append(f"{backend:<10} {IMPLS[impl]:<20} not runnable here: {r['reason']}")
            continue
        lines.append(f"{backend:<10} {IMPLS[impl]:<20} {r['driver']:<13} {r['pod_mtu']:>5} "
                     f"{r['pod_median_gbps']:>11.2f} {r['node_median_gbps']:>12.2f} {r['ratio']:>9.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="impl:backend pairs, e.g. py:wireguard go:vxlan")
    args = ap.parse_args()
    wanted = args.only or [f"{i}:{b}" for b in CONFIGS for i in IMPLS]
    results: dict[str, dict[str, Any]] = {}
    for key in wanted:
        impl, _, backend = key.partition(":")
        if impl not in IMPLS or backend not in CONFIGS:
            raise SystemExit(f"--only: unknown pair {key!r} (impl py|go, backend {'|'.join(CONFIGS)})")
        reason = not_runnable(impl, backend)
        if reason is not None:
            results[key] = {"runnable": False, "reason": reason}
        else:
            results[key] = measure(impl, backend, args.seconds, args.reps)
        r = results[key]
        print(f"{key}: " + (f"pod/node {r['ratio']:.2f} ({r['pod_median_gbps']:.2f} / {r['node_median_gbps']:.2f}"
                            f" Gbit/s, {r['driver']})" if r["runnable"] else f"not runnable: {r['reason']}"),
              flush=True)
    print(table(results))
    report("iperf_backends", {"seconds": args.seconds, "reps": args.reps, "results": results})


if __name__ == "__main__":
    main()
