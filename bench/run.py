"""``make bench``: every benchmark in turn; each prints its figures and writes bench/results/<name>.json.

Run as root on an otherwise idle machine (the figures in bench/README.md were taken that way).
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ["bench.join"],
    ["bench.cluster_bench"],
    ["bench.iperf"],
    ["bench.cni_add"],
]


def main() -> int:
    rc = 0
    for argv in BENCHES:
        print(f"== {argv[0]}", flush=True)
        rc |= subprocess.run([sys.executable, "-m", *argv], check=False).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
