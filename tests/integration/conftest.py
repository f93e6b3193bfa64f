"""Fixtures that run real etcd servers (see support.etcd) for the integration tests.

Every fixture starts its own server(s) under the test's tmp_path and stops them at teardown, also when
the test fails, so no etcd process outlives the test that needed it.

Every test here that starts etcd runs twice, on etcd 3.4 (Debian's) and on etcd 3.6 (built by
``make testdeps``): the autouse ``etcd_version`` fixture is parametrized (test ids gain ``etcd3.4`` /
``etcd3.6``) and makes every server the test starts, through the fixtures or ``start_etcd`` directly, run
that version.
``PYFLANNEL_ETCD_VERSION=3.6`` (or 3.4) keeps only one of the two.  Servers started with ``enable_v2=True``
run 3.4 in both (3.6 has no v2 store).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import peers
from support.etcd import (
    ETCD_VERSIONS,
    EtcdCluster,
    EtcdServer,
    TLSFiles,
    enable_auth,
    make_tls,
    start_cluster,
    start_etcd,
    use_etcd_version,
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


_ONLY = os.environ.get("PYFLANNEL_ETCD_VERSION")
_VERSIONS = [v for v in ETCD_VERSIONS if _ONLY in (None, "", v)] or list(ETCD_VERSIONS)
_ETCD_FIXTURES = {"etcd", "etcd_tls", "etcd_auth", "etcd_cluster"}


def _uses_etcd(metafunc: pytest.Metafunc) -> bool:
    """The test asks for an etcd fixture, or its module uses support.etcd (start_etcd, EtcdServer, ...).

    Tests against kube-apiserver (which runs its own etcd 3.6) or of files only are not doubled.
    """
    if _ETCD_FIXTURES & set(metafunc.fixturenames):
        return True
    return any(getattr(v, "__module__", None) == "support.etcd" for v in vars(metafunc.module).values())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "etcd_version" in metafunc.fixturenames and _uses_etcd(metafunc):
        metafunc.parametrize("etcd_version", _VERSIONS, ids=[f"etcd{v}" for v in _VERSIONS], indirect=True)


@pytest.fixture(autouse=True)
def etcd_version(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The etcd version this run of the test uses; 3.6 skips (fails under CI) if `make testdeps` has not run."""
    version = getattr(request, "param", None)
    if version is None:  # a test that starts no etcd of its own
        yield None
        return
    peers.require(peers.ETCD_VERSIONS[version])
    with use_etcd_version(version):
        yield version


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
