"""Pod-to-pod ping matrices for the interop tier: run in parallel, printed as a table, saved for the report."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.cluster import Cluster
from support.peers import REPO

MATRIX_FILE = REPO / "build" / "interop" / "ping-matrix.txt"
#: Matrices recorded in this pytest session, printed by the conftest's terminal summary.
RECORDED: list[str] = []


def ping_matrix(c: Cluster, count: int = 2) -> dict[tuple[str, str], bool]:
    """Every pod to every pod on another node: ``{(src, dst): replied}``."""
    pairs = [(a, b) for a in c.pods for b in c.pods if a.node is not b.node]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: c.ping(p[0], p[1].ip, count=count, timeout=2, interval=0.2), pairs))
    return {(a.name, b.name): ok for (a, b), ok in zip(pairs, results, strict=True)}


def format_matrix(m: object, matrix: dict[tuple[str, str], bool]) -> str:
    """A table: rows are sources, columns destinations; "ok", "FAIL", or "-" for the same node."""
    c: Cluster = m.c  # type: ignore[attr-defined]
    pods = c.pods
    label = {p.name: f"{p.name}/{m.kind(p.node)}" for p in pods}  # type: ignore[attr-defined]
    width = max(len(v) for v in label.values()) + 1
    head = "src \\ dst".ljust(width) + "".join(label[p.name].rjust(width) for p in pods)
    lines = [head]
    for a in pods:
        cells = []
        for b in pods:
            v = "-" if a.node is b.node else ("ok" if matrix[(a.name, b.name)] else "FAIL")
            cells.append(v.rjust(width))
        lines.append(label[a.name].ljust(width) + "".join(cells))
    ips = ", ".join(f"{p.name}={p.ip}" for p in pods)
    return "\n".join(lines) + f"\n({ips})"


def save_matrix(text: str, path: Path = MATRIX_FILE) -> None:
    """Write the matrix under build/interop/ and keep it for the end-of-run summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    RECORDED.append(text)
