"""wireguard: X25519 keys, options and flannel's errors, lease data, per-peer WgPeer entries, UAPI text."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from pyflannel.adapters import wireguard as wg
from pyflannel.core.backends import wireguard as w
from pyflannel.core.errors import ConfigError
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.model import WgPeer
from pyflannel.core.plan import Op

KEY_A = w.generate_private_key()
PUB_A = w.public_key(KEY_A)
PUB_B = w.public_key(w.generate_private_key())


def test_rfc7748_vectors() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    nine = (9).to_bytes(32, "little")
    assert w.x25519(alice, nine).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert w.x25519(alice, bob_pub).hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert w.x25519(k, u).hex() == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools' wg")
def test_public_key_matches_wg_pubkey() -> None:
    for _ in range(3):
        k = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        pub = subprocess.run(["wg", "pubkey"], input=k, capture_output=True, text=True, check=True).stdout
        assert w.public_key(k) == pub.strip()


def test_options_defaults_and_errors() -> None:
    o = w.parse_options({"Type": "wireguard"})
    assert (o.listen_port, o.listen_port_v6, o.mode, o.keepalive, o.psk, o.mtu) == (51820, 51821, "separate", 0, "", 0)
    assert w.mtu_for(1500, o) == 1420
    assert w.mtu_for(1500, w.parse_options({"MTU": 9000})) == 8920
    bad = [
        ({"Mode": "both"}, "no valid Mode configured"),
        ({"ListenPort": "51820"}, "ListenPort must be an integer"),
        ({"ListenPort": 70000}, "ListenPort out of range"),
        ({"PSK": "nope"}, "could not parse psk"),
        ({"PersistentKeepaliveInterval": 2.5}, "PersistentKeepaliveInterval must be an integer"),
        ({"Mode": "ipv6"}, "Mode ipv6 needs EnableIPv6"),
        ({"MTU": 600}, "MTU 600"),
    ]
    for backend, msg in bad:
        with pytest.raises(ConfigError, match=msg) as e:
            w.parse_options(backend)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="Mode ipv4 needs EnableIPv4"):
        w.parse_options({"Mode": "ipv4"}, ipv4=False, ipv6=True)
    with pytest.raises(ConfigError, match="two ports"):
        w.parse_options({"ListenPort": 5000, "ListenPortV6": 5000}, ipv4=True, ipv6=True)


def test_devices_per_mode() -> None:
    sep = w.parse_options({}, ipv4=True, ipv6=True)
    assert [(d.name, d.listen_port) for d in w.devices(sep)] == [("flannel-wg", 51820), ("flannel-wg-v6", 51821)]
    auto = w.parse_options({"Mode": "auto"}, ipv4=True, ipv6=True)
    assert w.devices(auto) == (w.DeviceSpec("flannel-wg", 51820, True, True),)


def test_lease_data_is_flannel_v0_28_shape() -> None:
    o = w.parse_options({}, ipv4=True, ipv6=True)
    v4, v6 = w.lease_data(o, PUB_A)
    assert v4 == f'{{"PublicKey":"{PUB_A}","Port":51820}}'
    assert v6 == f'{{"PublicKey":"{PUB_A}","Port":51821}}'
    assert w.parse_data(f'{{"PublicKey":"{PUB_A}"}}') == w.WireguardData(PUB_A, 0)  # v0.20.2: no Port


def lease(sn: str = "100.64.2.0/24", pub: str = "198.18.0.12", key: str = PUB_B, port: int | None = 51820,
          sn6: str | None = None, pub6: str | None = None, port6: int | None = 51821) -> Lease:
    data = {"PublicKey": key} if port is None else {"PublicKey": key, "Port": port}
    data6 = {"PublicKey": key} if port6 is None else {"PublicKey": key, "Port": port6}
    import json

    return Lease(
        IPv4Network(sn),
        LeaseAttrs(IPv4Address(pub), IPv6Address(pub6) if pub6 else None, "wireguard",
                   json.dumps(data, separators=(",", ":")),
                   json.dumps(data6, separators=(",", ":")) if sn6 else None),
        subnet6=IPv6Network(sn6) if sn6 else None,
    )


def test_peer_v4() -> None:
    o = w.parse_options({"PersistentKeepaliveInterval": 25, "PSK": KEY_A})
    r = w.peer_entries(lease(port=None), o, own_key=PUB_A)
    assert r.peers == (WgPeer(PUB_B, "198.18.0.12:51820", ("100.64.2.0/24",), "flannel-wg", 25, KEY_A),)
    assert w.peer_entries(lease(port=6000), o).peers[0].endpoint == "198.18.0.12:6000"


def test_peer_dual_separate_and_auto() -> None:
    le = lease(sn6="fd64:0:0:2::/64", pub6="fd18::c")
    sep = w.peer_entries(le, w.parse_options({}, ipv4=True, ipv6=True))
    assert [(p.dev, p.endpoint, p.allowed_ips) for p in sep.peers] == [
        ("flannel-wg", "198.18.0.12:51820", ("100.64.2.0/24",)),
        ("flannel-wg-v6", "[fd18::c]:51821", ("fd64:0:0:2::/64",)),
    ]
    auto = w.peer_entries(le, w.parse_options({"Mode": "auto"}, ipv4=True, ipv6=True),
                          own_public_ip=IPv4Address("198.18.0.11"), own_public_ipv6=IPv6Address("fd18::b"))
    # 198.18/15 is not RFC 1918, so auto dials v4 (flannel's selectMode).
    assert [(p.dev, p.endpoint, p.allowed_ips) for p in auto.peers] == [
        ("flannel-wg", "198.18.0.12:51820", ("100.64.2.0/24", "fd64:0:0:2::/64")),
    ]
    v6 = w.peer_entries(le, w.parse_options({"Mode": "ipv6"}, ipv4=True, ipv6=True))
    assert v6.peers[0].endpoint == "[fd18::c]:51821"


def test_select_mode() -> None:
    priv4, pub4 = IPv4Address("10.0.0.2"), IPv4Address("203.0.113.2")
    g6, ula6 = IPv6Address("2001:db8::2"), IPv6Address("fd00::2")
    assert w.select_mode(pub4, g6, IPv4Address("203.0.113.1"), g6) == "ipv4"
    assert w.select_mode(priv4, g6, IPv4Address("10.0.0.1"), IPv6Address("2001:db8::1")) == "ipv6"
    assert w.select_mode(priv4, g6, IPv4Address("10.0.0.1"), ula6) == "ipv4"
    assert w.select_mode(priv4, None, None, None) == "ipv4"


@pytest.mark.parametrize(
    ("le", "why"),
    [
        (lease(key=PUB_A), "our own"),
        (Lease(IPv4Network("100.64.2.0/24"), LeaseAttrs(IPv4Address("198.18.0.12"), backend_type="vxlan")),
         "non-wireguard"),
        (Lease(IPv4Network("100.64.2.0/24"), LeaseAttrs(IPv4Address("198.18.0.12"), backend_type="wireguard",
                                                       backend_data='{"PublicKey":"x"}')), "not a WireGuard key"),
        (lease(pub="0.0.0.0"), "no usable"),
    ],
)
def test_rejected(le: Lease, why: str) -> None:
    r = w.peer_entries(le, w.parse_options({}), own_key=PUB_A)
    assert r.peers == () and why in r.rejected


def test_uapi_text_round_trip() -> None:
    p = WgPeer(PUB_B, "198.18.0.12:51820", ("100.64.2.0/24",), "flannel-wg", 25, KEY_A)
    lines = wg.peer_lines(p)
    assert lines[0] == f"public_key={w.decode_key(PUB_B).hex()}"
    assert "replace_allowed_ips=true" in lines and lines[-1] == "allowed_ip=100.64.2.0/24"
    reply = "\n".join([
        f"private_key={w.decode_key(KEY_A).hex()}", "listen_port=51820",
        f"public_key={w.decode_key(PUB_B).hex()}", f"preshared_key={w.decode_key(KEY_A).hex()}",
        "protocol_version=1", "endpoint=198.18.0.12:51820", "last_handshake_time_sec=1700000000",
        "last_handshake_time_nsec=5", "tx_bytes=10", "rx_bytes=20", "persistent_keepalive_interval=25",
        "allowed_ip=100.64.2.0/24", "errno=0", "", "",
    ])
    st = wg.parse_get(reply, "flannel-wg")
    assert st.public_key == PUB_A and st.listen_port == 51820
    (peer,) = st.peers
    assert peer.entry("flannel-wg") == p and peer.last_handshake_sec == 1700000000


class FakeDriver:
    """Records set_peers calls; fails every request naming a key in ``refuse``."""

    kind = "fake"

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.calls: list[tuple[str, list[str], list[str]]] = []

    def set_peers(self, name: str, replace: list[WgPeer], remove: list[str]) -> None:
        if any(p.public_key in self.refuse for p in replace):
            raise wg.WireguardError("errno=-22")
        self.calls.append((name, [p.public_key for p in replace], remove))


def test_apply_batches_per_device_and_isolates_failures() -> None:
    good = WgPeer(PUB_A, "198.18.0.12:51820", ("100.64.2.0/24",), "flannel-wg")
    bad = WgPeer(PUB_B, "198.18.0.13:51820", ("100.64.3.0/24",), "flannel-wg")
    old = WgPeer(PUB_A, "198.18.0.99:51820", ("100.64.2.0/24",), "flannel-wg")
    d = FakeDriver({PUB_B})
    failed = wg.apply(d, [Op("replace", good), Op("replace", bad), Op("delete", old)])  # type: ignore[arg-type]
    assert [str(op) for op, _ in failed] == [str(Op("replace", bad))]
    # The delete of the same key being replaced is not sent (it would undo the replace).
    assert ("flannel-wg", [PUB_A], []) in d.calls


def test_key_file_created_0400(tmp_path: Path) -> None:
    path = tmp_path / "run" / "flannel" / "wgkey"
    key, created = wg.load_or_create_key(str(path))
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "run" / "flannel").stat().st_mode) == 0o755
    assert wg.load_or_create_key(str(path)) == (key, False)
    assert [p.name for p in path.parent.iterdir()] == ["wgkey"]
    os.chmod(path, 0o600)
    path.write_text("garbage\n")
    with pytest.raises(wg.WireguardError, match="could not parse private key"):
        wg.load_or_create_key(str(path))
    assert wg.key_file_path({"WIREGUARD_KEY_FILE": "/x"}) == "/x"
    assert wg.key_file_path({}) == "/run/flannel/wgkey"
