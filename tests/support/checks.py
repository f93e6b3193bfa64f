"""What tests, fault scenarios and benchmarks ask of a running netns cluster.

Reads the kernel state of a node with pyroute2 (routes on flannel.1, its neighbours and FDB
entries), the leases in etcd, and what reference-state.md says a node must hold for those
leases; plus a small polling helper. Shared so that every tier checks the same thing.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from support.cluster import Cluster, Node

DEFAULT_CONFIG = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
KernelState = dict[str, set[tuple[str, ...]]]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def start_cluster(
    prefix: str, workdir: Path, nodes: int = 3, extra: tuple[str, ...] = (), config: str | None = DEFAULT_CONFIG,
    converge: bool = True,
) -> Cluster:
    """A cluster that is up, with etcd, the config, and flanneld running and converged on every node.

    With ``config=None`` no config is put and nothing is waited for.
    """
    c = Cluster(prefix=prefix, nodes=nodes, workdir=workdir)
    try:
        c.up()
        c.start_etcd()
        if config is not None:
            c.put_config(config)
        for n in c.nodes:
            c.start_flanneld(n, extra)
        if config is not None:
            for n in c.nodes:
                c.wait_subnet_env(n)
            if converge:
                wait_converged(c)
    except BaseException:
        c.down()
        raise
    return c


def own_subnet(c: Cluster, node: Node) -> IPv4Network:
    return IPv4Network(c.read_subnet_env(node)["FLANNEL_SUBNET"], strict=False)


def kernel(node_ns: str) -> KernelState:
    """Routes on flannel.1 (dst, via, onlink, proto), its neighbours and its FDB entries."""
    with IPRoute(netns=node_ns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname="flannel.1")
        if not idx:
            return {"routes": set(), "neigh": set(), "fdb": set()}
        i = idx[0]
        routes = {
            (f"{r.get('RTA_DST')}/{r['dst_len']}", r.get("RTA_GATEWAY"), "onlink" if r["flags"] & 4 else "",
             str(r["proto"]))
            for r in ipr.route("dump", family=2, table=254)
            if r.get("RTA_OIF") == i
        }
        neigh = {
            (n.get("NDA_DST"), n.get("NDA_LLADDR"), "permanent" if n["state"] & 0x80 else str(n["state"]))
            for n in ipr.neigh("dump", family=2)
            if n["ifindex"] == i
        }
        fdb = {
            (n.get("NDA_LLADDR"), n.get("NDA_DST"), "self" if n["flags"] & 2 else "",
             "permanent" if n["state"] & 0x80 else str(n["state"]))
            for n in ipr.fdb("dump", ifindex=i)
            if n["ifindex"] == i and n.get("NDA_DST")
        }
    return {"routes": routes, "neigh": neigh, "fdb": fdb}


def leases(c: Cluster) -> dict[str, str]:
    out = c.etcdctl("get", "--prefix", "/coreos.com/network/subnets/").stdout.splitlines()
    return {out[i]: out[i + 1] for i in range(0, len(out) - 1, 2)}


def expected(c: Cluster, node: Node, ls: dict[str, str] | None = None) -> KernelState:
    """What reference-state.md section 3 says ``node`` should hold, from the leases in etcd."""
    ls = leases(c) if ls is None else ls
    mine = own_subnet(c, node)
    routes, neigh, fdb = set(), set(), set()
    for key, value in ls.items():
        # A dual-stack key is "<v4>-<len>&<v6>-<len6>"; flannel.1 holds the IPv4 half.
        net = IPv4Network(key.rsplit("/", 1)[-1].split("&")[0].replace("-", "/"))
        if net == mine:
            continue
        d = json.loads(value)
        mac, pub, vtep = d["BackendData"]["VtepMAC"], d["PublicIP"], str(net.network_address)
        routes.add((str(net), vtep, "onlink", "3"))  # proto boot, like Go's netlink
        neigh.add((vtep, mac, "permanent"))
        fdb.add((mac, pub, "self", "permanent"))
    return {"routes": routes, "neigh": neigh, "fdb": fdb}


def converged(c: Cluster, nodes: list[Node] | None = None) -> bool:
    ls = leases(c)
    running = [n for n in (nodes or c.nodes) if (p := c.flanneld_process(n)) is not None and p.poll() is None]
    return all(kernel(n.ns) == expected(c, n, ls) for n in running)


def wait_converged(c: Cluster, timeout: float = 15, nodes: list[Node] | None = None) -> None:
    wait_for(lambda: converged(c, nodes), timeout, "every node to match the leases")


def etcd_py(c: Cluster, code: str, ns: str | None = None, endpoints: list[str] | None = None,
            timeout: float = 120) -> str:
    """Run an async snippet with an EtcdClient ``c`` (default: inside the LAN namespace, where etcd is)."""
    eps = endpoints or [c.etcd_endpoint]
    script = (
        "import asyncio, json\nfrom pyflannel.adapters.etcd import EtcdClient, _b64\n"
        f"async def main():\n    async with EtcdClient({eps!r}) as c:\n"
        + "\n".join("        " + line for line in code.strip().splitlines())
        + "\nasyncio.run(main())\n"
    )
    return c.exec(ns or c.lan_ns, [sys.executable, "-c", script], timeout=timeout).stdout


def vxlan_lease(public_ip: str, mac: str) -> str:
    return json.dumps({"PublicIP": public_ip, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}}, separators=(",", ":"))


def record_fault(scenario: str, *, peers: int, duration_s: float, pings_sent: int = 0, pings_lost: int = 0,
                 routes_lost: int = 0, result: str = "pass", note: str = "") -> None:
    """Append one row to the fault report ($PYFLANNEL_FAULT_REPORT, JSON lines), if it is set."""
    import os

    path = os.environ.get("PYFLANNEL_FAULT_REPORT")
    if not path:
        return
    row = {"scenario": scenario, "peers": peers, "duration_s": round(duration_s, 2), "pings_sent": pings_sent,
           "pings_lost": pings_lost, "routes_lost": routes_lost, "result": result, "note": note}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


class Pinger:
    """``ping`` running in a namespace in the background; ``stop()`` returns (sent, received)."""

    def __init__(self, ns: str, dst: str, interval: float = 0.2) -> None:
        import subprocess

        from support.cluster import check_destination

        check_destination(dst)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "ping", "-n", "-i", str(interval), "-W", "1", dst],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def stop(self) -> tuple[int, int]:
        import re
        import signal

        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if not m:
            raise AssertionError(f"ping printed no summary: {out[-300:]}")
        return int(m.group(1)), int(m.group(2))


def synthetic_leases(c: Cluster, subnets: list[str], first_public: int = 0, concurrency: int = 64) -> None:
    """Peer leases as Go flanneld writes them, each on its own 1 h etcd lease.

    ``subnets`` are key names ("a.b.c.d-len"). PublicIPs come from 198.19.0.0/16: inside the
    test range, and nothing is ever sent to them.
    """
    code = f"""
subnets = {list(subnets)!r}
sem = asyncio.Semaphore({concurrency})
async def one(i, s):
    async with sem:
        n = {first_public} + i
        ip = f"198.19.{{n // 250}}.{{n % 250 + 1}}"
        mac = "0e:00:%02x:%02x:%02x:%02x" % ((n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255)
        lid, _ = await c.lease_grant(3600)
        value = json.dumps({{"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                            "BackendData": {{"VNI": 1, "VtepMAC": mac}}}}, separators=(",", ":"))
        await c.put("/coreos.com/network/subnets/" + s, value, lid)
await asyncio.gather(*(one(i, s) for i, s in enumerate(subnets)))
"""
    etcd_py(c, code, timeout=600)
