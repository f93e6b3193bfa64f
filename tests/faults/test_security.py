"""Security properties of a running flanneld, checked end to end (docs/security.md says what and why).

* TLS to etcd with client certificates: a server certificate from another CA is refused with a line that
  names the endpoint and the verification failure, and the daemon keeps retrying instead of crashing.
* Username/password auth under a least-privilege role (read on the prefix, write only under subnets/):
  the node gets its lease and routes; the role cannot touch the config; a wrong password is one clear line.
* Secrets never reach a log, stderr, ``--version`` or a file; subnet.env is 0644 and holds nothing secret.
* The health server listens only on -healthz-ip, and nothing listens at all without -healthz-port.
* No shell is ever run: no ``shell=True``, ``os.system``, ``os.popen``, ``subprocess.getoutput`` in the code.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from support.cluster import ETCD_CLIENT_PORT, LAN_GATEWAY, Cluster, Node, child_env, log_tail
from support.etcd import etcdctl as etcdctl_tls
from support.etcd import make_other_ca, make_tls, start_etcd

import pyflannel

from .conftest import (
    CONFIG,
    CONFIG_KEY,
    SUBNETS,
    alive,
    assert_alive,
    etcdctl,
    flanneld_log,
    kernel,
    leases,
    missing_routes,
    own_subnet,
    ping_pods,
    record,
    scenario,
    set_etcd_user,
    wait_converged,
    wait_for,
)

pytestmark = pytest.mark.root
SECRET = "S3cretValue"
ROOT_PW = "R00tPassw0rd"


# ------------------------------------------------------------------------------------------------
# No shell, ever (pure; runs without root)

SHELL_CALLS = {
    ("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
    ("asyncio", "create_subprocess_shell"),
}


def shell_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every place in ``source`` that may run a shell: shell=<anything but False>, os.system/os.popen,
    subprocess.getoutput/getstatusoutput, asyncio's *_shell, and imports of those names."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{filename}:{node.lineno}: shell={ast.unparse(kw.value)}")
            f = node.func
            if isinstance(f, ast.Attribute) and (
                (isinstance(f.value, ast.Name) and (f.value.id, f.attr) in SHELL_CALLS)
                or f.attr in ("create_subprocess_shell", "subprocess_shell")
            ):
                found.append(f"{filename}:{node.lineno}: {ast.unparse(f)}()")
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "subprocess", "asyncio"):
            for alias in node.names:
                if (node.module, alias.name) in SHELL_CALLS:
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name}")
    return found


def test_the_scanner_finds_each_way_to_run_a_shell() -> None:
    code = (
        "import os, subprocess, asyncio\nfrom os import system\nsubprocess.run('ls', shell=True)\n"
        "subprocess.Popen(cmd, shell=flag)\nos.system('x')\nos.popen('x')\nsubprocess.getoutput('x')\n"
        "subprocess.getstatusoutput('x')\nasyncio.create_subprocess_shell('x')\nloop.subprocess_shell(p, 'x')\n"
        "subprocess.run(['ls'], shell=False)\nsubprocess.run(['ls'])\nself.popen(ns, ['ls'], log)\n"
    )
    assert len(shell_uses(code)) == 9


def test_no_shell_is_ever_invoked() -> None:
    with scenario("14d no shell anywhere in pyflannel/ (ast scan)", peers=0) as row:
        root = Path(pyflannel.__file__).parent
        files = sorted(root.rglob("*.py"))
        assert len(files) > 30
        found = [hit for f in files for hit in shell_uses(f.read_text(), str(f.relative_to(root.parent)))]
        row.note = f"{len(files)} files scanned: no shell=True, os.system, os.popen, subprocess.getoutput"
        assert found == []


# ------------------------------------------------------------------------------------------------
# Clusters built by hand (etcd with TLS or auth before any flanneld starts)


@pytest.fixture
def bare_cluster(netns_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    """Namespaces only: the test starts etcd and flanneld itself. Torn down afterwards, also on failure."""
    c = Cluster(prefix=netns_prefix, nodes=3, workdir=tmp_path / "cluster")
    try:
        c.up()
        yield c
    finally:
        c.down()


def test_tls_server_cert_from_another_ca_is_refused_and_retried(bare_cluster: Cluster, tmp_path: Path) -> None:
    c = bare_cluster
    with scenario("12 TLS etcd, client trusts another CA (and a control node with the right one)", peers=1) as row:
        tls = make_tls(tmp_path / "pki", host=LAN_GATEWAY)
        other_ca = make_other_ca(tmp_path / "pki-other")
        c.etcd = start_etcd(tmp_path / "etcd", name=f"{c.prefix}-etcd", host=LAN_GATEWAY,
                            client_port=ETCD_CLIENT_PORT, tls=tls, netns=c.lan_ns)
        etcdctl_tls(c.etcd, "put", CONFIG_KEY, CONFIG, check=True)
        endpoint = f"https://{LAN_GATEWAY}:{ETCD_CLIENT_PORT}"
        client = [f"-etcd-endpoints={endpoint}", f"-etcd-certfile={tls.client_cert}",
                  f"-etcd-keyfile={tls.client_key}"]
        n1, n2, _ = c.nodes
        c.start_flanneld(n1, [*client, f"-etcd-cafile={other_ca}"])
        c.start_flanneld(n2, [*client, f"-etcd-cafile={tls.ca}"])  # control: same setup, the right CA

        c.wait_subnet_env(n2, timeout=20)
        want = f"Couldn't fetch network config: etcd {endpoint}: /v3/kv/range: TLS handshake failed"
        line = wait_for(lambda: next((ln for ln in flanneld_log(n1).splitlines() if want in ln), None), 15,
                        "n1's TLS error line")
        assert "certificate verify failed" in line, line

        def rejected() -> int:
            return sum(1 for ln in c.etcd.log_path.read_text(errors="replace").splitlines()
                       if "rejected connection" in ln and n1.lan_ip in ln)

        first = wait_for(rejected, 10, "etcd to see n1's refused handshakes")
        time.sleep(4)
        assert rejected() >= first + 3, "n1 stopped retrying"  # it retries every second
        assert alive(c, n1), f"n1 exited:\n{log_tail(n1.flanneld_log)}"
        assert not n1.subnet_file.exists()
        text = flanneld_log(n1)
        assert "Traceback" not in text
        assert text.count("Couldn't fetch network config") == 1  # repeats are logged every 30 s, not every try
        assert set(leases_tls(c)) == {f"{SUBNETS}{own_subnet(c, n2).network_address}-24"}
        row.note = (f"n1 refused {endpoint} ('TLS handshake failed: ... certificate verify failed'), "
                    f"retried {rejected()} handshakes, still running; n2 with the right CA got its lease")


def leases_tls(c: Cluster) -> dict[str, str]:
    assert c.etcd is not None
    out = etcdctl_tls(c.etcd, "get", "--prefix", SUBNETS, check=True).stdout.splitlines()
    return {out[i]: out[i + 1] for i in range(0, len(out) - 1, 2)}


# The exact commands docs/security.md gives (ETCDCTL_API=3; endpoint and TLS flags left out there).
LEAST_PRIVILEGE = [
    ["user", "add", "root", f"--new-user-password={ROOT_PW}", "--interactive=false"],
    ["role", "add", "root"],
    ["user", "grant-role", "root", "root"],
    ["role", "add", "flannel"],
    ["role", "grant-permission", "flannel", "--prefix=true", "read", "/coreos.com/network/"],
    ["role", "grant-permission", "flannel", "--prefix=true", "readwrite", "/coreos.com/network/subnets/"],
    ["user", "add", "flannel", f"--new-user-password={SECRET}", "--interactive=false"],
    ["user", "grant-role", "flannel", "flannel"],
    ["auth", "enable"],
]


def test_password_auth_with_a_least_privilege_role_and_no_secret_in_logs(bare_cluster: Cluster) -> None:
    c = bare_cluster
    with scenario("13+14 etcd auth, role limited to the prefix; password never logged", peers=1) as row:
        c.start_etcd()
        c.put_config(CONFIG)
        for step in LEAST_PRIVILEGE:
            etcdctl(c, *step)
        root, user = f"root:{ROOT_PW}", f"flannel:{SECRET}"
        set_etcd_user(c, root)  # the conftest helpers read leases as root from now on
        # The role can read the config but not change it, and nothing outside the prefix.
        assert etcdctl(c, "get", CONFIG_KEY, "--print-value-only", user=user).stdout.strip() == CONFIG
        for args in (["put", CONFIG_KEY, "{}"], ["put", "/other", "x"], ["get", "/other"]):
            denied = etcdctl(c, *args, user=user, check=False)
            assert denied.returncode != 0 and "permission denied" in denied.stderr, (args, denied.stderr)
        assert etcdctl(c, "get", CONFIG_KEY, user="", check=False).returncode != 0  # auth on: anonymous refused

        n1, n2, n3 = c.nodes
        c.start_flanneld(n1, ["-etcd-username=flannel", f"-etcd-password={SECRET}"])
        c.start_flanneld(n2, [], env={"FLANNELD_ETCD_USERNAME": "flannel", "FLANNELD_ETCD_PASSWORD": SECRET})
        c.start_flanneld(n3, ["-etcd-username=flannel", "-etcd-password=Wr0ngS3cret"])
        for n in (n1, n2):
            c.wait_subnet_env(n, timeout=20)
        ls = leases(c)
        assert len(ls) == 2
        for n in (n1, n2):
            assert json.loads(ls[f"{SUBNETS}{own_subnet(c, n).network_address}-24"])["PublicIP"] == n.lan_ip
        wait_converged(c, nodes=[n1, n2])
        assert all(len(kernel(n.ns)["routes"]) == 1 for n in (n1, n2))

        bad = "authentication as 'flannel' failed"
        line = wait_for(lambda: next((ln for ln in flanneld_log(n3).splitlines() if bad in ln), None), 15,
                        "n3's authentication error")
        assert "Couldn't fetch network config" in line and "invalid user ID or password" in line, line
        time.sleep(2)
        assert_alive(c)

        # Hygiene: the password is in no log, no stderr, no file flanneld wrote, not in --version output.
        for n in c.nodes:
            text = flanneld_log(n)
            assert SECRET not in text and "Wr0ngS3cret" not in text, f"{n.name} logged a password"
            assert "'etcd-password': '<redacted>'" in text
            assert "Traceback" not in text
            for f in n.dir.iterdir():
                if f.is_file() and f.name != "flanneld.log":
                    assert SECRET.encode() not in f.read_bytes(), f"{f} holds the password"
        for n in (n1, n2):
            assert (n.subnet_file.stat().st_mode & 0o777) == 0o644
        assert not list(c.workdir.rglob("*.pem")) and not list(c.workdir.rglob("*token*"))  # no secret files
        flanneld = str(Path(sys.executable).parent / "flanneld")
        v = subprocess.run([flanneld, "--version", f"-etcd-password={SECRET}"], capture_output=True, text=True,
                           env=child_env({"FLANNELD_ETCD_PASSWORD": SECRET}), timeout=30, check=False)
        assert v.returncode == 0 and v.stderr.startswith("pyflannel ") and SECRET not in v.stdout + v.stderr

        sent, lost, failed = ping_pods_after_adding(c, [n1, n2])
        row.pings_sent, row.pings_lost = sent, lost
        row.routes_lost = missing_routes(c, [n1, n2])
        row.note = ("role: read /coreos.com/network/, readwrite .../subnets/ (config write and other keys denied); "
                    "n1 (flag) and n2 (FLANNELD_ETCD_PASSWORD) got leases+routes; n3 wrong password: one clear "
                    "line, retrying; password in no log/file/--version; subnet.env 0644")
        assert failed == [] and row.routes_lost == 0


def ping_pods_after_adding(c: Cluster, nodes: list[Node]) -> tuple[int, int, list[tuple[str, str]]]:
    for n in nodes:
        c.add_pods(n, 1)
    return ping_pods(c, count=3)


# ------------------------------------------------------------------------------------------------
# The health server binds only where told

TCP_LISTEN = "0A"


def listeners(c: Cluster, ns: str) -> list[tuple[str, int]]:
    """(address, port) of every IPv4 TCP socket listening in namespace ``ns``, from /proc/net/tcp."""
    out = []
    for line in c.exec(ns, ["cat", "/proc/net/tcp"]).stdout.splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state != TCP_LISTEN:
            continue
        addr_hex, port_hex = local.split(":")
        addr = IPv4Address(bytes.fromhex(addr_hex)[::-1])  # the kernel prints it in host (little-endian) order
        out.append((str(addr), int(port_hex, 16)))
    return out


CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
    "except OSError as e:\n"
    "    print('refused', e.errno); sys.exit(1)\n"
    "s.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); print(s.recv(200).decode().splitlines()[0])\n"
)


def test_health_server_binds_only_where_told(bare_cluster: Cluster) -> None:
    c = bare_cluster
    with scenario("14c healthz bound to -healthz-ip only; none without -healthz-port", peers=1) as row:
        c.start_etcd()
        c.put_config(CONFIG)
        n1, n2, _ = c.nodes
        port = 19911
        c.start_flanneld(n1, [f"-healthz-ip={n1.lan_ip}", f"-healthz-port={port}"])
        c.start_flanneld(n2)
        for n in (n1, n2):
            c.wait_subnet_env(n)
        wait_for(lambda: (n1.lan_ip, port) in listeners(c, n1.ns), 10, "the health server to listen")
        assert listeners(c, n1.ns) == [(n1.lan_ip, port)], "flanneld listens somewhere it was not told to"
        assert listeners(c, n2.ns) == [], "without -healthz-port flanneld must not listen at all"

        ok = c.exec(n1.ns, [sys.executable, "-c", CONNECT, n1.lan_ip, str(port)], check=False)
        assert ok.returncode == 0 and ok.stdout.startswith("HTTP/1.1 200"), ok.stdout + ok.stderr
        lo = c.exec(n1.ns, [sys.executable, "-c", CONNECT, "127.0.0.1", str(port)], check=False)
        assert lo.returncode == 1 and lo.stdout.startswith("refused 111"), lo.stdout + lo.stderr  # ECONNREFUSED
        assert_alive(c, [n1, n2])
        row.note = f"/proc/net/tcp in n1: only {n1.lan_ip}:{port} LISTEN; 127.0.0.1:{port} refused; n2: no listener"


def test_record_helper_writes_one_json_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "rows.jsonl"
    monkeypatch.setenv("PYFLANNEL_FAULT_REPORT", str(out))
    row = record("x", peers=2, duration_s=1.234, pings_sent=3, pings_lost=1, note="n")
    assert json.loads(out.read_text()) == row == {
        "scenario": "x", "peers": 2, "duration_s": 1.23, "pings_sent": 3, "pings_lost": 1, "routes_lost": 0,
        "result": "pass", "note": "n"}
    with pytest.raises(ValueError):
        record("x", result="ok")
