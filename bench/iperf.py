"""Data-plane throughput: iperf3 pod -> pod over vxlan, as a share of node -> node on the LAN.

Same iperf3 settings for both (TCP, one stream, 5 s, 3 repetitions, median). The kernel does
the encapsulation, so the ratio checks the MTU and device settings, not Python.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from support.checks import DEFAULT_CONFIG, wait_converged

from bench.common import new_cluster, report


def iperf(c, server_ns: str, client_ns: str, dst: str, seconds: int) -> float:  # type: ignore[no-untyped-def]
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = c.exec(client_ns, ["iperf3", "-c", dst, "-p", "5201", "-t", str(seconds), "-J"], timeout=seconds + 30)
        bps = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        return float(bps) / 1e9
    finally:
        srv.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    c = new_cluster(2, "i")
    try:
        c.put_config(DEFAULT_CONFIG)
        for n in c.nodes:
            c.start_flanneld(n)
        for n in c.nodes:
            c.wait_subnet_env(n)
        wait_converged(c)
        (a,) = c.add_pods(c.nodes[0], 1)
        (b,) = c.add_pods(c.nodes[1], 1)
        vx, direct = [], []
        for _ in range(args.reps):
            vx.append(iperf(c, b.ns, a.ns, b.ip, args.seconds))
            direct.append(iperf(c, c.nodes[1].ns, c.nodes[0].ns, c.nodes[1].lan_ip, args.seconds))
        v, d = statistics.median(vx), statistics.median(direct)
        print(f"iperf3 pod->pod over vxlan: {v:.2f} Gbit/s (median of {args.reps})")
        print(f"iperf3 node->node on the LAN: {d:.2f} Gbit/s")
        print(f"vxlan/direct ratio: {v / d:.2f}")
        figures = {"vxlan_gbps": vx, "direct_gbps": direct, "ratio": v / d}
    finally:
        c.down()
    report("iperf", figures)


if __name__ == "__main__":
    main()
