"""Bulk rtnetlink for the per-peer entries: routes, neighbours and FDB entries, and their notifications.

Why this exists next to pyroute2 (which handles links, addresses and route lookups): a node
with K peers owns 3K kernel objects, and pyroute2 costs about 350 us per request and 50-70 us
per dumped object in Python; at K=5000 that is seconds, against a fraction of a second the
kernel itself needs (docs/kernel-notes.md). Here messages are packed with ``struct``, sent
pipelined, and dumps and notifications are parsed only as far as the fields pyflannel compares.

Acks: requests go out *without* NLM_F_ACK. rtnetlink handles a send synchronously, message by
message, and always answers a failed request with an error carrying its sequence number; only
successes need NLM_F_ACK to be answered. So each batch ends with one NLMSG_NOOP that does ask for
an ack (the kernel acks control messages without handling them): when that fence's ack arrives,
every error of the batch is already queued before it, and every request without one succeeded.
Not having the kernel build, queue and hand over 15,000 success acks halves the system time of a
5000-peer join (docs/kernel-notes.md, "Acks").

Receive-buffer quirk: the kernel caps SO_RCVBUF at ``net.core.rmem_max`` (212992 on a stock
Debian host, doubled to 425984 for bookkeeping), and it charges each queued answer by its skb
truesize (about 1 KiB, not the 36 bytes of the message). So the number of requests between two
fences is sized from the buffer the socket really got (read back with getsockopt): even a batch
whose every request fails fits its errors in the buffer. Errors are capped with NETLINK_CAP_ACK.
An ENOBUFS anyway means "some errors were lost": every op of that batch without a known outcome
is reported as failed (the caller re-applies it; a replace is idempotent), and no ``recv``
blocks without a bound.

Only the message types below are built or parsed; anything else stays with pyroute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from pyflannel.core.model import Entry, Fdb, Neigh, Route
from pyflannel.core.plan import Op

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
AF_BRIDGE = 7
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_BOOT = 3
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
# Multicast groups (the legacy bitmask form of bind()).
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTM_NEWADDR, RTM_DELADDR = 20, 21
_IFADDRMSG = struct.Struct("=BBBBi")

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")
IFLA_IFNAME = 3

BATCH_BYTES = 128 * 1024
# What one queued ack costs in the receive buffer (skb truesize), rounded up.
ACK_TRUESIZE = 2048
RECV_TIMEOUT = 5.0  # no recv blocks for longer; a silent kernel is an error, not a hang
DEFAULT_RCVBUF = 4 * 1024 * 1024


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _mac(text: str) -> bytes:
    b = bytes.fromhex(text.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return b


def _msg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(16 + len(body), mtype, flags, seq, 0) + body


# IPv4 peers' requests in one pack each: header, body and attributes with their fixed lengths ("=" means no
# padding; NDA_LLADDR's 6 bytes are padded to 8 by hand). A join encodes 15,000 of these and a lease event
# three, and building them attribute by attribute cost about five times as much. ``encode_generic`` is the
# reference (and the IPv6 path); tests/unit/test_nlbulk_encode.py checks both give the same bytes.
_ROUTE4 = struct.Struct("=IHHIIBBBBBBBBIHH4sHH4sHHi")
_NEIGH4 = struct.Struct("=IHHIIBxxxiHBBHH4sHH6sxx")
_FDB4 = struct.Struct("=IHHIIBxxxiHBBHH6sxxHH4s")
_ADD = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE


def encode(op: Op, seq: int, indexes: dict[str, int], ack: bool = True) -> bytes:
    """One request for ``op``: create-or-replace, or delete; with ``ack`` False only a failure is answered."""
    e = op.entry
    add = op.action == "replace"
    flags = (_ADD if add else NLM_F_REQUEST) | (NLM_F_ACK if ack else 0)
    if isinstance(e, Route):
        if e.dst.version == 4 and e.via.version == 4:
            return _ROUTE4.pack(_ROUTE4.size, RTM_NEWROUTE if add else RTM_DELROUTE, flags, seq, 0,
                                AF_INET, e.dst.prefixlen, 0, 0, RT_TABLE_MAIN,
                                RTPROT_BOOT if add else 0, RT_SCOPE_UNIVERSE, RTN_UNICAST,
                                RTNH_F_ONLINK if (add and e.onlink) else 0,
                                8, RTA_DST, e.dst.network_address.packed,
                                8, RTA_GATEWAY, e.via.packed, 8, RTA_OIF, indexes[e.dev])
    elif isinstance(e, Neigh):
        if e.ip.version == 4:
            return _NEIGH4.pack(_NEIGH4.size, RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, 0,
                                AF_INET, indexes[e.dev], NUD_PERMANENT, 0, 0,
                                8, NDA_DST, e.ip.packed, 10, NDA_LLADDR, _mac(e.mac))
    elif isinstance(e, Fdb) and e.dst.version == 4:
        return _FDB4.pack(_FDB4.size, RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, 0,
                          AF_BRIDGE, indexes[e.dev], NUD_PERMANENT, NTF_SELF, 0,
                          10, NDA_LLADDR, _mac(e.mac), 8, NDA_DST, e.dst.packed)
    return encode_generic(op, seq, indexes, ack)


def encode_generic(op: Op, seq: int, indexes: dict[str, int], ack: bool = True) -> bytes:
    """``encode`` attribute by attribute, for any family."""
    e = op.entry
    add = op.action == "replace"
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0) | ((NLM_F_CREATE | NLM_F_REPLACE) if add else 0)
    if isinstance(e, Route):
        idx = indexes[e.dev]
        fam = AF_INET if e.dst.version == 4 else AF_INET6
        if e.via.version != e.dst.version:
            raise ValueError(f"route {e.dst} via {e.via}: address families differ")
        body = _RTMSG.pack(fam, e.dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT if add else 0,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK if (add and e.onlink) else 0)
        body += _attr(RTA_DST, e.dst.network_address.packed) + _attr(RTA_GATEWAY, e.via.packed)
        body += _attr(RTA_OIF, struct.pack("=i", idx))
        return _msg(RTM_NEWROUTE if add else RTM_DELROUTE, flags, seq, body)
    if isinstance(e, Neigh):
        idx = indexes[e.dev]
        body = _NDMSG.pack(AF_INET if e.ip.version == 4 else AF_INET6, idx, NUD_PERMANENT, 0, 0)
        body += _attr(NDA_DST, e.ip.packed) + _attr(NDA_LLADDR, _mac(e.mac))
        return _msg(RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, body)
    if isinstance(e, Fdb):
        idx = indexes[e.dev]
        body = _NDMSG.pack(AF_BRIDGE, idx, NUD_PERMANENT, NTF_SELF, 0)
        body += _attr(NDA_LLADDR, _mac(e.mac)) + _attr(NDA_DST, e.dst.packed)
        return _msg(RTM_NEWNEIGH if add else RTM_DELNEIGH, flags, seq, body)
    raise TypeError(f"no rtnetlink encoding for {type(e).__name__}")


_ECHO_HEAD = struct.Struct("=HBi")  # message type, family, ifindex
#: Expected echoes kept at most; past that the set is emptied and echoes are parsed like any change.
ECHO_LIMIT = 1 << 16


def _echo_keys(op: Op, indexes: dict[str, int]) -> tuple[bytes | None, bytes | None]:
    """(the key of the notification ``op`` causes without our port id, the key of the opposite change).

    vxlan reports FDB changes, and the neighbour table reports deletions, with port id 0 whoever asked, so
    the BPF filter cannot drop them. Their raw identity (type, family, device, MAC, address) is enough to
    recognise our own: ``Monitor.read`` drops a notification whose key was expected, unparsed.
    """
    e = op.entry
    add = op.action == "replace"
    new, gone = RTM_NEWNEIGH, RTM_DELNEIGH
    if isinstance(e, Fdb):
        idx = indexes.get(e.dev)
        if idx is None:
            return None, None
        tail = _mac(e.mac) + e.dst.packed
        keys = (_ECHO_HEAD.pack(new, AF_BRIDGE, idx) + tail, _ECHO_HEAD.pack(gone, AF_BRIDGE, idx) + tail)
        return keys if add else (keys[1], keys[0])
    if isinstance(e, Neigh):
        idx = indexes.get(e.dev)
        if idx is None:
            return None, None
        deleted = _ECHO_HEAD.pack(gone, AF_INET if e.ip.version == 4 else AF_INET6, idx) + e.ip.packed
        # A neighbour's creation carries our port id (the BPF filter drops it); only its deletion needs a key.
        return (None, deleted) if add else (deleted, None)
    return None, None


def expect_echoes(expected: set[bytes], ops: Sequence[Op], indexes: dict[str, int]) -> None:
    """Note the echoes ``ops`` will cause. An op that causes none (a replace that changes nothing, a delete of
    what is gone) leaves its key behind; the opposite change forgets it, so a stale "deleted" key can never
    hide a later deletion by someone else of an entry we re-added."""
    if len(expected) + len(ops) > ECHO_LIMIT:
        expected.clear()
    for op in ops:
        key, opposite = _echo_keys(op, indexes)
        if opposite is not None:
            expected.discard(opposite)
        if key is not None:
            expected.add(key)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, memoryview]]:
    """(type, flags, seq, port id, payload) for each netlink message in a datagram."""
    view = memoryview(data)
    off = 0
    while off + 16 <= len(data):
        length, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(data, off)
        if length < 16:
            break
        yield mtype, flags, seq, pid, view[off + 16 : off + length]
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


@dataclass(frozen=True, slots=True)
class Owned:
    """The owned scope in kernel terms: device ifindexes (-> names), the uplink, and its routed networks."""

    devices: dict[int, str]
    uplink_index: int = 0
    uplink: str = ""
    uplink_routes: tuple[IPv4Network | IPv6Network, ...] = ()


def parse_route(p: memoryview, owned: Owned) -> Route | None:
    """A main-table unicast route with a gateway in the owned scope, else None."""
    family, dst_len, _s, _t, table, _proto, _scope, rtype, rflags = _RTMSG.unpack_from(p, 0)
    if family not in (AF_INET, AF_INET6) or rtype != RTN_UNICAST:
        return None
    a = _attrs(p, _RTMSG.size)
    if RTA_TABLE in a:
        (table,) = struct.unpack_from("=I", a[RTA_TABLE])
    if table != RT_TABLE_MAIN or RTA_GATEWAY not in a or RTA_DST not in a or RTA_OIF not in a:
        return None
    (oif,) = struct.unpack_from("=i", a[RTA_OIF])
    net = ip_network((bytes(a[RTA_DST]), dst_len))
    gw = ip_address(bytes(a[RTA_GATEWAY]))
    onlink = bool(rflags & RTNH_F_ONLINK)
    dev = owned.devices.get(oif)
    if dev is not None:
        return Route(net, gw, dev, onlink)
    if oif == owned.uplink_index and owned.uplink_index and any(
        net.version == n.version and net.subnet_of(n) for n in owned.uplink_routes  # type: ignore[arg-type]
    ):
        return Route(net, gw, owned.uplink, onlink)
    return None


def parse_neigh(p: memoryview, owned: Owned, deleted: bool = False) -> Neigh | Fdb | None:
    """A permanent neighbour or a ``self`` FDB entry with a dst on an owned device, else None.

    Kernel quirk: the RTM_DELNEIGH for a permanent neighbour does not carry NUD_PERMANENT (nor
    always the lladdr), so for a deletion any neighbour on an owned device counts; the consumer
    matches it by identity (device and IP).
    """
    fam, ifindex, state, nflags, _ntype = _NDMSG.unpack_from(p, 0)
    dev = owned.devices.get(ifindex)
    if dev is None:
        return None
    a = _attrs(p, _NDMSG.size)
    if NDA_DST not in a:
        return None
    dst = bytes(a[NDA_DST])
    lladdr = bytes(a.get(NDA_LLADDR, b""))
    if len(lladdr) != 6 and not (deleted and fam != AF_BRIDGE and not lladdr):
        return None
    mac = ":".join(f"{b:02x}" for b in lladdr)
    if fam in (AF_INET, AF_INET6) and (state & NUD_PERMANENT or deleted) and len(dst) in (4, 16):
        return Neigh(ip_address(dst), mac, dev)
    if fam == AF_BRIDGE and nflags & NTF_SELF and len(dst) in (4, 16):
        return Fdb(mac, ip_address(dst), dev)
    return None


def _link_name(p: memoryview) -> tuple[int, str]:
    _fam, _type, index, _flags, _change = _IFINFOMSG.unpack_from(p, 0)
    a = _attrs(p, _IFINFOMSG.size)
    name = bytes(a.get(IFLA_IFNAME, b"")).rstrip(b"\0").decode(errors="replace")
    return index, name


class BulkNetlink:
    """A plain rtnetlink socket in the current network namespace.

    ``rcvbuf`` is what is asked for; the kernel may give less (``net.core.rmem_max``), and the
    batches are sized from what it really gave.
    """

    def __init__(self, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with contextlib.suppress(OSError):  # acks without a copy of the request: smaller, same for every error
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        # The port id the kernel gave us: route and neighbour notifications caused by our requests carry it.
        self.portid: int = self.sock.getsockname()[0]
        self.sock.settimeout(RECV_TIMEOUT)
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # Requests in flight at once: what the real buffer holds in acks, with a margin of half.
        self.max_in_flight = max(16, self.rcvbuf // ACK_TRUESIZE // 2)
        self.seq = 1
        self.overflows = 0  # ENOBUFS seen while draining acks

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    def apply(self, ops: Sequence[Op], indexes: dict[str, int],
              echoes: set[bytes] | None = None) -> list[tuple[Op, str]]:
        """Send every op, pipelined; return (op, reason) for those not known to be done.

        ``echoes``: where to note the notifications these ops will cause (``expect_echoes``), before they are sent.

        A delete of something already gone counts as done. Each batch is closed by a fence (see the module
        docstring); the ops of a batch whose fence was not answered (ENOBUFS, or no answer within
        RECV_TIMEOUT) are returned as failed unless their error already arrived, so the caller re-applies.
        """
        failed: list[tuple[Op, str]] = []
        if echoes is not None:
            expect_echoes(echoes, ops, indexes)
        i = 0
        while i < len(ops):
            batch: dict[int, Op] = {}
            chunks: list[bytes] = []
            size = 0
            while i < len(ops) and size < BATCH_BYTES and len(batch) < self.max_in_flight:
                seq = self._next_seq()
                try:
                    msg = encode(ops[i], seq, indexes, ack=False)
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
            fence = self._next_seq()
            chunks.append(_msg(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, fence, b""))
            self.sock.sendall(b"".join(chunks))
            answered: set[int] = set()  # seqs whose error arrived
            while True:
                try:
                    data = self.sock.recv(1 << 20)
                except TimeoutError:
                    failed.extend((op, "no netlink answer (timed out)") for s, op in batch.items()
                                  if s not in answered)
                    break
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    self.overflows += 1
                    # Errors were dropped; which ones is unknown. Drain up to the fence, then give up on the rest.
                    self._drain(fence, answered, batch, failed)
                    failed.extend((op, "netlink errors lost (ENOBUFS)") for s, op in batch.items()
                                  if s not in answered)
                    break
                if self._answers(data, fence, answered, batch, failed):
                    break
        return failed

    def _answers(self, data: bytes, fence: int, answered: set[int], batch: dict[int, Op],
                 failed: list[tuple[Op, str]]) -> bool:
        """Record the errors in ``data``; True once the fence's ack is among them."""
        done = False
        for mtype, _flags, seq, _pid, payload in _messages(data):
            if mtype != NLMSG_ERROR:
                continue
            if seq == fence:
                done = True
                continue
            op = batch.get(seq)
            if op is None or seq in answered:
                continue
            answered.add(seq)
            (code,) = _NLMSGERR.unpack_from(payload, 0)
            if code == 0:
                continue
            err = -code
            if op.action == "delete" and err in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL):
                continue
            failed.append((op, os.strerror(err)))
        return done

    def _drain(self, fence: int, answered: set[int], batch: dict[int, Op], failed: list[tuple[Op, str]]) -> None:
        bound = self.sock.gettimeout()
        self.sock.settimeout(0.2)
        try:
            while True:
                try:
                    data = self.sock.recv(1 << 20)
                except (TimeoutError, BlockingIOError):
                    return
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    continue
                if self._answers(data, fence, answered, batch, failed):
                    return
        finally:
            self.sock.settimeout(bound)

    def _dump(self, mtype: int, body: bytes) -> Iterator[memoryview]:
        seq = self._next_seq()
        self.sock.sendall(_msg(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                raise OSError(errno.ETIMEDOUT, "netlink dump: no answer") from None
            for rtype, _flags, rseq, _pid, payload in _messages(data):
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return
                if rtype == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(payload, 0)
                    raise OSError(-code, f"netlink dump: {os.strerror(-code)}")
                yield payload

    def observe_owned(self, owned: Owned) -> list[Entry]:
        """Every owned route, neighbour and FDB entry (duplicates under one identity included)."""
        out: list[Entry] = []
        for fam in (AF_INET, AF_INET6):
            for p in self._dump(RTM_GETROUTE, _RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0)):
                r = parse_route(p, owned)
                if r is not None:
                    out.append(r)
        if owned.devices:
            for fam in (AF_INET, AF_INET6, AF_BRIDGE):
                for p in self._dump(RTM_GETNEIGH, _NDMSG.pack(fam, 0, 0, 0, 0)):
                    if _NDMSG.unpack_from(p, 0)[0] != fam:
                        continue
                    n = parse_neigh(p, owned)
                    if n is not None:
                        out.append(n)
        return out

    def observe(
        self, dev_index: int, dev: str, uplink_index: int, uplink: str, network: IPv4Network
    ) -> list[Entry]:
        """The owned entries of one vxlan device and its uplink (the first milestone's scope)."""
        return self.observe_owned(Owned({dev_index: dev}, uplink_index, uplink, (network,)))


@dataclass(frozen=True, slots=True)
class Change:
    """One parsed notification: an owned entry now present (``gone`` False) or deleted."""

    entry: Entry
    gone: bool


@dataclass(frozen=True, slots=True)
class LinkGone:
    """An owned device was deleted, renamed or changed (MAC, flags, an address): only a full pass,
    which re-checks the device, can tell what to do, and a deleted link's routes go silently."""

    name: str
    what: str = "was deleted"


class Overrun:
    """ENOBUFS on the monitor socket: notifications were lost."""


_ECHOED = frozenset((RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH))
SO_ATTACH_FILTER = 26
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06


def echo_filter(ports: Collection[int]) -> bytes:
    """A classic BPF program that drops every message whose nlmsg_pid is one of ``ports``.

    The kernel runs a netlink socket's filter on each multicast notification before queueing it, and each
    rtnetlink notification is a datagram of one message, so the program sees its nlmsghdr at offset 0. BPF
    loads words big-endian; the header is in host order, so the port ids are compared byte-swapped.
    """
    ports = sorted({p for p in ports if p})
    prog = [_SOCK_FILTER.pack(_BPF_LD_W_ABS, 0, 0, 12)]  # nlmsg_pid
    n = len(ports)
    for j, port in enumerate(ports, 1):
        swapped = int.from_bytes(port.to_bytes(4, sys.byteorder), "big")
        prog.append(_SOCK_FILTER.pack(_BPF_JEQ_K, n + 1 - j, 0, swapped))  # match: jump to "drop"
    prog.append(_SOCK_FILTER.pack(_BPF_RET_K, 0, 0, 0xFFFFFFFF))  # keep the whole message
    prog.append(_SOCK_FILTER.pack(_BPF_RET_K, 0, 0, 0))  # drop
    return b"".join(prog)


def _expected_echo(mtype: int, payload: memoryview, expected: set[bytes]) -> bool:
    """True (and the key used up) if this neighbour-table notification is one ``expect_echoes`` noted."""
    fam, ifindex, _state, _flags, _type = _NDMSG.unpack_from(payload, 0)
    a = _attrs(payload, _NDMSG.size)
    dst = a.get(NDA_DST)
    if dst is None:
        return False
    if fam == AF_BRIDGE:
        lladdr = a.get(NDA_LLADDR)
        if lladdr is None:
            return False
        key = _ECHO_HEAD.pack(mtype, fam, ifindex) + bytes(lladdr) + bytes(dst)
    elif mtype == RTM_DELNEIGH:
        key = _ECHO_HEAD.pack(mtype, fam, ifindex) + bytes(dst)
    else:
        return False
    if key in expected:
        expected.discard(key)
        return True
    return False


class Monitor:
    """A non-blocking rtnetlink socket subscribed to link, neighbour and route notifications."""

    def __init__(self, rcvbuf: int = 8 * 1024 * 1024) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:  # root may exceed rmem_max; a bigger buffer means fewer full resyncs after bursts
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
                        | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def drop_echoes(self, ports: Collection[int]) -> bool:
        """Have the kernel drop the notifications our own bulk sockets cause, before they are queued.

        Those sockets send only route and neighbour requests, so this drops exactly what ``read`` would skip
        by port id, without a wake-up, a ``recv`` or a parse each: a 5000-peer join is 10,000 fewer messages,
        and the queue holds only what is worth reading. Returns False (``read`` still skips them) if the
        kernel refuses the filter.
        """
        prog = echo_filter(ports)
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = struct.pack("HP", len(prog) // _SOCK_FILTER.size, ctypes.addressof(buf))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program
        except OSError:
            return False
        return True

    def read(self, owned: Owned, ours: Collection[int] = (),
             expected: set[bytes] | None = None) -> list[Change | LinkGone | Overrun]:
        """Everything queued now (never blocks).

        ``ours``: the port ids of the sockets our own changes are sent from. The kernel stamps route and
        (ARP/NDP) neighbour notifications with the port id of the request that caused them, so those are
        our own echoes and are dropped unparsed: the caller's mirror already holds what it applied. FDB
        notifications from vxlan and neighbour deletions carry port id 0 whoever asked, so they are always
        parsed, unless ``expected`` (see ``expect_echoes``) holds their key: then they are our own too and
        are dropped (tests/netns/test_nlbulk_echoes.py pins what this kernel does).
        """
        out: list[Change | LinkGone | Overrun] = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    out.append(Overrun())
                    continue
                raise
            for mtype, _flags, _seq, pid, payload in _messages(data):
                if pid in ours and pid and mtype in _ECHOED:
                    continue
                if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
                    r = parse_route(payload, owned)
                    if r is not None:
                        out.append(Change(r, mtype == RTM_DELROUTE))
                elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
                    if expected and _expected_echo(mtype, payload, expected):
                        continue
                    n = parse_neigh(payload, owned, mtype == RTM_DELNEIGH)
                    if n is not None:
                        out.append(Change(n, mtype == RTM_DELNEIGH))
                elif mtype == RTM_DELLINK:
                    index, name = _link_name(payload)
                    if index in owned.devices:
                        out.append(LinkGone(owned.devices[index]))
                elif mtype == RTM_NEWLINK:
                    index, name = _link_name(payload)
                    if index in owned.devices:
                        out.append(LinkGone(owned.devices[index], "was renamed" if name != owned.devices[index]
                                            else "changed"))
                elif mtype in (RTM_NEWADDR, RTM_DELADDR):
                    index = _IFADDRMSG.unpack_from(payload, 0)[4]
                    if index in owned.devices:
                        out.append(LinkGone(owned.devices[index], "had an address changed"))
                elif mtype == NLMSG_OVERRUN:
                    out.append(Overrun())
