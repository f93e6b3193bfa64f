"""Benchmark: the cost of one iptables resync check with 20,000 foreign rules in nat and filter.

Why: the daemon re-checks its rules every ``--iptables-resync`` seconds (5 by default). The old
check ran a full ``iptables-save`` of every table and searched it; on a node where kube-proxy
keeps tens of thousands of rules that is the expensive part. The new check
(``IptablesFirewall.missing`` / ``RuleManager.ensure`` without a saved dump) reads only our
chains and their parents with ``iptables -S``.

Figures (wall time in the calling process, milliseconds; median and p95 over ``--iterations``):

* ``before: iptables-save + search``: what a resync without drift cost before (save every table,
  find our chains and jumps in the text);
* ``iptables-save -t nat``: one table only, for comparison (nf_tables fetches the ruleset anyway);
* ``after: Firewall.missing (IPv4)``: the new probe, 2 reads per chain (FLANNEL-POSTRTG, FLANNEL-FWD);
* ``after: RuleManager.ensure, no drift``: the old API on the new probe, plus the FORWARD policy read.

Set-up: one network namespace ``pfip<hex>`` with 20,000 rules in a foreign chain in each of nat and
filter (``--foreign``), plus our chains written by ``IptablesFirewall.ensure``; the loop runs in a child
inside the namespace (``ip netns exec`` is not part of any figure). The namespace is deleted at the end,
also on failure.

Usage (root)::

    .venv/bin/python bench/iptables_probe.py [--iterations 20] [--foreign 20000]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]


def timed(fn: Callable[[], object], n: int) -> dict[str, float]:
    vals = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        vals.append((time.perf_counter() - t0) * 1000)
    vals.sort()
    return {"median_ms": round(statistics.median(vals), 2), "p95_ms": round(vals[int(0.95 * (len(vals) - 1))], 2),
            "n": n}


def inside(iterations: int, foreign: int) -> dict[str, dict[str, float]]:
    from pyflannel.adapters.iptables import IptablesFirewall, RuleManager, _run
    from pyflannel.core.rules import chain_lines, forward_chain, has_jump, masq_chain
    from pyflannel.ports import FirewallSpec

    for table in ("nat", "filter"):
        lines = [f"*{table}", ":KUBE-FOREIGN - [0:0]"]
        lines += [f"-A KUBE-FOREIGN -s 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32 "
                  f"-m comment --comment \"svc {i}\" -j RETURN" for i in range(foreign)]
        _run(["iptables-restore", "--noflush"], "\n".join([*lines, "COMMIT", ""]))
    net, sub = IPv4Network("100.64.0.0/16"), IPv4Network("100.64.7.0/24")
    spec = FirewallSpec(network=net, subnet=sub, ip_masq=True, forward=True)
    fw = IptablesFirewall()
    fw.ensure(spec)
    assert fw.missing(spec) == []
    chains = [masq_chain(net, sub, True), forward_chain(net)]
    rm = RuleManager()
    rm.ensure(chains, True)

    def before() -> None:
        saved = _run(["iptables-save"])
        for c in chains:
            has_jump(saved, c)
            chain_lines(saved, c.table, c.chain)

    return {
        "before: iptables-save + search": timed(before, iterations),
        "iptables-save -t nat": timed(lambda: _run(["iptables-save", "-t", "nat"]), iterations),
        "after: Firewall.missing (IPv4)": timed(lambda: fw.missing(spec), iterations),
        "after: RuleManager.ensure, no drift": timed(lambda: rm.ensure(chains, True), iterations),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--foreign", type=int, default=20_000)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--output", default=str(HERE / "results" / "iptables_probe.json"))
    a = ap.parse_args()
    if a.inside:
        print(json.dumps(inside(a.iterations, a.foreign)))
        return 0
    ns = f"pfip{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside",
                            f"--iterations={a.iterations}", f"--foreign={a.foreign}"],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            return 1
        figures = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"iptables resync check with {a.foreign} foreign rules in nat and in filter ({a.iterations} runs):")
    for name, f in figures.items():
        print(f"  {name}: {f['median_ms']} ms median, {f['p95_ms']} ms p95")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "iptables_probe", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "foreign_rules_per_table": a.foreign, "figures": figures}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
