"""Issue 11's scale figures, pyflannel's flanneld and Go flanneld v0.28.9 measured the same way in one run.

For each daemon, in a fresh one-node cluster (real etcd, Network 100.64.0.0/14, SubnetLen 29, synthetic
peer leases as Go flanneld writes them, PublicIPs in 198.19.0.0/16):

1. 1000 peers: fresh node -> all 1000 installed; put -> route and delete -> route gone (``--reps``);
   churn (``--churn-rate`` puts/deletes a second for ``--churn-seconds``): daemon CPU, then no route,
   neighbour or FDB entry missing or stale.
2. 5000 peers: fresh node -> all 5000 installed (time and VmHWM); idle CPU for ``--idle`` s; put -> route;
   VmHWM; a route, a neighbour and an FDB entry deleted by hand -> back (bounded by ``--repair-bound``).

"Installed" is seen by an rtnetlink subscription in the node (bench/scale_agent.py), not the daemon's log,
so both daemons are timed the same way. CPU is utime+stime of the daemon from /proc/<pid>/stat (the
children's, i.e. iptables runs, are reported separately). Prints each figure, Go's and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from support.checks import kernel
from support.cluster import Cluster, Node, child_env
from support.peers import find

from bench.common import new_cluster, report, reset_node, summary, synthetic_leases, vm_hwm_kb

CONFIG = '{"Network": "100.64.0.0/14", "SubnetLen": 29, "Backend": {"Type": "vxlan"}}'
NET = IPv4Network("100.64.0.0/14")
REPO = Path(__file__).resolve().parents[1]
GO_FLANNELD = find("flanneld") or REPO / "build" / "testdeps" / "flanneld"
TICK = os.sysconf("SC_CLK_TCK")


def subnets() -> list[str]:
    return [str(s) for s in NET.subnets(new_prefix=29)]


def keyname(s: str) -> str:
    n = IPv4Network(s)
    return f"{n.network_address}-{n.prefixlen}"


def cpu(pid: int) -> tuple[float, float]:
    """(utime+stime, cutime+cstime) of ``pid`` in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


