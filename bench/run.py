"""``make bench``: every benchmark in turn; each prints its figures and writes bench/results/<name>.json.

Run as root on an otherwise idle machine (the figures in bench/README.md were taken that way). The load
average is printed before each benchmark: rerun a figure taken under load.
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ["bench.scale"],  # issue 11: pyflannel vs Go flanneld v0.28.9, 1000/5000 peers (about 10 min)
    ["bench.cluster_bench"],  # 3 nodes, pyflannel then Go flanneld
    ["bench.watch_latency"],  # etcd's JSON gateway watch against its gRPC watch (builds bench/watchlat with Go)
    ["bench.join"],
    ["bench.iperf"],
    ["bench.iperf_backends"],
    ["bench.cni_add"],
    ["bench.nft_bench"],
    ["bench.iptables_probe"],
]


def main() -> int:
    rc = 0
    for argv in BENCHES:
        with open("/proc/loadavg") as f:
            print(f"== {argv[0]} (load {' '.join(f.read().split()[:3])})", flush=True)
        rc |= subprocess.run([sys.executable, "-m", *argv], check=False).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
