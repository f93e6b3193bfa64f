"""The wireguard backend's options, lease data and per-peer WireGuard peers (flannel-spec.md §5).

Why it looks like this (after flannel v0.28.9's ``pkg/backend/wireguard``):

* Mode ``separate`` (default) gives each family its own device: ``flannel-wg`` (IPv4, ListenPort)
  and ``flannel-wg-v6`` (IPv6, ListenPortV6). ``auto``/``ipv4``/``ipv6`` use one ``flannel-wg`` for
  both families; the mode only chooses which of the peer's addresses is the endpoint (``auto``: the
  v4 one, unless it is private and both sides' v6 are not).
* BackendData (and BackendV6Data) is ``{"PublicKey":"<base64>","Port":<port>}``. flannel v0.20.2
  published only PublicKey; v0.28.9 adds the port, and a peer that publishes none is dialled at our
  own ListenPort (flannel's assumption of identical ports cluster-wide). We publish the port the
  device serving that family really listens on.
* A peer's AllowedIPs are exactly its subnet(s): that is what makes WireGuard route a pod packet to
  the right peer, and what makes it drop a packet from a peer whose source is not its subnet.
* FLANNEL_MTU and the device MTU are (Backend MTU or uplink MTU) − 80 (IPv6 header + UDP + WireGuard
  header and tag).

Keys: WireGuard keys are Curve25519 (X25519, RFC 7748) scalars, base64 in leases and key files and hex
on the UAPI socket. :func:`public_key` derives the public key with the RFC's Montgomery ladder, so a node
needs neither a crypto library nor ``wg`` to publish its key; it is checked against the RFC's test vectors
and against ``wg pubkey`` in the tests. Secret-dependent timing is not a concern for a key derived once
at start-up from a file only root can read.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from pyflannel.core.backends.options import BackendOptions
from pyflannel.core.errors import ConfigError, LeaseFormatError, shorten, shorten_json
from pyflannel.core.lease import Lease, _compact, loads_strict
from pyflannel.core.model import WgPeer

BACKEND_TYPE = "wireguard"
DEVICE = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"
DEFAULT_PORT = 51820
DEFAULT_PORT_V6 = 51821
OVERHEAD = 80
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"

Mode = Literal["separate", "auto", "ipv4", "ipv6"]
MODES: tuple[Mode, ...] = ("separate", "auto", "ipv4", "ipv6")


# --- keys -------------------------------------------------------------------------------------------

_P = 2**255 - 19
_A24 = 121665


def _clamp(k: bytes) -> int:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(b, "little")


def x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748 section 5: the X25519 function on 32-byte little-endian inputs."""
    if len(scalar) != 32 or len(u) != 32:
        raise ValueError("X25519 inputs must be 32 bytes")
    k = _clamp(scalar)
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        kt = (k >> t) & 1
        swap ^= kt
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = kt
        a = (x2 + z2) % _P
        aa = a * a % _P
        b = (x2 - z2) % _P
        bb = b * b % _P
        e = (aa - bb) % _P
        c = (x3 + z3) % _P
        d = (x3 - z3) % _P
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


_BASE = (9).to_bytes(32, "little")


def decode_key(text: str, what: str = "key") -> bytes:
    """A base64 WireGuard key (surrounding whitespace ignored, as Go's decoder ignores newlines) -> 32 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64: {shorten(text)}") from None
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@functools.lru_cache(maxsize=64)
def public_key(private_b64: str) -> str:
    """The base64 public key of a base64 private key (``wg pubkey``)."""
    return encode_key(x25519(decode_key(private_b64, "private key"), _BASE))


def generate_private_key() -> str:
    """A new base64 private key, clamped as ``wg genkey`` does."""
    b = bytearray(os.urandom(32))
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return encode_key(bytes(b))


def is_key(text: str) -> bool:
    try:
        decode_key(text)
    except ValueError:
        return False
    return True


# --- options ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireguardOptions:
    listen_port: int = DEFAULT_PORT
    listen_port_v6: int = DEFAULT_PORT_V6
    mtu: int = 0  # 0: the uplink's MTU
    psk: str = ""  # base64, as `wg genpsk` prints it
    keepalive: int = 0  # PersistentKeepaliveInterval, seconds (0: off)
    mode: Mode = "separate"
    ipv4: bool = True
    ipv6: bool = False


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One WireGuard device: its name, port and the families whose traffic it carries."""

    name: str
    listen_port: int
    v4: bool
    v6: bool


