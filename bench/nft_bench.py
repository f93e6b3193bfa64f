"""Benchmark: what the firewall rules cost, nftables (NftablesFirewall) next to iptables (iptables-restore).

Why: both modes re-check their rules every resync period (``--iptables-resync``, 5 s by default in
flannel) and rewrite them when they drifted, and both write them once at start. The nftables path
runs ``nft`` two or three times per resync; this shows what that costs against the iptables path.

Figures (wall time in the calling process, milliseconds; median / p95 over ``--iterations``):

* ``nft setup``: a fresh NftablesFirewall's first ``ensure`` on a kernel without flannel tables
  (includes the one-time ``masquerade fully-random`` probe: that is what a daemon start pays);
* ``nft resync``: ``ensure`` when nothing drifted (read back both tables, compare);
* ``nft repair``: ``ensure`` after ``flannel-ipv4`` was deleted (read back, rewrite it in one transaction);
* ``ipt setup``: one ``iptables-restore --noflush`` of the same rules (FLANNEL-POSTRTG, FLANNEL-FWD and
  their jumps) from empty chains;
* ``ipt resync``: one ``iptables-save`` (what a resync without drift needs to compare);
* ``ipt repair``: ``iptables-save`` + ``iptables-restore --noflush`` after FLANNEL-FWD was flushed.

Set-up: one empty network namespace ``pfnb<hex>``; the loop runs in a child inside it (``ip netns exec``
is not part of any figure). IPv4 rules (100.64.0.0/16, node 100.64.7.0/24, ip-masq); the IPv6 table
exists empty, as flanneld leaves it. The namespace is deleted at the end, also on failure.

Usage (root)::

    .venv/bin/python bench/nft_bench.py [--iterations 50] [--output bench/results/nft_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NETWORK, SUBNET = IPv4Network("100.64.0.0/16"), IPv4Network("100.64.7.0/24")


def _ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def _run(argv: list[str], stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def inner(iterations: int) -> dict[str, list[float]]:
    from pyflannel.adapters.nftables import NftablesFirewall
    from pyflannel.core.rules import forward_chain, masq_chain, render_restore
    from pyflannel.ports import FirewallSpec

    spec = FirewallSpec(network=NETWORK, subnet=SUBNET, ip_masq=True)
    chains = [masq_chain(NETWORK, SUBNET, True), forward_chain(NETWORK)]
    with_jumps = render_restore(chains, {(c.table, c.chain) for c in chains})
    bodies_only = render_restore(chains, set())
    cleanup = (
        "*nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n"
        "-F FLANNEL-POSTRTG\n-X FLANNEL-POSTRTG\nCOMMIT\n"
        "*filter\n-D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n"
        "-F FLANNEL-FWD\n-X FLANNEL-FWD\nCOMMIT\n"
    )
    out: dict[str, list[float]] = {k: [] for k in ("nft_setup", "nft_resync", "nft_repair",
                                                   "ipt_setup", "ipt_resync", "ipt_repair")}
    for _ in range(iterations):
        NftablesFirewall().cleanup()
        fw = NftablesFirewall()
        ensure = partial(fw.ensure, spec)
        out["nft_setup"].append(_ms(ensure))
        out["nft_resync"].append(_ms(ensure))
        _run(["nft", "delete", "table", "ip", "flannel-ipv4"])
        out["nft_repair"].append(_ms(ensure))
    NftablesFirewall().cleanup()
    for _ in range(iterations):
        out["ipt_setup"].append(_ms(lambda: _run(["iptables-restore", "-w", "5", "--noflush"], with_jumps)))
        out["ipt_resync"].append(_ms(lambda: _run(["iptables-save"])))
        _run(["iptables", "-w", "5", "-F", "FLANNEL-FWD"])
        out["ipt_repair"].append(_ms(lambda: (_run(["iptables-save"]),
                                              _run(["iptables-restore", "-w", "5", "--noflush"], bodies_only))))
        _run(["iptables-restore", "-w", "5", "--noflush"], cleanup)
    return out


def _summary(v: list[float]) -> dict[str, float]:
    s = sorted(v)
    return {"median": round(statistics.median(s), 2), "p95": round(s[round(0.95 * (len(s) - 1))], 2),
            "min": round(s[0], 2), "n": len(s)}


def _version(argv: list[str]) -> str:
    try:
        return _run(argv).strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def outer(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("bench/nft_bench.py needs root (it creates a network namespace)")
    ns = f"pfnb{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), "--inner",
                               str(args.iterations)], capture_output=True, text=True, check=False,
                              timeout=60 + args.iterations * 10)
        if proc.returncode != 0:
            raise SystemExit(f"bench/nft_bench.py inner loop failed: {proc.stderr.strip()[-800:]}")
        raw = json.loads(proc.stdout)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    return {
        "benchmark": "nft_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "nft": _version(["nft", "--version"]), "iptables": _version(["iptables", "--version"])},
        "iterations": args.iterations,
        **{k: _summary(v) for k, v in raw.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "nft_bench.json"))
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner is not None:
        print(json.dumps(inner(args.inner)))
        return 0
    res = outer(args)
    labels = {"nft_setup": "nft setup (first ensure)", "nft_resync": "nft resync, no drift",
              "nft_repair": "nft repair (table deleted)", "ipt_setup": "iptables-restore setup",
              "ipt_resync": "iptables resync check (iptables-save)", "ipt_repair": "iptables repair (save+restore)"}
    for key, label in labels.items():
        s = res[key]
        print(f"{label}: median {s['median']} ms, p95 {s['p95']} ms (n={s['n']})")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
