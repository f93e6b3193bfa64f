"""Atomic file writes for subnet.env and the CNI scratch files.

A reader (Docker's EnvironmentFile, the CNI plugin, flanneld on restart) must never see a
half-written file: write a hidden temp file in the same directory, fsync, rename(2) over the
target, then fsync the directory so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def atomic_write(path: str | Path, data: str, mode: int = 0o644) -> None:
    p = Path(path)
    p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # umask must not weaken or widen what the caller asked for
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None
