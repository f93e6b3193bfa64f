"""Fresh node to K peers: process start until K routes, K neighbours and K FDB entries exist.

Config uses SubnetLen 29 so that 10 000 peers fit (Network 100.64.0.0/14); each peer lease
sits on its own etcd lease, as Go flanneld writes them. The node is made fresh before each
run (no flannel.1, no subnet file). The end is the daemon's "Running:" log line, which it
writes after its first complete reconcile pass; the kernel counts are checked afterwards.
Peak RSS is VmHWM of the daemon process at that moment.
"""

from __future__ import annotations

import argparse
import signal
import time
from ipaddress import IPv4Network

from bench.common import kernel_counts, log_size, new_cluster, report, reset_node, summary, synthetic_leases, wait_log

CONFIG = '{"Network": "100.64.0.0/14", "SubnetLen": 29, "Backend": {"Type": "vxlan"}}'


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    c = new_cluster(1, "j")
    figures: dict[str, object] = {}
    try:
        c.put_config(CONFIG)
        node = c.nodes[0]
        subnets = [f"{s.network_address}-29" for s in IPv4Network("100.64.0.0/14").subnets(new_prefix=29)]
        have = 0
        for k in sorted(args.k):
            t = time.monotonic()
            # peers live at the top of the range, the node allocates from the bottom
            synthetic_leases(c, subnets[-k:len(subnets) - have] if have else subnets[-k:], first_public=have)
            have = k
            print(f"(k={k}: leases written in {time.monotonic() - t:.1f}s)")
            times, rss = [], []
            for _ in range(args.runs):
                reset_node(c, node)
                since = log_size(node.flanneld_log)
                t0 = time.monotonic()
                proc = c.start_flanneld(node)
                t1 = wait_log(node.flanneld_log, "Running: lease", since, timeout=120)
                from bench.common import vm_hwm_kb

                rss.append(vm_hwm_kb(proc.pid) / 1024)
                counts = kernel_counts(c, node)
                c.stop_flanneld(node, signal.SIGTERM)
                c.etcdctl("del", "--prefix", "/coreos.com/network/subnets/100.64.0.")  # the node's own lease
                if counts != (k, k, k):
                    raise SystemExit(f"k={k}: kernel has {counts}, expected {(k, k, k)}")
                times.append(t1 - t0)
            s = summary(times)
            figures[f"join_k{k}_s"] = s
            figures[f"peak_rss_k{k}_mb"] = max(rss)
            print(f"join K={k}: median {s['median']:.3f} s (min {s['min']:.3f}, max {s['max']:.3f}, n={s['n']})")
            print(f"peak RSS K={k}: {max(rss):.1f} MB")
    finally:
        c.down()
    report("join", figures)


if __name__ == "__main__":
    main()
