"""Bulk rtnetlink for the per-peer entries: routes, neighbours and FDB entries.

Why this exists next to pyroute2 (which handles links, addresses and route lookups): a node
with K peers owns 3K kernel objects, and pyroute2 costs about 350 us per request and 50-70 us
per dumped object in Python. At K=5000 that is about 5 s to write and about 1 s to read the
state back (libraries.md section 1, measured on this machine), against 0.22 s the kernel
itself needs. Here messages are packed with ``struct``, sent in 128 KiB batches with
NLM_F_ACK, and the acks are drained after every batch (with the default 1 MB receive buffer,
more than about 1000 unread acks make the socket drop them). Dumps are parsed only as far as
the fields pyflannel compares. Measured in bench/: see bench/README.md.

Only the message types below are built or parsed; anything else stays with pyroute2.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network

from pyflannel.core.model import Fdb, Neigh, PeerState, Route
from pyflannel.core.plan import Op

NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
AF_INET = socket.AF_INET
AF_BRIDGE = 7
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_BOOT = 3
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTATTR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")
BATCH_BYTES = 128 * 1024


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _msg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(16 + len(body), mtype, flags, seq, 0) + body


def encode(op: Op, seq: int, indexes: dict[str, int]) -> bytes:
    """One request for ``op``: create-or-replace, or delete, always with an ack."""
    e = op.entry
    add = op.action == "replace"
    flags = NLM_F_REQUEST | NLM_F_ACK | ((NLM_F_CREATE | NLM_F_REPLACE) if add else 0)
    idx = indexes[e.dev]
    if isinstance(e, Route):
        body = _RTMSG.pack(AF_INET, e.dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT if add else 0,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK if (add and e.onlink) else 0)
        body += _attr(RTA_DST, e.dst.network_address.packed) + _attr(RTA_GATEWAY, e.via.packed)
        body += _attr(RTA_OIF, struct.pack("=i", idx))
        return _msg(RTM_NEWROUTE if add else RTM_DELROUTE, flags, seq, body)
    if isinstance(e, Neigh):
        body = _NDMSG.pack(AF_INET, idx, NUD_PERMANENT, 0, 0)
        body += _attr(NDA_DST, e.ip.packed) + _attr(NDA_LLADDR, _mac(e.mac))
        return _msg(RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, body)
    if isinstance(e, Fdb):
        body = _NDMSG.pack(AF_BRIDGE, idx, NUD_PERMANENT, NTF_SELF, 0)
        body += _attr(NDA_LLADDR, _mac(e.mac)) + _attr(NDA_DST, e.dst.packed)
        return _msg(RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, body)
    raise TypeError(f"no rtnetlink encoding for {type(e).__name__}")


def _messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, payload) for each netlink message in a datagram."""
    view = memoryview(data)
    off = 0
    while off + 16 <= len(data):
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < 16:
            break
        yield mtype, flags, seq, view[off + 16 : off + length]
        off += (length + 3) & ~3


def _attrs(payload: memoryview, start: int) -> dict[int, memoryview]:
    out: dict[int, memoryview] = {}
    off = start
    n = len(payload)
    while off + 4 <= n:
        length, kind = _RTATTR.unpack_from(payload, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = payload[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


class BulkNetlink:
    """A plain rtnetlink socket in the current network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((0, 0))
        self.seq = 1

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    def apply(self, ops: Sequence[Op], indexes: dict[str, int]) -> list[tuple[Op, str]]:
        """Send every op, pipelined; return (op, strerror) for those the kernel refused.

        A delete of something already gone counts as done.
        """
        failed: list[tuple[Op, str]] = []
        i = 0
        while i < len(ops):
            batch: dict[int, Op] = {}
            chunks: list[bytes] = []
            size = 0
            while i < len(ops) and size < BATCH_BYTES:
                seq = self._next_seq()
                try:
                    msg = encode(ops[i], seq, indexes)
                except (KeyError, ValueError, TypeError) as exc:
                    failed.append((ops[i], f"cannot encode: {exc}"))
                    i += 1
                    continue
                batch[seq] = ops[i]
                chunks.append(msg)
                size += len(msg)
                i += 1
            if not chunks:
                continue
            self.sock.sendall(b"".join(chunks))
            pending = set(batch)
            while pending:
                data = self.sock.recv(1 << 20)
                for mtype, _flags, seq, payload in _messages(data):
                    if mtype != NLMSG_ERROR or seq not in pending:
                        continue
                    pending.discard(seq)
                    (code,) = _NLMSGERR.unpack_from(payload, 0)
                    if code == 0:
                        continue
                    err = -code
                    op = batch[seq]
                    if op.action == "delete" and err in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL):
                        continue
                    failed.append((op, os.strerror(err)))
        return failed

    def _dump(self, mtype: int, body: bytes) -> Iterator[memoryview]:
        seq = self._next_seq()
        self.sock.sendall(_msg(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        while True:
            data = self.sock.recv(1 << 20)
            for rtype, _flags, rseq, payload in _messages(data):
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return
                if rtype == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(payload, 0)
                    raise OSError(-code, f"netlink dump: {os.strerror(-code)}")
                yield payload

    def observe(
        self, dev_index: int, dev: str, uplink_index: int, uplink: str, network: IPv4Network
    ) -> PeerState:
        """The owned routes, neighbours and FDB entries (same scope as Netlink.observe)."""
        routes: set[Route] = set()
        for p in self._dump(RTM_GETROUTE, _RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            family, dst_len, _s, _t, table, _proto, _scope, rtype, rflags = _RTMSG.unpack_from(p, 0)
            if family != AF_INET or rtype != RTN_UNICAST:
                continue
            a = _attrs(p, _RTMSG.size)
            if RTA_TABLE in a:
                (table,) = struct.unpack_from("=I", a[RTA_TABLE])
            if table != RT_TABLE_MAIN or RTA_GATEWAY not in a or RTA_DST not in a or RTA_OIF not in a:
                continue
            (oif,) = struct.unpack_from("=i", a[RTA_OIF])
            if oif not in (dev_index, uplink_index):
                continue
            net = IPv4Network((bytes(a[RTA_DST]), dst_len))
            gw = IPv4Address(bytes(a[RTA_GATEWAY]))
            if oif == dev_index:
                routes.add(Route(net, gw, dev, bool(rflags & RTNH_F_ONLINK)))
            elif net.subnet_of(network):
                routes.add(Route(net, gw, uplink, bool(rflags & RTNH_F_ONLINK)))
        neighs: set[Neigh] = set()
        fdbs: set[Fdb] = set()
        for family in (AF_INET, AF_BRIDGE):
            for p in self._dump(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0)):
                fam, ifindex, state, nflags, _ntype = _NDMSG.unpack_from(p, 0)
                if ifindex != dev_index or fam != family:
                    continue
                a = _attrs(p, _NDMSG.size)
                if NDA_DST not in a or NDA_LLADDR not in a:
                    continue
                mac = ":".join(f"{b:02x}" for b in bytes(a[NDA_LLADDR]))
                if fam == AF_INET and state & NUD_PERMANENT and len(a[NDA_DST]) == 4:
                    neighs.add(Neigh(IPv4Address(bytes(a[NDA_DST])), mac, dev))
                elif fam == AF_BRIDGE and nflags & NTF_SELF and len(a[NDA_DST]) == 4:
                    fdbs.add(Fdb(mac, IPv4Address(bytes(a[NDA_DST])), dev))
        return PeerState(frozenset(routes), frozenset(neighs), frozenset(fdbs))

