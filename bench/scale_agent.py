"""Runs inside a node's namespace for bench/scale.py: a mirror of the node's peer entries kept by an rtnetlink
subscription, plus the etcd writes whose effect it times.

It reads one JSON command a line on stdin and answers one JSON line on stdout. Timestamps are
``time.monotonic()`` (CLOCK_MONOTONIC is the same in every network namespace), so the orchestrator can
compare them with its own. What it mirrors, from RTM_NEWROUTE/DELROUTE and RTM_NEWNEIGH/DELNEIGH:

* routes: main-table IPv4 routes to 100.64.0.0/10 (key ``dst/len``);
* neighbours: permanent AF_INET neighbours with a 100.64.0.0/10 address (key: the address);
* FDB: AF_BRIDGE entries with a remote IP in 198.18.0.0/15 (key: the MAC).

Commands: ``wait_counts`` (until each kind has at least K entries: when that was reached), ``latency`` (put a
lease, time until its route appears; delete it, time until it goes), ``churn`` (puts/deletes at a fixed rate
from a fixed-seed sequence), ``repair`` (delete a route, a neighbour and an FDB entry by hand and time until
each is back, bounded), ``state`` (the mirror's keys, for the missing/stale check).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import sys
import threading
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyflannel.adapters.etcd import EtcdClient

RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
SO_RCVBUFFORCE = 33
POD = IPv4Network("100.64.0.0/10")
LAN = IPv4Network("198.18.0.0/15")
PREFIX = "/coreos.com/network/subnets/"

cond = threading.Condition()
routes: dict[str, float] = {}  # key -> time of the last NEW seen
neigh: dict[str, float] = {}
fdb: dict[str, float] = {}
gone: dict[tuple[str, str], float] = {}  # (kind, key) -> time of the last DEL seen
reached: dict[int, float] = {}
overflows = 0
waiting: Any = None  # the predicate wait() is blocked on, if any


_HDR = struct.Struct("=IH")
_RTM = struct.Struct("=BBBBB")
_NDM = struct.Struct("=B3xiH")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")


def _pod(a: bytes) -> bool:
    """``a`` (4 bytes) is in 100.64.0.0/10."""
    return a[0] == 100 and a[1] & 0xC0 == 64


def _lan(a: bytes) -> bool:
    """``a`` (4 bytes) is in 198.18.0.0/15."""
    return a[0] == 198 and a[1] & 0xFE == 18


def _pick(data: bytes, a: int, end: int, first: int, second: int) -> tuple[bytes | None, bytes | None]:
    """The payloads of attribute types ``first`` and ``second`` among the attributes from ``a`` to ``end``."""
    one = two = None
    while a + 4 <= end:
        alen, akind = _ATTR.unpack_from(data, a)
        if alen < 4:
            break
        akind &= 0x3FFF
        if akind == first:
            one = data[a + 4:a + alen]
        elif akind == second:
            two = data[a + 4:a + alen]
        a += (alen + 3) & ~3
    return one, two


def _handle(data: bytes, now: float) -> None:
    """Fold one read's notifications into the mirror.

    Written for throughput: the probe must parse faster than a daemon installs, or a burst (a fresh join)
    queues up in the socket and every later entry is stamped late by the backlog, not by the daemon. So no
    ipaddress objects, no per-message attribute dicts, one lock and one wake-up per read.
    """
    off, n = 0, len(data)
    changed = False
    with cond:
        while off + 16 <= n:
            length, mtype = _HDR.unpack_from(data, off)
            if length < 16:
                break
            end = off + length
            if mtype == 24 or mtype == 25:
                family, dst_len, _sl, _tos, table = _RTM.unpack_from(data, off + 16)
                if family == 2:
                    dst, tbl = _pick(data, off + 28, end, 1, 15)  # RTA_DST, RTA_TABLE
                    if tbl is not None:
                        table = _U32.unpack(tbl)[0]
                    if table == 254 and dst is not None and _pod(dst):
                        _set("route", routes, f"{socket.inet_ntoa(dst)}/{dst_len}", mtype == 24, now)
                        changed = True
            elif mtype == 28 or mtype == 29:
                family, _ifindex, state = _NDM.unpack_from(data, off + 16)
                dst, mac = _pick(data, off + 28, end, 1, 2)  # NDA_DST, NDA_LLADDR
                if dst is not None and len(dst) == 4:
                    if family == 2 and _pod(dst) and (state & 0x80 or mtype == 29):
                        _set("neigh", neigh, socket.inet_ntoa(dst), mtype == 28, now)
                        changed = True
                    elif family == 7 and mac is not None and _lan(dst):
                        _set("fdb", fdb, mac.hex(":"), mtype == 28, now)
                        changed = True
            off += (length + 3) & ~3
        if changed and waiting is not None and waiting():
            cond.notify_all()


def _set(kind: str, d: dict[str, float], key: str, new: bool, now: float) -> None:
    """Called with ``cond`` held."""
    if new:
        if key not in d:
            d[key] = now
            k = min(len(routes), len(neigh), len(fdb))
            if k not in reached:
                reached[k] = now
    else:
        d.pop(key, None)
        gone[(kind, key)] = now


def listen(sock: socket.socket) -> None:
    global overflows
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        try:
            n = sock.recv_into(buf)
        except OSError:  # ENOBUFS: notifications lost; counted, the result is then not trusted
            overflows += 1
            continue
        _handle(bytes(view[:n]), time.monotonic())


def initial_dump() -> None:
    from pyroute2 import IPRoute

    now = time.monotonic()
    with IPRoute() as ipr:
        for r in ipr.route("dump", family=2, table=254):
            dst = r.get("RTA_DST")
            if dst and IPv4Address(dst) in POD:
                routes[f"{dst}/{r['dst_len']}"] = now
        for n in ipr.neigh("dump", family=2):
            dst = n.get("NDA_DST")
            if dst and n["state"] & 0x80 and IPv4Address(dst) in POD:
                neigh[dst] = now
        for n in ipr.fdb("dump"):
            dst, mac = n.get("NDA_DST"), n.get("NDA_LLADDR")
            if dst and mac and IPv4Address(dst) in LAN:
                fdb[mac] = now


def wait(pred: Any, timeout: float) -> bool:
    """Until ``pred()`` holds (evaluated under ``cond``); the listener wakes us only once it does."""
    global waiting
    deadline = time.monotonic() + timeout
    with cond:
        waiting = pred
        try:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                cond.wait(min(left, 0.5))
        finally:
            waiting = None
    return True


def lease_value(pub: str, mac: str) -> str:
    return json.dumps({"PublicIP": pub, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}}, separators=(",", ":"))


def key_of(subnet: str) -> str:
    s = IPv4Network(subnet)
    return f"{PREFIX}{s.network_address}-{s.prefixlen}"


async def latency(endpoint: str, subnets: list[str], reps: int, gap: float) -> dict[str, Any]:
    add, dele, lost = [], [], 0
    async with EtcdClient([endpoint]) as c:
        lid, _ = await c.lease_grant(3600)
        for i in range(reps):
            s = str(IPv4Network(subnets[i % len(subnets)]))
            value = lease_value(f"198.19.200.{i % 200 + 1}", f"0e:aa:00:00:{i // 256 % 256:02x}:{i % 256:02x}")
            t0 = time.monotonic()
            await c.put(key_of(s), value, lid)
            if wait(lambda s=s: s in routes, 10):
                add.append((routes[s] - t0) * 1000)
            else:
                lost += 1
            await asyncio.sleep(gap)
            t0 = time.monotonic()
            await c.delete(key_of(s))
            if wait(lambda s=s: s not in routes, 10):
                dele.append((gone[("route", s)] - t0) * 1000)
            else:
                lost += 1
            await asyncio.sleep(gap)
    return {"add_ms": add, "del_ms": dele, "lost": lost}


async def churn(endpoint: str, pool: list[str], seconds: float, rate: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    present: set[str] = set()
    ops = puts = dels = 0
    late = 0.0
    async with EtcdClient([endpoint]) as c:
        lid, _ = await c.lease_grant(3600)
        t0 = time.monotonic()
        n = int(seconds * rate)
        for i in range(n):
            due = t0 + i / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                late = max(late, now - due)
            j = rng.randrange(len(pool))
            s = pool[j]
            if s in present:
                await c.delete(key_of(s))
                present.discard(s)
                dels += 1
            else:
                pub = f"198.19.{100 + j // 250}.{j % 250 + 1}"
                await c.put(key_of(s), lease_value(pub, f"0e:cc:00:00:{j // 256:02x}:{j % 256:02x}"), lid)
                present.add(s)
                puts += 1
            ops += 1
        took = time.monotonic() - t0
    return {"ops": ops, "puts": puts, "deletes": dels, "seconds": took, "present": sorted(present),
            "max_late_s": late}


def repair(route: str, nb: tuple[str, str], fd: tuple[str, str], bound: float) -> dict[str, Any]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (idx,) = ipr.link_lookup(ifname="flannel.1")
        net = IPv4Network(route)
        t_route = time.monotonic()
        ipr.route("del", dst=str(net.network_address), dst_len=net.prefixlen, table=254, oif=idx)
        t_neigh = time.monotonic()
        ipr.neigh("del", dst=nb[0], lladdr=nb[1], ifindex=idx)
        t_fdb = time.monotonic()
        ipr.fdb("del", ifindex=idx, lladdr=fd[0], dst=fd[1])
    items = [("route", routes, str(net), t_route), ("neigh", neigh, nb[0], t_neigh), ("fdb", fdb, fd[0], t_fdb)]
    out: dict[str, Any] = {}
    deadline = time.monotonic() + bound
    for kind, d, key, t in items:
        ok = wait(lambda d=d, key=key, t=t: key in d and d[key] > t, max(0.0, deadline - time.monotonic()))
        out[f"{kind}_s"] = (d[key] - t) if ok else None
    return out


def main() -> None:
    endpoint = sys.argv[1]
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH))
    threading.Thread(target=listen, args=(sock,), daemon=True).start()
    initial_dump()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "wait_counts":
            k = cmd["k"]
            ok = wait(lambda k=k: min(len(routes), len(neigh), len(fdb)) >= k, cmd["timeout"])
            res: dict[str, Any] = {"ok": ok, "at": min((t for n, t in reached.items() if n >= k), default=None),
                                   "counts": [len(routes), len(neigh), len(fdb)]}
        elif op == "latency":
            res = asyncio.run(latency(endpoint, cmd["subnets"], cmd["reps"], cmd.get("gap", 0.05)))
        elif op == "churn":
            res = asyncio.run(churn(endpoint, cmd["pool"], cmd["seconds"], cmd["rate"], cmd["seed"]))
        elif op == "repair":
            res = repair(cmd["route"], tuple(cmd["neigh"]), tuple(cmd["fdb"]), cmd["bound"])
        elif op == "state":
            with cond:
                res = {"routes": sorted(routes), "neigh": sorted(neigh), "fdb": sorted(fdb)}
        else:
            res = {"error": f"unknown op {op}"}
        res["overflows"] = overflows
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