def parse_options(backend: dict[str, Any], *, ipv4: bool = True, ipv6: bool = False) -> WireguardOptions:
    """Decode the wireguard Backend object (keys case-insensitive, as Go decodes them)."""
    o = BackendOptions(backend, "error decoding backend config")
    d = o.d
    num = o.integer
    psk = d.get("psk")
    if psk is None:
        psk = ""
    if not isinstance(psk, str):
        raise ConfigError(f"error decoding backend config: PSK must be a string, got {shorten_json(psk)}")
    if psk:
        try:
            decode_key(psk, "psk")
        except ValueError as e:
            raise ConfigError(f"could not parse psk: {e}") from None
    mode = d.get("mode")
    if mode is None or mode == "":
        mode = "separate"
    if mode not in MODES:
        raise ConfigError(f"no valid Mode configured (Mode={shorten_json(mode)}; one of {', '.join(MODES)})")
    if mode == "ipv6" and not ipv6:
        raise ConfigError("wireguard Mode ipv6 needs EnableIPv6 (EnableIPv6=false)")
    if mode == "ipv4" and not ipv4:
        raise ConfigError("wireguard Mode ipv4 needs EnableIPv4 (EnableIPv4=false)")
    mtu = num("MTU", 0, 0, 65535)
    if mtu and mtu - OVERHEAD < 576:
        raise ConfigError(f"error decoding backend config: MTU {mtu} leaves less than 576 after {OVERHEAD}")
    if mtu and ipv6 and mtu - OVERHEAD < 1280:
        raise ConfigError(
            f"error decoding backend config: MTU {mtu} leaves less than IPv6's 1280 after the {OVERHEAD} overhead"
        )
    opts = WireguardOptions(
        listen_port=num("ListenPort", DEFAULT_PORT, 1, 65535),
        listen_port_v6=num("ListenPortV6", DEFAULT_PORT_V6, 1, 65535),
        mtu=mtu,
        psk=psk,
        keepalive=num("PersistentKeepaliveInterval", 0, 0, 65535),
        mode=mode,
        ipv4=ipv4,
        ipv6=ipv6,
    )
    if opts.mode == "separate" and ipv4 and ipv6 and opts.listen_port == opts.listen_port_v6:
        raise ConfigError(
            f"error decoding backend config: ListenPort and ListenPortV6 are both {opts.listen_port}; "
            "Mode separate needs two ports"
        )
    return opts


def devices(opts: WireguardOptions) -> tuple[DeviceSpec, ...]:
    """The devices flannel creates for these options, in creation order."""
    if opts.mode == "separate":
        out = []
        if opts.ipv4:
            out.append(DeviceSpec(DEVICE, opts.listen_port, True, False))
        if opts.ipv6:
            out.append(DeviceSpec(DEVICE_V6, opts.listen_port_v6, False, True))
        return tuple(out)
    return (DeviceSpec(DEVICE, opts.listen_port, opts.ipv4, opts.ipv6),)


def mtu_for(uplink_mtu: int, opts: WireguardOptions) -> int:
    """FLANNEL_MTU and the device MTU."""
    return (opts.mtu or uplink_mtu) - OVERHEAD


# --- lease data -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireguardData:
    public_key: str
    port: int = 0  # 0: not published (flannel < v0.22): use our own ListenPort

    def to_json(self) -> str:
        return _compact({"PublicKey": self.public_key, "Port": self.port})


@functools.lru_cache(maxsize=1 << 16)
def parse_data(text: str) -> WireguardData:
    """Decode BackendData/BackendV6Data of a wireguard lease; raises LeaseFormatError."""
    try:
        d = loads_strict(text)
    except ValueError:
        raise LeaseFormatError("BackendData is not JSON") from None
    if not isinstance(d, dict):
        raise LeaseFormatError("BackendData is not an object")
    low = {k.lower(): v for k, v in d.items()}
    key = low.get("publickey")
    if not isinstance(key, str) or not is_key(key):
        raise LeaseFormatError(f"BackendData.PublicKey is not a WireGuard key: {shorten(key)}")
    port = low.get("port", 0)
    if port is None:
        port = 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise LeaseFormatError(f"BackendData.Port is not a port number: {shorten(port)}")
    return WireguardData(key.strip(), port)


def lease_data(opts: WireguardOptions, public_key: str) -> tuple[str | None, str | None]:
    """(BackendData, BackendV6Data) for our lease: one per enabled family, with the port that serves it."""
    v6_port = opts.listen_port_v6 if opts.mode == "separate" else opts.listen_port
    v4 = WireguardData(public_key, opts.listen_port).to_json() if opts.ipv4 else None
    v6 = WireguardData(public_key, v6_port).to_json() if opts.ipv6 else None
    return v4, v6


# --- peers ------------------------------------------------------------------------------------------


def _ip4_private(ip: IPv4Address) -> bool:
    # flannel's ip.IP4.IsPrivate: RFC 1918 only.
    a, b = ip.packed[0], ip.packed[1]
    return a == 10 or (a == 172 and b & 0xF0 == 16) or (a == 192 and b == 168)


