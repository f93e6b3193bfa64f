"""Runs inside a node's namespace: put/delete a peer lease in etcd and time until the kernel
route appears/disappears, seen through an rtnetlink subscription (RTMGRP_IPV4_ROUTE).

Prints one JSON object: {"add_ms": [...], "del_ms": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import threading
import time
from ipaddress import IPv4Address, IPv4Network

from pyflannel.adapters.etcd import EtcdClient

RTMGRP_IPV4_ROUTE = 0x40
events: list[tuple[float, int, str]] = []
cond = threading.Condition()


def listen(sock: socket.socket) -> None:
    while True:
        data = sock.recv(1 << 16)
        now = time.monotonic()
        off = 0
        while off + 16 <= len(data):
            length, mtype, _f, _s, _p = struct.unpack_from("=IHHII", data, off)
            if mtype in (24, 25):
                body = off + 16
                dst_len = data[body + 1]
                a = body + 12
                while a + 4 <= off + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if akind == 1 and alen == 8:
                        dst = f"{IPv4Address(data[a + 4:a + 8])}/{dst_len}"
                        with cond:
                            events.append((now, mtype, dst))
                            cond.notify_all()
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3


def wait_event(mtype: int, dst: str, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            for t, m, d in events:
                if m == mtype and d == dst:
                    events.clear()
                    return t
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no route event {mtype} for {dst}")
            cond.wait(left)


async def main(endpoint: str, count: int, subnets: list[str]) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((0, RTMGRP_IPV4_ROUTE))
    threading.Thread(target=listen, args=(sock,), daemon=True).start()
    add, dele = [], []
    async with EtcdClient([endpoint]) as c:
        lid, _ = await c.lease_grant(3600)
        for i in range(count):
            s = IPv4Network(subnets[i % len(subnets)])
            key = f"/coreos.com/network/subnets/{s.network_address}-{s.prefixlen}"
            mac = f"0e:aa:00:00:{i // 256 % 256:02x}:{i % 256:02x}"
            value = json.dumps({"PublicIP": f"198.19.200.{i % 200 + 1}", "PublicIPv6": None, "BackendType": "vxlan",
                                "BackendData": {"VNI": 1, "VtepMAC": mac}}, separators=(",", ":"))
            with cond:
                events.clear()
            t0 = time.monotonic()
            await c.put(key, value, lid)
            add.append((wait_event(24, str(s)) - t0) * 1000)
            t0 = time.monotonic()
            await c.delete(key)
            dele.append((wait_event(25, str(s)) - t0) * 1000)
    print(json.dumps({"add_ms": add, "del_ms": dele}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")))
