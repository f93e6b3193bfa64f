"""The wheel holds only what a node needs: pyflannel/** and its metadata, no tests, no test support.

Builds the wheel from this checkout with ``pip wheel . --no-deps`` and lists it (``-s`` shows the list).
Also checks that every comment or docstring in pyflannel/ points only into this repository: no
references to design documents kept elsewhere.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE_DOCS = re.compile(r"libraries\.md|reference-state\.md|flannel-spec\.md|design\.md|kube-mode\.md|"
                          r"fault test \d|issue \d+ item|/work/shared")


def test_wheel_contains_only_the_package(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    wheels = list(tmp_path.glob("pyflannel-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    stray = [n for n in names if not (n.startswith("pyflannel/") or n.startswith("pyflannel-") and ".dist-info/" in n)]
    assert stray == [], stray
    assert not [n for n in names if "testbed" in n or "/support/" in n or n.startswith("tests/")]
    assert "pyflannel/cli/flanneld.py" in names and "pyflannel/daemon/health.py" in names
    print("\n".join(names))


# Files owned by other engineers that still name outside documents; each must leave this set once its
# comments point into docs/ (the test fails for a listed file that is already clean, so the set shrinks).
PENDING = {
    "pyflannel/adapters/wireguard_backend.py",
    "pyflannel/core/backends/hostgw.py",
    "pyflannel/core/backends/wireguard.py",
}


def test_comments_point_only_into_the_repo() -> None:
    hits: dict[str, list[str]] = {}
    for path in sorted((REPO / "pyflannel").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE_DOCS.search(line):
                hits.setdefault(rel, []).append(f"{rel}:{no}: {line.strip()}")
    new = [h for rel, lines in hits.items() if rel not in PENDING for h in lines]
    assert new == [], "\n".join(new)
    assert sorted(PENDING - set(hits)) == [], "clean now, remove from PENDING"