def _ip6_private(ip: IPv6Address) -> bool:
    # flannel's ip.IP6.IsPrivate: fc00::/7 (unique local).
    return ip.packed[0] & 0xFE == 0xFC


def select_mode(
    peer4: IPv4Address, peer6: IPv6Address | None, own4: IPv4Address | None, own6: IPv6Address | None
) -> Mode:
    """Mode ``auto``: which of a peer's addresses to dial (flannel's selectMode)."""
    if peer6 is None:
        return "ipv4"
    if not _ip4_private(peer4) and own4 is not None:
        return "ipv4"
    if not _ip6_private(peer6) and own6 is not None and not _ip6_private(own6):
        return "ipv6"
    return "ipv4"


@dataclass(frozen=True, slots=True)
class PeerWg:
    """The WireGuard peers one lease calls for, or why it is refused."""

    peers: tuple[WgPeer, ...] = ()
    rejected: str = ""


def _unicast(ip: IPv4Address | IPv6Address) -> bool:
    return not (ip.is_unspecified or ip.is_multicast or ip.is_loopback)


def peer_entries(
    lease: Lease,
    opts: WireguardOptions,
    *,
    own_key: str = "",
    own_public_ip: IPv4Address | None = None,
    own_public_ipv6: IPv6Address | None = None,
) -> PeerWg:
    """WgPeer entries for one peer lease: endpoint, AllowedIPs = its subnet(s), PSK and keepalive."""
    a = lease.attrs
    if a.backend_type != BACKEND_TYPE:
        return PeerWg(rejected=f"ignoring non-wireguard subnet: type={a.backend_type}")
    d4 = d6 = None
    try:
        if opts.ipv4 and a.backend_data is not None:
            d4 = parse_data(a.backend_data)
        if opts.ipv6 and a.backend_v6_data is not None:
            d6 = parse_data(a.backend_v6_data)
    except LeaseFormatError as e:
        return PeerWg(rejected=str(e))
    for d in (d4, d6):
        if d is not None and own_key and d.public_key == own_key:
            return PeerWg(rejected=f"PublicKey {d.public_key} is our own")
    v4_ok = opts.ipv4 and d4 is not None and lease.subnet is not None and _unicast(a.public_ip)
    v6_ok = opts.ipv6 and d6 is not None and lease.subnet6 is not None and a.public_ipv6 is not None
    if v6_ok and a.public_ipv6 is not None and not _unicast(a.public_ipv6):
        v6_ok = False
    ep4 = f"{a.public_ip}:{(d4.port if d4 and d4.port else opts.listen_port)}"
    v6_default = opts.listen_port_v6 if opts.mode == "separate" else opts.listen_port
    ep6 = f"[{a.public_ipv6}]:{(d6.port if d6 and d6.port else v6_default)}" if a.public_ipv6 else ""
    if opts.mode == "separate":
        out: list[WgPeer] = []
        if v4_ok and d4 is not None:
            out.append(WgPeer(d4.public_key, ep4, (str(lease.subnet),), DEVICE, opts.keepalive, opts.psk))
        if v6_ok and d6 is not None:
            out.append(WgPeer(d6.public_key, ep6, (str(lease.subnet6),), DEVICE_V6, opts.keepalive, opts.psk))
        if not out:
            return PeerWg(rejected="lease has no usable WireGuard data for an enabled family")
        return PeerWg(tuple(out))
    allowed: list[str] = []
    if v4_ok:
        allowed.append(str(lease.subnet))
    if v6_ok:
        allowed.append(str(lease.subnet6))
    key_data = d6 if v6_ok else d4  # flannel takes the last family's key; both are one key anyway
    if not allowed or key_data is None:
        return PeerWg(rejected="lease has no usable WireGuard data for an enabled family")
    mode: Mode = opts.mode
    if mode == "auto" and not opts.ipv4:
        mode = "ipv6"  # an IPv6-only network: PublicIP is 0.0.0.0, there is nothing else to dial
    elif mode == "auto":
        mode = select_mode(a.public_ip, a.public_ipv6 if v6_ok else None, own_public_ip, own_public_ipv6)
    if mode == "ipv6":
        if not ep6:
            return PeerWg(rejected="Mode ipv6 but the lease has no PublicIPv6")
        endpoint = ep6
    else:
        if not _unicast(a.public_ip):
            return PeerWg(rejected=f"PublicIP {a.public_ip} is not a unicast host address")
        endpoint = ep4
    return PeerWg((WgPeer(key_data.public_key, endpoint, tuple(allowed), DEVICE, opts.keepalive, opts.psk),))
