"""support.peers: where the Go-built peers are looked up, and what a test says when one is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import peers


def test_env_var_points_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "flanneld"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PYFLANNEL_GO_FLANNELD", str(exe))
    assert peers.find("flanneld") == exe
    assert peers.missing_reason("flanneld") is None


def test_missing_peer_skips_naming_make_testdeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFLANNEL_ETCD36", str(tmp_path / "nope"))
    monkeypatch.delenv("CI", raising=False)
    reason = peers.missing_reason("etcd36")
    assert reason is not None and "make testdeps" in reason and "PYFLANNEL_ETCD36" in reason
    with pytest.raises(pytest.skip.Exception, match="make testdeps"):
        peers.require("etcd36")


def test_missing_peer_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFLANNEL_KUBE_APISERVER", str(tmp_path / "nope"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must not skip.*make testdeps"):
        peers.require("kube-apiserver")


def test_unknown_names_are_refused() -> None:
    with pytest.raises(KeyError, match="unknown peer"):
        peers.find("etcd35")
    with pytest.raises(ValueError, match="unsupported etcd version"):
        peers.etcd_binary("3.5")
