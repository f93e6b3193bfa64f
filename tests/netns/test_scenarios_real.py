"""The daemon scenarios of tests/unit/test_daemon_scenarios.py, over the real kernel (contract tests).

One scenario list (support.scenarios), two targets: the unit tier runs it over the fakes, this
tier over the real rtnetlink data plane and vxlan device in a network namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Cluster, destroy_prefix
from support.scenarios import SCENARIOS

pytestmark = pytest.mark.root
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (creates a network namespace)")
    prefix = f"scn{secrets.token_hex(2)}"
    c = Cluster(prefix=prefix, nodes=1, workdir=tmp_path_factory.mktemp("scn"))
    c.up()
    try:
        yield c, c.nodes[0].ns
    finally:
        c.down()
        destroy_prefix(prefix)


@pytest.mark.parametrize("name", [s.__name__ for s in SCENARIOS])
def test_scenario_over_the_real_kernel(node: tuple[Cluster, str], name: str, tmp_path: Path) -> None:
    _, ns = node
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "support.scenario_runner", name,
                        str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert f"scenario {name}: ok" in p.stdout
