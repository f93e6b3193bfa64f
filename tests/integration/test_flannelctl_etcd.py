"""flannelctl's etcd commands against a real etcd 3.4: config, leases, reservations, TLS and auth flags.

Most tests call ``main(argv, env)`` in-process (stdout/stderr captured); one runs the installed console
script. Leases are created the way flanneld creates them (SubnetRegistry.create_lease: a 24 h etcd lease and
a txn on version == 0), so TTLs and lease IDs are real.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.etcd import EtcdServer, TLSFiles, etcdctl, put_v2, start_etcd

from pyflannel.adapters.etcd import EtcdClient
from pyflannel.adapters.registry import SubnetRegistry
from pyflannel.cli.flannelctl import main
from pyflannel.core.lease import LeaseAttrs, VxlanData

T = TypeVar("T")
PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'
FLANNELCTL = Path(sys.executable).parent / "flannelctl"
# The credentials the etcd_auth fixture sets up (tests/integration/conftest.py).
AUTH_USER = "flannel"
AUTH_PASSWORD = "flannelpw"



def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def ctl(capsys: pytest.CaptureFixture[str], server: EtcdServer, *argv: str,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    rc = main([f"-etcd-endpoints={server.client_url}", *argv], env or {})
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def get(server: EtcdServer, key: str) -> str:
    return etcdctl(server, "get", key, "--print-value-only", check=True).stdout.strip()


def vx(ip: str, mac: str) -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(ip), backend_type="vxlan", backend_data=VxlanData(1, mac).to_json())


def make_leases(server: EtcdServer, leases: dict[str, LeaseAttrs]) -> dict[str, int]:
    async def go() -> dict[str, int]:
        async with EtcdClient([server.client_url]) as c:
            reg = SubnetRegistry(c, PREFIX)
            out = {}
            for sub, attrs in leases.items():
                lease = await reg.create_lease(IPv4Network(sub), attrs)
                assert lease is not None
                out[sub] = lease.lease_id
            return out

    return run(go)


def test_config_set_get_validate_roundtrip(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    rc, out, err = ctl(capsys, etcd, "config", "get")
    assert rc == 1 and "is missing under the v3 API" in err and out == ""
    rc, out, err = ctl(capsys, etcd, "config", "set", CONFIG)
    assert rc == 0 and out.startswith("wrote /coreos.com/network/config (revision ")
    assert "SubnetMin 100.64.1.0, SubnetMax 100.64.255.0 (255 subnets), backend vxlan" in out
    assert get(etcd, f"{PREFIX}/config") == CONFIG  # written as given, byte for byte
    rc, out, _ = ctl(capsys, etcd, "config", "get")
    assert (rc, out) == (0, CONFIG + "\n")
    rc, out, _ = ctl(capsys, etcd, "config", "get", "--json")
    d = json.loads(out)
    assert d["raw"] == CONFIG and d["valid"] and d["effective"]["Subnets"] == 255
    rc, out, _ = ctl(capsys, etcd, "config", "validate")
    assert (rc, out.split(":")[0]) == (0, "/coreos.com/network/config")


def test_config_set_refuses_invalid_and_writes_nothing(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    rc, _, err = ctl(capsys, etcd, "config", "set", '{"Network":"100.64.0.0/16","SubnetLen":15}')
    assert rc == 1
    assert "the command line: invalid config: network must be able to accommodate at least four subnets" in err
    assert get(etcd, f"{PREFIX}/config") == ""
    rc, _, err = ctl(capsys, etcd, "config", "set", '{"Network":"100.64.0.0/16","Backend":{"Type":"vxlan","VNI":"x"}}')
    assert rc == 1 and "error decoding VXLAN backend config: VNI must be an integer" in err


def test_config_set_from_file_and_stdin(capsys: pytest.CaptureFixture[str], etcd: EtcdServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "net-conf.json"
    f.write_text(CONFIG)
    assert ctl(capsys, etcd, "config", "set", "--from-file", str(f))[0] == 0
    assert get(etcd, f"{PREFIX}/config") == CONFIG
    other = CONFIG.replace("100.64.0.0/16", "100.66.0.0/16")
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(other))
    assert ctl(capsys, etcd, "config", "set", "--from-file", "-")[0] == 0
    assert get(etcd, f"{PREFIX}/config") == other


def test_config_set_warns_about_misfits_and_unsupported(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    etcdctl(etcd, "put", f"{PREFIX}/config", CONFIG, check=True)
    make_leases(etcd, {"100.64.5.0/24": vx("198.18.0.11", "0e:00:00:00:00:01")})
    rc, _, err = ctl(capsys, etcd, "config", "set", '{"Network":"100.65.0.0/16","Backend":{"Type":"ipip"}}')
    assert rc == 0
    assert ("backend type 'ipip' is valid for Go flanneld, but pyflannel nodes run only vxlan, host-gw and "
            "wireguard") in err
    assert "1 existing lease(s) do not fit the new config (e.g. 100.64.5.0/24)" in err


def test_v2_only_config_is_explained(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    server = start_etcd(tmp_path / "v2", enable_v2=True)
    try:
        put_v2(server, f"{PREFIX}/config", CONFIG)
        rc, _, err = ctl(capsys, server, "config", "get")
        assert rc == 1 and "exists only under the v2 API" in err
        assert f"ETCDCTL_API=3 etcdctl put {PREFIX}/config '{CONFIG}'" in err
        rc, _, err = ctl(capsys, server, "config", "set", CONFIG)
        assert rc == 0
        assert f"{PREFIX}/config exists only under the etcd v2 API" in err and "writing it under v3 now" in err
        assert get(server, f"{PREFIX}/config") == CONFIG
        rc, _, err = ctl(capsys, server, "config", "set", CONFIG)
        assert rc == 0 and "v2" not in err  # once v3 has it, no more warning
    finally:
        server.stop()


def test_leases_table_and_json(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    etcdctl(etcd, "put", f"{PREFIX}/config", CONFIG, check=True)
    ids = make_leases(etcd, {"100.64.67.0/24": vx("198.18.0.11", "b6:3a:f4:a5:6f:94"),
                             "100.64.81.0/24": vx("198.18.0.13", "2a:a3:22:0d:18:d9")})
    etcdctl(etcd, "put", f"{PREFIX}/subnets/100.64.9.0-24", '{"PublicIP":"198.18.0.50","PublicIPv6":null}',
            check=True)
    etcdctl(etcd, "put", f"{PREFIX}/subnets/garbage", "x", check=True)
    rc, out, err = ctl(capsys, etcd, "leases")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "EXPIRES-IN", "RESERVED"]
    assert lines[1].split() == ["100.64.9.0/24", "198.18.0.50", "-", "-", "never", "yes"]
    row = lines[2].split()
    assert row[:4] == ["100.64.67.0/24", "198.18.0.11", "vxlan", "b6:3a:f4:a5:6f:94"] and row[5] == "no"
    assert row[4].startswith("23h59m")
    assert "ignoring bad lease key /coreos.com/network/subnets/garbage" in err
    rc, out, _ = ctl(capsys, etcd, "leases", "--json")
    d = json.loads(out)
    by = {x["subnet"]: x for x in d["leases"]}
    assert by["100.64.67.0/24"]["lease_id"] == ids["100.64.67.0/24"]
    assert by["100.64.67.0/24"]["granted_ttl_seconds"] == 86400 and by["100.64.67.0/24"]["ttl_seconds"] > 86300
    assert by["100.64.67.0/24"]["backend_data"] == {"VNI": 1, "VtepMAC": "b6:3a:f4:a5:6f:94"}
    assert by["100.64.9.0/24"]["reserved"] and by["100.64.9.0/24"]["ttl_seconds"] is None
    assert d["bad"][0]["key"].endswith("/garbage")


def test_reserve_and_unreserve(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    etcdctl(etcd, "put", f"{PREFIX}/config", CONFIG, check=True)
    make_leases(etcd, {"100.64.81.0/24": vx("198.18.0.13", "2a:a3:22:0d:18:d9")})
    rc, out, _ = ctl(capsys, etcd, "reserve", "100.64.9.0/24", "--public-ip", "198.18.0.50")
    assert rc == 0 and out == f"reserved 100.64.9.0/24 for 198.18.0.50 ({PREFIX}/subnets/100.64.9.0-24, no TTL)\n"
    key = f"{PREFIX}/subnets/100.64.9.0-24"
    assert get(etcd, key) == '{"PublicIP":"198.18.0.50","PublicIPv6":null}'
    lease_field = json.loads(etcdctl(etcd, "get", key, "-w", "json", check=True).stdout)["kvs"][0].get("lease", 0)
    assert lease_field == 0
    again = ctl(capsys, etcd, "reserve", "100.64.9.0/24", "--public-ip", "198.18.0.50")
    assert again[1].endswith("(nothing changed)\n")
    for argv, msg in [
        (("100.64.9.0/24", "198.18.0.51"), "overlaps the reservation 100.64.9.0/24 of 198.18.0.50"),
        (("100.64.81.0/24", "198.18.0.51"), "overlaps the lease 100.64.81.0/24 of 198.18.0.13"),
        (("100.99.1.0/24", "198.18.0.51"), "is outside the Network 100.64.0.0/16"),
        (("100.64.10.0/23", "198.18.0.51"), "is not a /24 subnet"),
    ]:
        rc, _, err = ctl(capsys, etcd, "reserve", argv[0], "--public-ip", argv[1])
        assert rc == 1 and msg in err, err
    rc, _, err = ctl(capsys, etcd, "unreserve", "100.64.81.0/24")
    assert rc == 1 and "is a lease with a TTL" in err and "etcdctl del" in err
    rc, out, _ = ctl(capsys, etcd, "unreserve", "100.64.9.0-24")
    assert rc == 0 and out.startswith("removed the reservation 100.64.9.0/24 of 198.18.0.50")
    assert get(etcd, key) == ""
    rc, _, err = ctl(capsys, etcd, "unreserve", "100.64.9.0/24")
    assert rc == 1 and "no reservation for 100.64.9.0/24" in err


def test_reserving_a_nodes_own_lease_keeps_its_attrs(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    etcdctl(etcd, "put", f"{PREFIX}/config", CONFIG, check=True)
    attrs = vx("198.18.0.13", "2a:a3:22:0d:18:d9")
    ids = make_leases(etcd, {"100.64.81.0/24": attrs})
    rc, out, _ = ctl(capsys, etcd, "reserve", "100.64.81.0/24", "--public-ip", "198.18.0.13")
    assert rc == 0 and "converted the lease 100.64.81.0/24 of 198.18.0.13 into a reservation" in out
    key = f"{PREFIX}/subnets/100.64.81.0-24"
    assert get(etcd, key) == attrs.to_json()  # VtepMAC and BackendType survive: peers keep routing to it
    kv = json.loads(etcdctl(etcd, "get", key, "-w", "json", check=True).stdout)["kvs"][0]
    assert kv.get("lease", 0) == 0
    ttl = etcdctl(etcd, "lease", "timetolive", f"{ids['100.64.81.0/24']:x}", check=True).stdout
    assert "already expired" in ttl  # the old etcd lease was revoked


def test_tls_flags(capsys: pytest.CaptureFixture[str], etcd_tls: tuple[EtcdServer, TLSFiles]) -> None:
    server, tls = etcd_tls
    flags = [f"-etcd-cafile={tls.ca}", f"-etcd-certfile={tls.client_cert}", f"-etcd-keyfile={tls.client_key}"]
    rc, out, _ = ctl(capsys, server, *flags, "config", "set", CONFIG)
    assert rc == 0
    rc, out, _ = ctl(capsys, server, *flags, "leases")
    assert rc == 0 and out.startswith("SUBNET")
    rc, _, err = ctl(capsys, server, f"-etcd-cafile={tls.ca}", "leases")  # no client certificate
    assert rc == 1 and err.count("\n") == 1


def test_auth_flags_and_env(capsys: pytest.CaptureFixture[str], etcd_auth: EtcdServer) -> None:
    rc, _, _ = ctl(capsys, etcd_auth, f"-etcd-username={AUTH_USER}", f"-etcd-password={AUTH_PASSWORD}",
                   "config", "set", CONFIG)
    assert rc == 0
    env = {"FLANNELD_ETCD_USERNAME": AUTH_USER, "FLANNELD_ETCD_PASSWORD": AUTH_PASSWORD}
    rc, out, _ = ctl(capsys, etcd_auth, "config", "get", env=env)
    assert (rc, out) == (0, CONFIG + "\n")
    rc, _, err = ctl(capsys, etcd_auth, "-etcd-username=flannel", "-etcd-password=wrong", "leases")
    assert rc == 1 and "authentication" in err and "wrong" not in err


def test_prefix_flag(capsys: pytest.CaptureFixture[str], etcd: EtcdServer) -> None:
    assert ctl(capsys, etcd, "-etcd-prefix=/other/net", "config", "set", CONFIG)[0] == 0
    assert get(etcd, "/other/net/config") == CONFIG and get(etcd, f"{PREFIX}/config") == ""


def test_console_script_and_unreachable_etcd(etcd: EtcdServer) -> None:
    etcdctl(etcd, "put", f"{PREFIX}/config", CONFIG, check=True)
    p = subprocess.run([str(FLANNELCTL), f"--etcd-endpoints={etcd.client_url}", "config", "get"], capture_output=True,
                       text=True, timeout=30, check=False)
    assert (p.returncode, p.stdout) == (0, CONFIG + "\n")
    env: dict[str, Any] = {"PATH": "/usr/bin:/bin", "FLANNELD_ETCD_ENDPOINTS": "http://127.0.0.1:9"}
    p = subprocess.run([str(FLANNELCTL), "leases"], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert p.returncode == 1 and "http://127.0.0.1:9" in p.stderr and p.stderr.count("\n") == 1


def test_daemon_start_path_does_not_import_prometheus_client() -> None:
    code = ("import sys, pyflannel.daemon.app, pyflannel.daemon.health, pyflannel.cli.flanneld; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
