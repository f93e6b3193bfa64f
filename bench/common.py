"""Shared pieces of the benchmarks: a netns cluster with a real etcd, synthetic peer leases,
kernel counts, and the result file.

Every benchmark prints one line per figure (``name: value unit``) and writes
``bench/results/<bench>.json``. Nothing here asserts a target: the figures are compared with
the targets in bench/README.md by a person.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.checks import synthetic_leases
from support.cluster import Cluster, Node

__all__ = ["synthetic_leases"]

RESULTS = Path(__file__).resolve().parent / "results"
FLANNELD = str(Path(sys.executable).parent / "flanneld")


def new_cluster(nodes: int, tag: str) -> Cluster:
    prefix = f"pfb{tag}{secrets.token_hex(1)}"
    c = Cluster(prefix=prefix, nodes=nodes)
    c.up()
    try:
        c.start_etcd()
    except BaseException:
        c.down()
        raise
    return c


def in_lan(c: Cluster, code: str, timeout: float = 600) -> str:
    """Run an async snippet with an EtcdClient ``c`` inside the LAN namespace (where etcd listens)."""
    script = (
        "import asyncio, json, sys\nfrom pyflannel.adapters.etcd import EtcdClient, _b64\n"
        f"async def main():\n    async with EtcdClient(['{c.etcd_endpoint}'], timeout=30) as c:\n"
        + "\n".join("        " + line for line in code.strip().splitlines())
        + "\nasyncio.run(main())\n"
    )
    return c.exec(c.lan_ns, [sys.executable, "-c", script], timeout=timeout).stdout


COUNT_SCRIPT = """
import json, sys
from ipaddress import IPv4Network
from pyflannel.adapters.nlbulk import BulkNetlink
from pyroute2 import IPRoute
with IPRoute() as ipr:
    dev = ipr.link_lookup(ifname="flannel.1")
    up = ipr.link_lookup(ifname="eth0")
if not dev:
    print(json.dumps([0, 0, 0])); sys.exit()
s = BulkNetlink().observe(dev[0], "flannel.1", up[0], "eth0", IPv4Network("100.64.0.0/10"))
kinds = [type(e).__name__ for e in s]
print(json.dumps([kinds.count("Route"), kinds.count("Neigh"), kinds.count("Fdb")]))
"""


def kernel_counts(c: Cluster, node: Node) -> tuple[int, int, int]:
    out = c.exec(node.ns, [sys.executable, "-c", COUNT_SCRIPT], timeout=120).stdout
    r, n, f = json.loads(out)
    return r, n, f


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def wait_log(path: Path, marker: str, since: int, timeout: float) -> float:
    """Poll a log file (every 2 ms) for ``marker`` after byte offset ``since``; monotonic time seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with path.open("rb") as f:
                f.seek(since)
                if marker.encode() in f.read():
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"{marker!r} not in {path} after {timeout}s")


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def reset_node(c: Cluster, node: Node) -> None:
    """Make a node fresh: no flannel.1 (so no peer entries), no subnet file."""
    subprocess.run(["ip", "-n", node.ns, "link", "del", "flannel.1"], capture_output=True, check=False)
    node.subnet_file.unlink(missing_ok=True)


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q * (len(s) - 1))))
    return s[k]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p95": pct(values, 0.95), "min": min(values), "max": max(values),
            "n": len(values)}


def report(bench: str, figures: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = {"bench": bench, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host_cpus": os.cpu_count(),
           "figures": figures}
    (RESULTS / f"{bench}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {RESULTS / (bench + '.json')}")
