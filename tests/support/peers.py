"""Where the tests find the real peers built from Go: Go flanneld, etcd 3.6 and kube-apiserver.

Why this exists
===============
``make testdeps`` builds the three binaries into ``build/testdeps/`` from the pinned build modules under
``testdeps/``.  Several tiers need them (interop, the etcd tiers on 3.6, kube mode), and each needs the same
answer to "where is it, and if it is missing, what does the developer run?".  This module is that one answer:

* a binary is taken from its environment variable if set (``PYFLANNEL_GO_FLANNELD``, ``PYFLANNEL_ETCD36``,
  ``PYFLANNEL_KUBE_APISERVER``), else from ``build/testdeps/``;
* :func:`require` returns its path or skips the test with a reason that names ``make testdeps``;
* under CI (``CI`` set to a true value, as ``.ci/run`` runs) a missing peer fails the test instead, because
  in CI nothing may skip.

etcd 3.4 is Debian's ``/usr/bin/etcd`` (``make apt``); ``PYFLANNEL_ETCD34`` points elsewhere.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build" / "testdeps"


@dataclass(frozen=True)
class Peer:
    """One real peer binary: what it is, the variable that overrides it, and its default location."""

    key: str
    what: str
    env_var: str
    default: Path | None  # None: looked up on PATH as `path_name`
    provided_by: str
    path_name: str = ""


PEERS: dict[str, Peer] = {
    "flanneld": Peer(
        "flanneld", "Go flanneld v0.28.9", "PYFLANNEL_GO_FLANNELD", BUILD_DIR / "flanneld", "make testdeps"
    ),
    "etcd36": Peer("etcd36", "etcd 3.6", "PYFLANNEL_ETCD36", BUILD_DIR / "etcd", "make testdeps"),
    "kube-apiserver": Peer(
        "kube-apiserver", "kube-apiserver v1.34", "PYFLANNEL_KUBE_APISERVER", BUILD_DIR / "kube-apiserver",
        "make testdeps",
    ),  # fmt: skip
    "etcd34": Peer(
        "etcd34", "etcd 3.4 (Debian etcd-server)", "PYFLANNEL_ETCD34", None,
        "make apt (Debian etcd-server)", path_name="etcd",
    ),  # fmt: skip
}

#: etcd versions the etcd tiers run on, and the peer that provides each.
ETCD_VERSIONS = {"3.4": "etcd34", "3.6": "etcd36"}


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where a missing peer is an error, not a skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _peer(key: str) -> Peer:
    try:
        return PEERS[key]
    except KeyError:
        raise KeyError(f"unknown peer {key!r}; known: {', '.join(PEERS)}") from None


def find(key: str) -> Path | None:
    """The peer's executable, or None if it is not there (or not executable)."""
    peer = _peer(key)
    override = os.environ.get(peer.env_var)
    if override:
        path: Path | None = Path(override)
    elif peer.default is not None:
        path = peer.default
    else:
        found = shutil.which(peer.path_name)
        path = Path(found) if found else None
    if path is None or not path.is_file() or not os.access(path, os.X_OK):
        return None
    return path


def missing_reason(key: str) -> str | None:
    """None if the peer is available, else a one-line reason naming the command that provides it."""
    peer = _peer(key)
    if find(key) is not None:
        return None
    override = os.environ.get(peer.env_var)
    where = f"{peer.env_var}={override} is not an executable file" if override else (
        f"{peer.default} does not exist" if peer.default is not None else f"`{peer.path_name}` is not on PATH"
    )  # fmt: skip
    return f"{peer.what} not found ({where}); run `{peer.provided_by}` or set {peer.env_var}"


def require(key: str) -> Path:
    """The peer's path; otherwise skip the calling test (fail it under CI) naming the command to run."""
    path = find(key)
    if path is not None:
        return path
    reason = missing_reason(key) or key
    if in_ci():
        pytest.fail(f"CI must not skip: {reason}", pytrace=False)
    pytest.skip(reason)


def etcd_binary(version: str) -> Path | None:
    """The etcd server binary for ``version`` ("3.4" or "3.6"), or None if it is not available."""
    try:
        key = ETCD_VERSIONS[version]
    except KeyError:
        raise ValueError(f"unsupported etcd version {version!r}; use one of {', '.join(ETCD_VERSIONS)}") from None
    return find(key)