class Agent:
    """bench/scale_agent.py running in a node's namespace."""

    def __init__(self, c: Cluster, node: Node) -> None:
        env = child_env({"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
        self.p = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-m", "bench.scale_agent",
                                   c.etcd_endpoint], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env, cwd=REPO)
        assert json.loads(self.p.stdout.readline())["ready"]  # type: ignore[union-attr]

    def __call__(self, **cmd: Any) -> dict[str, Any]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"scale agent died during {cmd['op']}")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.close()  # type: ignore[union-attr]
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Run:
    """One daemon (pyflannel or Go flanneld) through both phases."""

    def __init__(self, impl: str, args: argparse.Namespace) -> None:
        self.impl, self.args = impl, args
        self.binary: Path | None = None if impl == "pyflannel" else Path(GO_FLANNELD)
        self.extra = [f"-resync-period={args.resync_period}"] if impl == "pyflannel" and args.resync_period else []
        self.fig: dict[str, Any] = {}
        self.runs: list[tuple[str, Any]] = []
        self.c: Cluster = new_cluster(1, "s" + impl[0])
        self.node = self.c.nodes[0]
        self.agent: Agent | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.all = subnets()
        if impl == "pyflannel" and args.profile:
            self.binary = self.c.workdir / "flanneld-profiled"
            self.binary.write_text("#!/bin/sh\nexec env PYTHONPATH=" + str(REPO / "tests") + " " + sys.executable
                                   + ' -m support.bench_helpers "$PROFILE_OUT" -- "$@"\n')
            self.binary.chmod(0o755)

    def note(self, name: str, value: Any) -> None:
        self.fig[name] = value
        self.runs.append((name, value))
        print(f"  [{self.impl}] {name}: {value if not isinstance(value, float) else round(value, 4)}", flush=True)

    def own_key(self) -> str | None:
        try:
            s = self.c.read_subnet_env(self.node)["FLANNEL_SUBNET"]
        except (FileNotFoundError, KeyError):
            return None
        return keyname(str(IPv4Network(s, strict=False)))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.c.stop_flanneld(self.node, signal.SIGTERM)
        key = self.own_key()
        if key:
            self.c.etcdctl("del", f"/coreos.com/network/subnets/{key}")
        if self.agent:
            self.agent.close()
            self.agent = None

    def fresh_start(self, k: int) -> None:
        """Fresh node (no flannel.1, no subnet file), start the daemon, time until k peers are installed."""
        reset_node(self.c, self.node)
        self.agent = Agent(self.c, self.node)
        t0 = time.monotonic()
        env = {"PROFILE_OUT": str(Path(self.args.profile) / f"pyflannel-k{k}.prof")} if self.args.profile else None
        self.proc = self.c.start_flanneld(self.node, self.extra, env=env, binary=self.binary)
        r = self.agent(op="wait_counts", k=k, timeout=180)
        if not r["ok"]:
            raise SystemExit(f"{self.impl}: only {r['counts']} of {k} installed after 180 s")
        self.note(f"join_k{k}_s", r["at"] - t0)
        self.note(f"vmhwm_after_join_k{k}_mb", vm_hwm_kb(self.proc.pid) / 1024)
        time.sleep(1.0)  # let the daemon finish its start-up (READY, iptables, first resync bookkeeping)

    def latency(self, k: int) -> None:
        assert self.agent
        probe = self.all[-5400:-5300]
        r = self.agent(op="latency", subnets=probe, reps=self.args.reps)
        a, d = summary(r["add_ms"]), summary(r["del_ms"])
        self.note(f"put_route_k{k}_ms", {"median": a["median"], "p95": a["p95"], "n": a["n"], "lost": r["lost"]})
        self.note(f"del_route_k{k}_ms", {"median": d["median"], "p95": d["p95"], "n": d["n"]})

    def consistent(self) -> dict[str, int]:
        """Missing and stale peer entries in the kernel against the leases in etcd."""
        out = self.c.etcdctl("get", "--prefix", "/coreos.com/network/subnets/").stdout.splitlines()
        own = self.own_key()
        want_r, want_n, want_f = set(), set(), set()
        for key, value in zip(out[0::2], out[1::2], strict=False):
            name = key.rsplit("/", 1)[-1]
            if name == own:
                continue
            net = IPv4Network(name.replace("-", "/"))
            d = json.loads(value)
            want_r.add(str(net))
            want_n.add((str(net.network_address), d["BackendData"]["VtepMAC"]))
            want_f.add((d["BackendData"]["VtepMAC"], d["PublicIP"]))
        k = kernel(self.node.ns)
        have_r = {r[0] for r in k["routes"]}
        have_n = {(n[0], n[1]) for n in k["neigh"]}
        have_f = {(f[0], f[1]) for f in k["fdb"]}
        return {"missing": len(want_r - have_r) + len(want_n - have_n) + len(want_f - have_f),
                "stale": len(have_r - want_r) + len(have_n - want_n) + len(have_f - want_f)}

    def churn(self) -> None:
        assert self.agent and self.proc
        pool = self.all[-5300:-5000]
        c0, ch0 = cpu(self.proc.pid)
        t0 = time.monotonic()
        r = self.agent(op="churn", pool=pool, seconds=self.args.churn_seconds, rate=self.args.churn_rate, seed=11)
        time.sleep(2.0)  # settle: the last events are applied
        c1, ch1 = cpu(self.proc.pid)
        self.note("churn_ops", f"{r['ops']} ({r['puts']} puts, {r['deletes']} deletes) in {r['seconds']:.1f} s, "
                  f"max lag of the driver {r['max_late_s'] * 1000:.0f} ms")
        self.note("churn_cpu_s", c1 - c0)
        self.note("churn_children_cpu_s", ch1 - ch0)
        self.note("churn_wall_s", time.monotonic() - t0)
        self.note("churn_end_missing_stale", self.consistent())
        for s in r["present"]:  # back to the 1000 peers
            self.c.etcdctl("del", f"/coreos.com/network/subnets/{keyname(s)}")

    def idle(self) -> None:
        assert self.proc
        c0, ch0 = cpu(self.proc.pid)
        time.sleep(self.args.idle)
        c1, ch1 = cpu(self.proc.pid)
        self.note(f"idle_{self.args.idle:.0f}s_cpu_s", c1 - c0)
        self.note(f"idle_{self.args.idle:.0f}s_children_cpu_s", ch1 - ch0)

    def repair(self, k: int) -> None:
        assert self.agent
        peers = self.all[-k:][:3]
        mac = lambda n: f"0e:00:{(n >> 24) & 255:02x}:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}"  # noqa: E731
        pub = lambda n: f"198.19.{n // 250}.{n % 250 + 1}"  # noqa: E731
        # synthetic_leases numbers the peers from first_public; the 5000 set was written as [-5000:-1000] from
        # 1000 and [-1000:] from 0, so peer i of [-5000:] is number 1000 + i for i < 4000.
        r = self.agent(op="repair", route=peers[0],
                       neigh=[str(IPv4Network(peers[1]).network_address), mac(1001)],
                       fdb=[mac(1002), pub(1002)], bound=self.args.repair_bound)
        for kind in ("route", "neigh", "fdb"):
            v = r[f"{kind}_s"]
            self.note(f"repair_{kind}_s", v if v is not None else f"not repaired within {self.args.repair_bound:.0f} s")

    def run(self) -> dict[str, Any]:
        try:
            self.c.put_config(CONFIG)
            t = time.monotonic()
            synthetic_leases(self.c, [keyname(s) for s in self.all[-1000:]])
            print(f"  [{self.impl}] 1000 leases written in {time.monotonic() - t:.1f} s; load {load()}", flush=True)
            self.fresh_start(1000)
            if not self.args.join_only:
                self.latency(1000)
            if self.args.churn_seconds > 0 and not self.args.join_only:
                print(f"  [{self.impl}] churn; load {load()}", flush=True)
                self.churn()
            self.stop()
            if self.args.only_1000:
                return self.fig
            t = time.monotonic()
            synthetic_leases(self.c, [keyname(s) for s in self.all[-5000:-1000]], first_public=1000)
            print(f"  [{self.impl}] 5000 leases written in {time.monotonic() - t:.1f} s; load {load()}", flush=True)
            self.fresh_start(5000)
            for _ in range(self.args.join_reps - 1):
                self.stop()
                self.fresh_start(5000)
            if self.args.join_reps > 1:
                joins = [v for n, v in self.runs if n == "join_k5000_s"]
                self.note("join_k5000_s", statistics.median(joins))
                self.note("join_k5000_all_s", [round(j, 3) for j in joins])
            if self.args.join_only:
                self.stop()
                return self.fig
            if self.args.idle > 0:
                self.idle()
            self.latency(5000)
            self.note("vmhwm_k5000_mb", vm_hwm_kb(self.proc.pid) / 1024)  # type: ignore[union-attr]
            if self.args.repair_bound > 0:
                self.repair(5000)
            self.note("load_at_end", load())
            self.stop()
        finally:
            if self.agent:
                self.agent.close()
            self.c.down()
        return self.fig


