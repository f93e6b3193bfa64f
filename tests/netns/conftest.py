"""Fixtures for the root-only tier: every test gets its own namespace prefix and must leave no namespace behind.

The tests here build real network namespaces with :mod:`support.cluster`.  They need root and
iproute2; without them they are skipped (with the reason), never failed.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.cluster import Cluster, destroy_prefix, prefix_namespaces

ROOT_OK = os.geteuid() == 0 and shutil.which("ip") is not None
SKIP_REASON = "needs root and iproute2's `ip` (creates network namespaces)"


@pytest.fixture
def netns_prefix() -> Iterator[str]:
    """A fresh namespace prefix such as ``pft3fa2``; the test fails if it leaves ``{prefix}-*`` behind.

    Leftovers are removed either way, so one broken test does not break the next.
    """
    if not ROOT_OK:
        pytest.skip(SKIP_REASON)
    prefix = f"pft{secrets.token_hex(2)}"
    destroy_prefix(prefix)  # practically never needed; cheap insurance against a crashed earlier run
    yield prefix
    left = prefix_namespaces(prefix)
    destroy_prefix(prefix)
    assert not left, f"test left network namespaces behind: {left}"


@pytest.fixture
def make_cluster(netns_prefix: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Factory: ``make_cluster(nodes=2)`` returns a Cluster that is up; it is torn down after the test.

    Example::

        def test_x(make_cluster):
            c = make_cluster(nodes=2)
            assert c.ping(c.nodes[0], c.nodes[1].lan_ip)
    """
    made: list[Cluster] = []

    def factory(nodes: int = 2, flanneld: Path | str | None = None) -> Cluster:
        if made:
            raise RuntimeError("one cluster per test: they would share the prefix")
        cluster = Cluster(prefix=netns_prefix, nodes=nodes, workdir=tmp_path / "cluster", flanneld=flanneld)
        made.append(cluster)
        return cluster.up()

    yield factory
    for cluster in made:
        cluster.down()


@pytest.fixture
def node_ns(make_cluster: Callable[..., Cluster]) -> str:
    """The namespace of a one-node cluster (make_cluster tears it down)."""
    return make_cluster(nodes=1).nodes[0].ns
