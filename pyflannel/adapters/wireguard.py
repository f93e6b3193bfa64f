"""WireGuard on this host: the key file, the devices (kernel or wireguard-go) and their peers.

Why two drivers: flannel creates a kernel ``wireguard`` link over rtnetlink and configures it over
genetlink, which fails outright on a host without the module (``Operation not supported``; this
project's test kernel is one). Debian's ``wireguard-go`` implements the same protocol in userspace on
a TUN device with the same name, and is configured through its UAPI socket
(``/var/run/wireguard/<dev>.sock``, the cross-platform text protocol ``set=1``/``get=1`` described
at wireguard.com/xplatform). Both end in the same kernel-visible state for the rest of pyflannel: a
link named ``flannel-wg`` with addresses and routes, and the same peers. :func:`open_driver` tries
the kernel first and says in the log which one it uses.

wireguard-go is started in its default background mode: it forks, and the command returns once the
device and the socket exist. Its lifetime then follows the link's, as a kernel device's would: the
data plane survives a crash of the daemon, and deleting the link (``close()``, or the re-creation at
start-up flannel does) makes wireguard-go exit. ``foreground=True`` keeps it a child of ours instead
(``wireguard-go -f``), stopped when the link is deleted or the driver is closed.

Keys on the UAPI socket are hex; everywhere else (leases, key file, ``WgPeer``) base64.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Protocol

from pyflannel.adapters.lazy_pyroute2 import import_iproute
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.errors import FlannelError
from pyflannel.core.model import WgPeer
from pyflannel.core.plan import Op

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"
_ZERO_KEY = "0" * 64
UAPI_TIMEOUT = 5.0
START_TIMEOUT = 10.0


class WireguardError(FlannelError):
    """A WireGuard device or its configuration interface failed; the message names the device."""


# --- key file ---------------------------------------------------------------------------------------


def key_file_path(env: dict[str, str] | None = None) -> str:
    """``WIREGUARD_KEY_FILE`` if set (even empty is flannel's "set"), else /run/flannel/wgkey."""
    e = os.environ if env is None else env
    return e.get(wgcore.KEY_FILE_ENV, wgcore.DEFAULT_KEY_FILE)


def read_key_file(path: str) -> str | None:
    """The private key in ``path`` (base64), None if the file does not exist; WireguardError if unusable."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise WireguardError(f"could not read key file {path}: {e.strerror}") from None
    try:
        wgcore.decode_key(text, "private key")
    except ValueError as e:
        raise WireguardError(f"could not parse private key from file {path}: {e}") from None
    return text.strip()


def load_or_create_key(path: str) -> tuple[str, bool]:
    """(private key, created): read ``path``, or write a new key there with mode 0400 (directory 0755).

    The new file appears complete or not at all: written to a temporary file in the same directory and
    hard-linked into place, so two starters never both write and a crash never leaves half a key.
    """
    key = read_key_file(path)
    if key is not None:
        return key, False
    key = wgcore.generate_private_key()
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".wgkey.", dir=directory)
    try:
        os.fchmod(fd, 0o400)
        os.write(fd, key.encode("ascii"))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:  # someone else created it meanwhile: theirs wins
            existing = read_key_file(path)
            if existing is None:
                raise WireguardError(f"key file {path} vanished while being created") from None
            return existing, False
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
    log.info("wireguard: generated a new private key in %s", path)
    return key, True


# --- status values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer as the device reports it (for ``flannelctl status``)."""

    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    keepalive: int
    psk: str
    last_handshake_sec: int  # unix time; 0 = never
    rx_bytes: int
    tx_bytes: int

    def entry(self, dev: str) -> WgPeer:
        return WgPeer(self.public_key, self.endpoint, self.allowed_ips, dev, self.keepalive, self.psk)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    name: str
    public_key: str
    listen_port: int
    peers: tuple[PeerStatus, ...] = field(default=())


def _hex(b64: str) -> str:
    return wgcore.decode_key(b64).hex()


def _b64(hexkey: str) -> str:
    return wgcore.encode_key(bytes.fromhex(hexkey))


def _allowed_order(cidr: str) -> tuple[int, int, int]:
    n = ip_network(cidr, strict=False)
    return (n.version, int(n.network_address), n.prefixlen)


def peer_lines(peer: WgPeer) -> list[str]:
    """UAPI ``set`` lines that make ``peer`` exactly as given (AllowedIPs replaced, PSK set or cleared)."""
    lines = [
        f"public_key={_hex(peer.public_key)}",
        f"preshared_key={_hex(peer.psk) if peer.psk else _ZERO_KEY}",
        f"endpoint={peer.endpoint}",
        f"persistent_keepalive_interval={peer.keepalive}",
        "replace_allowed_ips=true",
    ]
    lines += [f"allowed_ip={a}" for a in peer.allowed_ips]
    return lines


def parse_get(text: str, name: str) -> DeviceStatus:
    """The reply to ``get=1`` (key=value lines, peers each starting at ``public_key``)."""
    dev: dict[str, str] = {}
    peers: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line:
            continue
        k, _, v = line.partition("=")
        if k == "public_key":
            peers.append({"public_key": v, "allowed_ip": []})
        elif k == "allowed_ip" and peers:
            peers[-1]["allowed_ip"].append(v)
        elif peers:
            peers[-1][k] = v
        else:
            dev[k] = v
    if dev.get("errno", "0") != "0" and not peers:
        raise WireguardError(f"{name}: get failed with errno {dev['errno']}")
    private = dev.get("private_key", "")
    pub = wgcore.public_key(_b64(private)) if private and private != _ZERO_KEY else ""
    out = []
    for p in peers:
        psk = p.get("preshared_key", _ZERO_KEY)
        out.append(
            PeerStatus(
                public_key=_b64(p["public_key"]),
                endpoint=p.get("endpoint", ""),
                allowed_ips=tuple(sorted(p["allowed_ip"], key=_allowed_order)),
                keepalive=int(p.get("persistent_keepalive_interval", "0")),
                psk="" if psk == _ZERO_KEY else _b64(psk),
                last_handshake_sec=int(p.get("last_handshake_time_sec", "0")),
                rx_bytes=int(p.get("rx_bytes", "0")),
                tx_bytes=int(p.get("tx_bytes", "0")),
            )
        )
    return DeviceStatus(name, pub, int(dev.get("listen_port", "0")), tuple(out))


# --- UAPI client ------------------------------------------------------------------------------------


class Uapi:
    """A client for one wireguard-go device's UAPI socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def request(self, text: str) -> str:
        """Send one request (ending in a blank line) and return the reply up to its blank line."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(UAPI_TIMEOUT)
        try:
            s.connect(self.path)
            s.sendall(text.encode("ascii"))
            buf = b""
            while not buf.endswith(b"\n\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            raise WireguardError(f"UAPI socket {self.path}: {e.strerror or e}") from None
        finally:
            s.close()
        return buf.decode("ascii", errors="replace")

    def set(self, lines: Iterable[str]) -> None:
        reply = self.request("set=1\n" + "".join(f"{x}\n" for x in lines) + "\n")
        code = next((x[6:] for x in reply.splitlines() if x.startswith("errno=")), "")
        if code != "0":
            raise WireguardError(f"UAPI set on {self.path} failed: errno={code or 'none'} ({_errname(code)})")

    def get(self, name: str) -> DeviceStatus:
        return parse_get(self.request("get=1\n\n"), name)


def _errname(code: str) -> str:
    try:
        return os.strerror(abs(int(code)))
    except ValueError:
        return "no reply"


# --- drivers ----------------------------------------------------------------------------------------


class Driver(Protocol):
    kind: str  # "kernel" | "wireguard-go"

    def create(self, name: str) -> None: ...
    def configure(self, name: str, private_key: str, listen_port: int) -> None: ...
    def set_peers(self, name: str, replace: Sequence[WgPeer], remove: Sequence[str]) -> None: ...
    def status(self, name: str) -> DeviceStatus: ...
    def delete(self, name: str) -> None: ...
    def close(self) -> None: ...


IPRoute, NetlinkError = import_iproute()


def link_index(name: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def delete_link(name: str) -> bool:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        ipr.link("del", index=found[0])
    return True


def kernel_supported() -> bool:
    """Whether this kernel can create a ``wireguard`` link (probed with a throw-away device)."""
    probe = f"pfwg{os.getpid() % 100000}"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=probe, kind="wireguard")
        except NetlinkError as e:
            code = getattr(e, "code", None)
            if code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                return False
            if code != errno.EEXIST:
                raise
        found = ipr.link_lookup(ifname=probe)
        if found:
            ipr.link("del", index=found[0])
    return True


class UserspaceDriver:
    """wireguard-go on a TUN device, configured through its UAPI socket."""

    kind = "wireguard-go"

    def __init__(
        self, binary: str = "wireguard-go", socket_dir: str = SOCKET_DIR, *, foreground: bool = False
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise WireguardError(
                f"no kernel WireGuard and no {binary} in PATH: install the wireguard module or wireguard-go"
            )
        self.binary = path
        self.socket_dir = socket_dir
        self.foreground = foreground
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def sock(self, name: str) -> str:
        return os.path.join(self.socket_dir, f"{name}.sock")

    def uapi(self, name: str) -> Uapi:
        return Uapi(self.sock(name))

    def _socket_live(self, name: str) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.sock(name))
        except OSError:
            return False
        finally:
            s.close()
        return True

    def create(self, name: str) -> None:
        # A wireguard-go whose link was just deleted may still hold the socket for a moment.
        deadline = time.monotonic() + START_TIMEOUT
        while self._socket_live(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {k: v for k, v in os.environ.items() if k not in ("WG_PROCESS_FOREGROUND", "LOG_LEVEL")}
        if self.foreground:
            proc = subprocess.Popen(
                [self.binary, "-f", name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            self._children[name] = proc
            while not self._socket_live(name):
                if proc.poll() is not None:
                    raise WireguardError(f"wireguard-go {name} exited with status {proc.returncode}")
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise WireguardError(
                        f"wireguard-go {name}: no UAPI socket {self.sock(name)} after {START_TIMEOUT:g} s"
                    )
                time.sleep(0.02)
            return
        # Background mode returns once the device and the socket are up; the daemon child has /dev/null as
        # its output, so capturing ours cannot block.
        done = subprocess.run(
            [self.binary, name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=START_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            err = " ".join(done.stderr.decode(errors="replace").split())[-300:]
            raise WireguardError(f"wireguard-go {name} failed (status {done.returncode}): {err}")
        if not self._socket_live(name):
            raise WireguardError(f"wireguard-go {name} started but {self.sock(name)} does not answer")

    def configure(self, name: str, private_key: str, listen_port: int) -> None:
        self.uapi(name).set([f"private_key={_hex(private_key)}", f"listen_port={listen_port}", "replace_peers=true"])

    def set_private_key(self, name: str, private_key: str) -> None:
        self.uapi(name).set([f"private_key={_hex(private_key)}"])

    def set_peers(self, name: str, replace: Sequence[WgPeer], remove: Sequence[str]) -> None:
        lines: list[str] = []
        for key in remove:
            lines += [f"public_key={_hex(key)}", "remove=true"]
        for p in replace:
            lines += peer_lines(p)
        if lines:
            self.uapi(name).set(lines)

    def status(self, name: str) -> DeviceStatus:
        return self.uapi(name).get(name)

    def delete(self, name: str) -> None:
        delete_link(name)
        proc = self._children.pop(name, None)
        if proc is not None:
            try:
                proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for name in list(self._children):
            self.delete(name)


class KernelDriver:
    """The kernel module: rtnetlink link ``wireguard``, genetlink configuration through pyroute2."""

    kind = "kernel"

    def __init__(self) -> None:
        from pyroute2 import WireGuard  # type: ignore[import-untyped]

        self.wg = WireGuard()

    def create(self, name: str) -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="wireguard")

    def configure(self, name: str, private_key: str, listen_port: int) -> None:
        self.wg.set(name, private_key=private_key, listen_port=listen_port)
        for p in self.status(name).peers:  # replace_peers
            self.wg.set(name, peer={"public_key": p.public_key, "remove": True})

    def set_private_key(self, name: str, private_key: str) -> None:
        self.wg.set(name, private_key=private_key)

    def set_peers(self, name: str, replace: Sequence[WgPeer], remove: Sequence[str]) -> None:
        for key in remove:
            self.wg.set(name, peer={"public_key": key, "remove": True})
        for p in replace:
            host, _, port = p.endpoint.rpartition(":")
            self.wg.set(
                name,
                peer={
                    "public_key": p.public_key,
                    "preshared_key": p.psk or wgcore.encode_key(bytes(32)),
                    "endpoint_addr": host.strip("[]"),
                    "endpoint_port": int(port),
                    "persistent_keepalive": p.keepalive,
                    "allowed_ips": list(p.allowed_ips),
                },
            )

    def status(self, name: str) -> DeviceStatus:
        msgs = self.wg.info(name)
        peers: list[PeerStatus] = []
        port = 0
        pub = ""
        for m in msgs:
            port = m.get("WGDEVICE_A_LISTEN_PORT") or port
            pk = m.get("WGDEVICE_A_PUBLIC_KEY")
            pub = pk.decode() if isinstance(pk, bytes) else (pk or pub)
            for p in m.get("WGDEVICE_A_PEERS") or ():
                ep = p.get("WGPEER_A_ENDPOINT") or {}
                addr, eport = ep.get("addr", ""), ep.get("port", 0)
                psk = p.get("WGPEER_A_PRESHARED_KEY") or b""
                psk_s = psk.decode() if isinstance(psk, bytes) else str(psk)
                allowed = [f"{a['addr']}" for a in p.get("WGPEER_A_ALLOWEDIPS") or ()]
                hs = p.get("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                key = p.get("WGPEER_A_PUBLIC_KEY")
                peers.append(
                    PeerStatus(
                        public_key=key.decode() if isinstance(key, bytes) else str(key),
                        endpoint=f"[{addr}]:{eport}" if ":" in addr else f"{addr}:{eport}",
                        allowed_ips=tuple(sorted(allowed, key=_allowed_order)),
                        keepalive=int(p.get("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0),
                        psk="" if psk_s in ("", wgcore.encode_key(bytes(32))) else psk_s,
                        last_handshake_sec=int(hs.get("tv_sec", 0)) if isinstance(hs, dict) else 0,
                        rx_bytes=int(p.get("WGPEER_A_RX_BYTES") or 0),
                        tx_bytes=int(p.get("WGPEER_A_TX_BYTES") or 0),
                    )
                )
        return DeviceStatus(name, pub, int(port), tuple(peers))

    def delete(self, name: str) -> None:
        delete_link(name)

    def close(self) -> None:
        self.wg.close()


def open_driver(
    prefer: str = "auto", *, wireguard_go: str = "wireguard-go", socket_dir: str = SOCKET_DIR, foreground: bool = False
) -> KernelDriver | UserspaceDriver:
    """``prefer``: "auto" (kernel if this kernel can, else wireguard-go), "kernel" or "wireguard-go"."""
    if prefer not in ("auto", "kernel", "wireguard-go"):
        raise WireguardError(f"unknown WireGuard driver {prefer!r} (auto, kernel or wireguard-go)")
    if prefer == "kernel" or (prefer == "auto" and kernel_supported()):
        log.info("wireguard: using the kernel module")
        return KernelDriver()
    log.info("wireguard: this kernel has no WireGuard; using userspace %s (UAPI in %s)", wireguard_go, socket_dir)
    return UserspaceDriver(wireguard_go, socket_dir, foreground=foreground)


# --- applying WgPeer ops ----------------------------------------------------------------------------


def apply(driver: Driver, ops: Sequence[Op]) -> list[tuple[Op, str]]:
    """Apply WgPeer replace/delete ops, one configuration request per device; never raises for one op.

    A request that fails as a whole is retried op by op, so the failures name the ops the device refused.
    """
    failed: list[tuple[Op, str]] = []
    by_dev: dict[str, list[Op]] = {}
    for op in ops:
        if not isinstance(op.entry, WgPeer):
            failed.append((op, f"not a WireGuard peer: {op}"))
            continue
        by_dev.setdefault(op.entry.dev, []).append(op)
    for dev, dev_ops in by_dev.items():
        try:
            _send(driver, dev, dev_ops)
        except (WireguardError, ValueError, OSError) as e:
            if len(dev_ops) == 1:
                failed.append((dev_ops[0], str(e)))
                continue
            for op in dev_ops:
                try:
                    _send(driver, dev, [op])
                except (WireguardError, ValueError, OSError) as e1:
                    failed.append((op, str(e1)))
    return failed


def _send(driver: Driver, dev: str, ops: Sequence[Op]) -> None:
    replace = [op.entry for op in ops if op.action == "replace" and isinstance(op.entry, WgPeer)]
    keep = {p.public_key for p in replace}
    # Deleting a peer that is also being replaced (same key, new endpoint) would undo the replace.
    remove = [
        op.entry.public_key
        for op in ops
        if op.action == "delete" and isinstance(op.entry, WgPeer) and op.entry.public_key not in keep
    ]
    driver.set_peers(dev, replace, remove)


def observe(driver: Driver, devices: Iterable[str]) -> list[WgPeer]:
    """Every peer on ``devices`` as WgPeer entries (a device that does not exist has none)."""
    out: list[WgPeer] = []
    for dev in devices:
        try:
            st = driver.status(dev)
        except WireguardError:
            continue
        out.extend(p.entry(dev) for p in st.peers)
    return out