def ratio(a: Any, b: Any) -> str:
    try:
        return f"{float(a) / float(b):.2f}x"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", nargs="+", default=["pyflannel", "go"], choices=["pyflannel", "go"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--churn-seconds", type=float, default=120)
    ap.add_argument("--churn-rate", type=float, default=20)
    ap.add_argument("--idle", type=float, default=20)
    ap.add_argument("--repair-bound", type=float, default=15)
    ap.add_argument("--profile", metavar="DIR", help="run pyflannel's flanneld under cProfile (all threads); "
                    "DIR/pyflannel-k1000.prof and -k5000.prof; show with python -m support.bench_helpers --show F")
    ap.add_argument("--join-reps", type=int, default=1, help="fresh node -> 5000 peers this many times (median)")
    ap.add_argument("--join-only", action="store_true", help="only the fresh-node joins (and VmHWM)")
    ap.add_argument("--only-1000", action="store_true", help="skip the 5000-peer phase")
    ap.add_argument("--resync-period", type=int, default=0, help="pyflannel only; 0: the daemon's default")
    args = ap.parse_args()
    if "go" in args.impl and not Path(GO_FLANNELD).exists():
        raise SystemExit(f"Go flanneld not found at {GO_FLANNELD} (make testdeps)")
    figs: dict[str, dict[str, Any]] = {}
    for impl in args.impl:
        print(f"== {impl}; load {load()}", flush=True)
        figs[impl] = Run(impl, args).run()
    if len(figs) == 2:
        py, go = figs["pyflannel"], figs["go"]
        print("\nfigure: pyflannel / Go flanneld v0.28.9 = ratio")
        for name, v in py.items():
            g = go.get(name)
            if isinstance(v, dict) and isinstance(g, dict):
                for sub in ("median", "p95", "missing", "stale"):
                    if sub in v:
                        print(f"{name} {sub}: {v[sub]:.3f} / {g[sub]:.3f} = {ratio(v[sub], g[sub])}")
            elif isinstance(v, float):
                print(f"{name}: {v:.3f} / {g if not isinstance(g, float) else round(g, 3)} = {ratio(v, g)}")
    report("scale", {"args": vars(args), **figs})


if __name__ == "__main__":
    main()
