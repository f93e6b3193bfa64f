"""Quick checks that the real-etcd testbed and its fixtures do what the other integration tests assume."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.etcd import (
    EtcdCluster,
    EtcdServer,
    TLSFiles,
    etcdctl,
    get_v2,
    make_other_ca,
    put_v2,
    start_etcd,
)

# The credentials the etcd_auth fixture sets up (tests/integration/conftest.py).
AUTH_ROOT_PASSWORD = "rootpw"
AUTH_USER = "flannel"
AUTH_PASSWORD = "flannelpw"


def _get(target: EtcdServer | EtcdCluster | list[str], key: str, user: str | None = None) -> str:
    return etcdctl(target, "get", "--print-value-only", key, user=user, check=True).stdout.strip()


def test_plain_put_get_and_restart_keeps_data(etcd: EtcdServer) -> None:
    etcdctl(etcd, "put", "/coreos.com/network/config", '{"Network": "10.5.0.0/16"}', check=True)
    assert json.loads(_get(etcd, "/coreos.com/network/config")) == {"Network": "10.5.0.0/16"}
    assert etcd.log_path == etcd.data_dir.parent / "default.log" and etcd.log_path.exists()

    etcd.kill()
    assert not etcd.is_running
    etcd.restart()
    assert etcd.is_running
    assert json.loads(_get(etcd, "/coreos.com/network/config")) == {"Network": "10.5.0.0/16"}


def test_v2_only_config(tmp_path: Path) -> None:
    server = start_etcd(tmp_path, enable_v2=True)
    try:
        put_v2(server, "/coreos.com/network/config", '{"Network": "10.6.0.0/16"}')
        assert get_v2(server, "/coreos.com/network/config") == '{"Network": "10.6.0.0/16"}'
        assert get_v2(server, "/coreos.com/network/absent") is None
        assert _get(server, "/coreos.com/network/config") == ""  # invisible to the v3 API
    finally:
        server.stop()
    assert not server.is_running


def test_tls_health_and_wrong_ca_refused(etcd_tls: tuple[EtcdServer, TLSFiles], tmp_path: Path) -> None:
    server, tls = etcd_tls
    assert server.client_url.startswith("https://")

    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    with urllib.request.urlopen(f"{server.client_url}/health", context=ctx, timeout=5) as resp:
        assert json.loads(resp.read())["health"] in (True, "true")

    etcdctl(server, "put", "/k", "v", check=True)
    assert _get(server, "/k") == "v"

    # A CA that did not sign the server certificate must be refused by the client side...
    other_ca = make_other_ca(tmp_path / "other")
    bad = ssl.create_default_context(cafile=str(other_ca))
    bad.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    with pytest.raises(urllib.error.URLError) as exc:
        urllib.request.urlopen(f"{server.client_url}/health", context=bad, timeout=5)
    assert isinstance(exc.value.reason, ssl.SSLCertVerificationError)
    wrong = TLSFiles(other_ca, tls.server_cert, tls.server_key, tls.client_cert, tls.client_key)
    assert etcdctl(server, "--dial-timeout=1s", "--command-timeout=2s", "get", "/k", tls=wrong).returncode != 0

    # ...and a client without a certificate must be refused by the server.
    no_cert = ssl.create_default_context(cafile=str(tls.ca))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"{server.client_url}/health", context=no_cert, timeout=5).read()


def test_auth_role_limited_to_prefix(etcd_auth: EtcdServer) -> None:
    flannel = f"{AUTH_USER}:{AUTH_PASSWORD}"
    etcdctl(etcd_auth, "put", "/coreos.com/network/config", "{}", user=flannel, check=True)
    assert _get(etcd_auth, "/coreos.com/network/config", user=flannel) == "{}"

    denied = etcdctl(etcd_auth, "put", "/other", "x", user=flannel)
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    anonymous = etcdctl(etcd_auth, "get", "/coreos.com/network/config")
    assert anonymous.returncode != 0
    wrong_pw = etcdctl(etcd_auth, "get", "/coreos.com/network/config", user=f"{AUTH_USER}:nope")
    assert wrong_pw.returncode != 0 and "authentication failed" in wrong_pw.stderr

    etcdctl(etcd_auth, "put", "/other", "x", user=f"root:{AUTH_ROOT_PASSWORD}", check=True)
    assert etcd_auth.healthy()  # /health keeps working with auth on (restart() relies on it)


def test_cluster_survives_member_loss(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    members = etcdctl(etcd_cluster, "member", "list", check=True).stdout.strip().splitlines()
    assert len(members) == 3

    etcdctl(etcd_cluster, "put", "/before", "1", check=True)
    etcd_cluster.members[0].kill()
    assert not etcd_cluster.members[0].is_running

    survivors = etcd_cluster.members[1:]
    for m in survivors:
        m.wait_healthy(timeout=10)  # a new leader may have to be elected first
    endpoints = [m.client_url for m in survivors]
    assert _get(endpoints, "/before") == "1"
    etcdctl(endpoints, "put", "/after", "2", check=True)
    for m in survivors:
        assert _get(m, "/after") == "2"
