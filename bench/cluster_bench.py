"""Control-plane behaviour of a small running cluster: event latency, a 4th node joining,
4 daemons started at once, bursts of lease changes, and etcd requests while idle.

``--impl pyflannel go`` (the default) runs everything for pyflannel's flanneld and then, in a fresh
cluster, for Go flanneld v0.28.9 (build/testdeps/flanneld), and prints each figure with the ratio.
Readiness is seen in the kernel (subnet file written and routes to the 3 peers), not in a log line, so
both daemons are timed the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
import urllib.request
from ipaddress import IPv4Network
from pathlib import Path

from pyroute2 import IPRoute
from support.cluster import Cluster, ClusterError, Node

from bench.common import in_lan, new_cluster, report, reset_node, summary

GO_FLANNELD = Path(__file__).resolve().parents[1] / "build" / "testdeps" / "flanneld"
BINARY: Path | None = None  # None: pyflannel's flanneld

CONFIG = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'


def subnet_of(c: Cluster, node: Node) -> str:
    return str(IPv4Network(c.read_subnet_env(node)["FLANNEL_SUBNET"], strict=False))


def flannel_routes(ipr: IPRoute) -> set[str]:
    idx = ipr.link_lookup(ifname="flannel.1")
    if not idx:
        return set()
    return {f"{r.get('RTA_DST')}/{r['dst_len']}" for r in ipr.route("dump", family=2, table=254, oif=idx[0])}


def expected_routes(c: Cluster, node: Node) -> set[str]:
    out = c.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/").stdout.split()
    mine = subnet_of(c, node)
    nets = {k.rsplit("/", 1)[-1].replace("-", "/") for k in out if k}
    return nets - {mine}


def clean_all(c: Cluster) -> None:
    for n in c.nodes:
        if c.flanneld_process(n) and c.flanneld_process(n).poll() is None:  # type: ignore[union-attr]
            c.stop_flanneld(n, signal.SIGKILL)
        reset_node(c, n)
    c.etcdctl("del", "--prefix", "/coreos.com/network/subnets/")


def start_and_wait(c: Cluster, nodes: list[Node]) -> None:
    for n in nodes:
        c.start_flanneld(n, binary=BINARY)
    for n in nodes:
        c.wait_subnet_env(n)


def latency(c: Cluster, count: int) -> dict[str, object]:
    taken = {subnet_of(c, n) for n in c.nodes[:3]}
    free = [str(s) for s in IPv4Network("100.64.0.0/16").subnets(new_prefix=24)][200:230]
    free = [s for s in free if s not in taken][:20]
    out = c.exec(c.nodes[0].ns, [sys.executable, "-m", "bench.probe_latency", c.etcd_endpoint, str(count),
                                 ",".join(free)], timeout=600).stdout
    d = json.loads(out)
    a, r = summary(d["add_ms"]), summary(d["del_ms"])
    print(f"event latency add (put -> route installed): median {a['median']:.2f} ms, p95 {a['p95']:.2f} ms "
          f"(n={a['n']})")
    print(f"event latency delete (delete -> route removed): median {r['median']:.2f} ms, p95 {r['p95']:.2f} ms")
    return {"event_add_ms": a, "event_del_ms": r}


def fourth_node(c: Cluster, trials: int) -> dict[str, object]:
    n4 = c.nodes[3]
    peers = c.nodes[:3]
    iprs = {n.name: IPRoute(netns=n.ns, flags=0) for n in peers}
    ready, seen = [], []
    try:
        for _ in range(trials):
            if c.flanneld_process(n4) and c.flanneld_process(n4).poll() is None:  # type: ignore[union-attr]
                c.stop_flanneld(n4, signal.SIGKILL)
            key = n4_key(c)
            if key:  # a joining node is new: its old lease and device go
                c.etcdctl("del", f"/coreos.com/network/subnets/{key}")
            reset_node(c, n4)
            time.sleep(0.3)
            t0 = time.monotonic()
            c.start_flanneld(n4, binary=BINARY)
            want = {subnet_of(c, p) for p in peers}
            with IPRoute(netns=n4.ns, flags=0) as ipr4:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        mine = subnet_of(c, n4)
                    except (FileNotFoundError, KeyError):
                        mine = ""
                    if mine and want <= flannel_routes(ipr4):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("4th node: no subnet file or routes to the 3 peers after 30 s")
                    time.sleep(0.001)
            t_ready = time.monotonic()
            while not all(mine in flannel_routes(iprs[p.name]) for p in peers):
                time.sleep(0.001)
            t_seen = time.monotonic()
            ready.append((t_ready - t0) * 1000)
            seen.append((t_seen - t0) * 1000)
    finally:
        for ipr in iprs.values():
            ipr.close()
    r, s = summary(ready), summary(seen)
    print(f"4th node join, process start -> subnet.env + routes to 3 peers: median {r['median']:.0f} ms "
          f"(p95 {r['p95']:.0f}, n={r['n']})")
    print(f"4th node join, process start -> all 3 peers have its route: median {s['median']:.0f} ms")
    return {"join_to_ready_ms": r, "peers_have_route_ms": s}


def n4_key(c: Cluster) -> str | None:
    try:
        sn = IPv4Network(c.read_subnet_env(c.nodes[3])["FLANNEL_SUBNET"], strict=False)
    except (FileNotFoundError, KeyError):
        return None
    return f"{sn.network_address}-{sn.prefixlen}"


def four_at_once(c: Cluster, trials: int) -> dict[str, object]:
    ok = 0
    exited: list[str] = []
    for _ in range(trials):
        clean_all(c)
        try:
            start_and_wait(c, c.nodes)
        except ClusterError as e:  # Go flanneld exits 1 when it loses the lease-creation race
            exited.append(str(e).splitlines()[0])
            continue
        deadline = time.monotonic() + 10
        full = False
        while time.monotonic() < deadline and not full:
            full = True
            for n in c.nodes:
                with IPRoute(netns=n.ns, flags=0) as ipr:
                    if flannel_routes(ipr) != expected_routes(c, n):
                        full = False
                        break
            time.sleep(0.2)
        ok += full
    print(f"4 daemons started at once: full mesh in {ok} of {trials} trials"
          + (f" ({len(exited)} with a daemon that exited: {exited[0]})" if exited else ""))
    return {"four_at_once_full_mesh": f"{ok}/{trials}", "four_at_once_daemon_exited": exited}


def bursts(c: Cluster) -> dict[str, object]:
    running = c.nodes[:3]
    taken = {subnet_of(c, n) for n in running}
    free = [s for s in IPv4Network("100.64.0.0/16").subnets(new_prefix=24) if str(s) not in taken][:50]
    keys = [f"/coreos.com/network/subnets/{s.network_address}-24" for s in free]
    vals = [json.dumps({"PublicIP": f"198.19.100.{i + 1}", "PublicIPv6": None, "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": f"0e:bb:00:00:00:{i:02x}"}}, separators=(",", ":"))
            for i in range(50)]
    results = {}

    def installed() -> int:
        counts = []
        for n in running:
            with IPRoute(netns=n.ns, flags=0) as ipr:
                r = flannel_routes(ipr)
            counts.append(sum(str(s) in r for s in free))
        return min(counts)

    def settle(target: int) -> int:
        deadline = time.monotonic() + 5
        got = installed()
        while got != target and time.monotonic() < deadline:
            time.sleep(0.1)
            got = installed()
        return got

    puts = ", ".join(f'{{"request_put": {{"key": _b64({k!r}), "value": _b64({v!r})}}}}' for k, v in zip(keys, vals,
                                                                                                     strict=True))
    in_lan(c, f"await c.txn({{'compare': [], 'success': [{puts}], 'failure': []}})")
    results["burst_txn_50_installed"] = f"{settle(50)}/50"
    in_lan(c, f"for k in {keys!r}:\n    await c.delete(k)")
    results["burst_50_deletes_removed"] = f"{50 - settle(0)}/50"
    in_lan(c, f"for k, v in zip({keys!r}, {vals!r}):\n    await c.put(k, v)")
    results["burst_50_puts_installed"] = f"{settle(50)}/50"
    in_lan(c, f"for k in {keys!r}:\n    await c.delete(k)")
    results["burst_50_deletes_after_puts_removed"] = f"{50 - settle(0)}/50"
    for k, v in results.items():
        print(f"{k}: {v} (worst node)")
    return results


def etcd_load(c: Cluster, seconds: float) -> dict[str, object]:
    def counters() -> dict[str, float]:
        text = c.exec(c.lan_ns, [sys.executable, "-c",
                                 f"import urllib.request;print(urllib.request.urlopen('{c.etcd_endpoint}/metrics')"
                                 ".read().decode())"]).stdout
        out: dict[str, float] = {}
        for m in re.finditer(r'^grpc_server_(?:handled|msg_received)_total\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = f"{labels.get('grpc_method')}:{'msg' if 'msg_received' in m.group(0) else 'handled'}"
            out[key] = out.get(key, 0) + float(m.group(2))
        return out

    before = counters()
    time.sleep(seconds)
    after = counters()
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    print(f"etcd requests from 3 idle nodes in {seconds:.0f}s (grpc messages, by method): {delta or 'none'}")
    return {"idle_etcd_requests": delta, "idle_seconds": seconds}


def run(impl: str, args: argparse.Namespace) -> dict[str, object]:
    global BINARY
    BINARY = None if impl == "pyflannel" else GO_FLANNELD
    print(f"== {impl}; load {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    c = new_cluster(4, "c" + impl[0])
    figures: dict[str, object] = {}
    try:
        c.put_config(CONFIG)
        start_and_wait(c, c.nodes[:3])
        time.sleep(0.5)
        figures.update(latency(c, args.events))
        if args.idle > 0:
            figures.update(etcd_load(c, args.idle))
        figures.update(bursts(c))
        if args.trials > 0:
            figures.update(fourth_node(c, args.trials))
            figures.update(four_at_once(c, args.trials))
    finally:
        c.down()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--idle", type=float, default=30)
    ap.add_argument("--impl", nargs="+", default=["pyflannel", "go"], choices=["pyflannel", "go"])
    args = ap.parse_args()
    _ = urllib  # the etcd metrics are read from inside the LAN namespace
    if "go" in args.impl and not GO_FLANNELD.exists():
        raise SystemExit(f"Go flanneld not found at {GO_FLANNELD} (make testdeps)")
    figs = {impl: run(impl, args) for impl in args.impl}
    if len(figs) == 2:
        py, go = figs["pyflannel"], figs["go"]
        print("\nfigure: pyflannel / Go flanneld v0.28.9 = ratio")
        for name, v in py.items():
            g = go.get(name)
            if isinstance(v, dict) and isinstance(g, dict) and "median" in v:
                for sub in ("median", "p95"):
                    print(f"{name} {sub}: {v[sub]:.2f} / {g[sub]:.2f} = {v[sub] / g[sub]:.2f}x")
            else:
                print(f"{name}: {v} / {g}")
    report("cluster", figs)


if __name__ == "__main__":
    main()
