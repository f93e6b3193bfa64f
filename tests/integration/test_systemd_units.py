"""packaging/systemd passes ``systemd-analyze verify`` and says what issue 15 asks of it.

verify runs against a throw-away root (``--root``): the host's own unit set (for sysinit.target and
friends), our two files where an operator installs them, a minimal docker.service like Debian's, and
stub executables for /usr/local/bin/flanneld and /usr/bin/dockerd (verify checks ExecStart= exists).
verify reports bad values only as warnings on stderr, so the run is repeated at debug level and any
line about our files is a failure too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging/systemd/flanneld.service"
DROPIN = REPO / "packaging/systemd/docker.service.d/10-flannel.conf"
HOST_UNITS = Path("/usr/lib/systemd/system")
DOCKER_UNIT = """[Unit]
Description=Docker Application Container Engine
After=network-online.target
Wants=network-online.target
[Service]
Type=notify
ExecStart=/usr/bin/dockerd -H fd://
[Install]
WantedBy=multi-user.target
"""


def make_root(root: Path) -> None:
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/lib/systemd/system/docker.service").write_text(DOCKER_UNIT)
    etc = root / "etc/systemd/system"
    (etc / "docker.service.d").mkdir(parents=True)
    shutil.copy(UNIT, etc / "flanneld.service")
    shutil.copy(DROPIN, etc / "docker.service.d/10-flannel.conf")
    for exe in ("usr/local/bin/flanneld", "usr/bin/dockerd"):
        p = root / exe
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)


def verify(root: Path, debug: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"SYSTEMD_LOG_LEVEL": "debug"} if debug else {})}
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "flanneld.service", "docker.service"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=120, check=False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or not HOST_UNITS.is_dir(),
                    reason="systemd-analyze not found (Debian's systemd package)")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    make_root(tmp_path)
    p = verify(tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "" and p.stderr.strip() == "", p.stdout + p.stderr
    dbg = verify(tmp_path, debug=True)
    ours = [ln for ln in dbg.stderr.splitlines() + dbg.stdout.splitlines()
            if ("flanneld.service:" in ln or "10-flannel.conf:" in ln) and ("Failed" in ln or "Unknown" in ln
                                                                          or "ignoring" in ln)]
    assert ours == [], "\n".join(ours)


def settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_docker_is_not_restarted_with_flanneld_and_keeps_its_iptables() -> None:
    d = settings(DROPIN)
    assert "Requires" not in d and "BindsTo" not in d and "PartOf" not in d
    assert d["Wants"] == ["flanneld.service"] and d["After"] == ["flanneld.service"]
    exec_start = d["ExecStart"][-1]
    assert "--iptables=false" not in exec_start and "--ip-masq=false" in exec_start
    f = settings(UNIT)
    assert f["TimeoutStartSec"] == ["infinity"] and f["Restart"] == ["on-failure"]
    assert f["Before"] == ["docker.service"] and f["StartLimitIntervalSec"] == ["0"]
