"""Fixtures that run real etcd servers (see support.etcd) for the integration tests.

Every fixture starts its own server(s) under the test's tmp_path and stops them at teardown, also when
the test fails, so no etcd process outlives the test that needed it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.etcd import (
    EtcdCluster,
    EtcdServer,
    TLSFiles,
    enable_auth,
    make_tls,
    start_cluster,
    start_etcd,
)

ETCD_BIN = shutil.which("etcd")
ETCDCTL_BIN = shutil.which("etcdctl")
# pytest refuses pytest.skip() at conftest import time, so the module-level skip is applied to every test
# collected under this directory instead.
SKIP_REASON = (
    None
    if ETCD_BIN and ETCDCTL_BIN
    else "etcd/etcdctl not found on PATH (install Debian's etcd-server and etcd-client: make apt)"
)

HERE = Path(__file__).resolve().parent

AUTH_ROOT_PASSWORD = "rootpw"
AUTH_USER = "flannel"
AUTH_PASSWORD = "flannelpw"
AUTH_PREFIX = "/coreos.com/network/"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SKIP_REASON is None:
        return
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(marker)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh plain single-member etcd on loopback."""
    server = start_etcd(tmp_path / "etcd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_tls(tmp_path: Path) -> Iterator[tuple[EtcdServer, TLSFiles]]:
    """A single etcd serving https and requiring client certificates; returns (server, TLS files)."""
    tls = make_tls(tmp_path / "pki")
    server = start_etcd(tmp_path / "etcd", tls=tls)
    try:
        yield server, tls
    finally:
        server.stop()


@pytest.fixture
def etcd_auth(tmp_path: Path) -> Iterator[EtcdServer]:
    """A single etcd with auth on: root/rootpw, and flannel/flannelpw limited to /coreos.com/network/.

    Simple tokens expire after 2 s so that token-expiry handling can be tested quickly.
    """
    server = start_etcd(tmp_path / "etcd", auth_token_ttl=2)
    try:
        enable_auth(
            server, root_password=AUTH_ROOT_PASSWORD, user=AUTH_USER, password=AUTH_PASSWORD, prefix=AUTH_PREFIX
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster on loopback."""
    cluster = start_cluster(tmp_path / "cluster", size=3)
    try:
        yield cluster
    finally:
        cluster.stop()
