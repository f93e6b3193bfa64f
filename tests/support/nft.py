"""nftables helpers for the root tests and the firewall benchmark: read tables as JSON, drive a Firewall in a netns.

The Firewall adapters run ``nft`` / ``iptables-restore`` in the caller's network namespace, and the test
process lives in the root namespace. So each operation runs in a short Python child started with
``ip netns exec``; it prints one JSON line back. Reading tables goes through ``nft -j`` only.

:func:`hidden_iptables` builds the command line for a child that sees a ``/usr/sbin`` without any
iptables binary (a private mount namespace with a filtered copy bind-mounted over it), to show what a
host without iptables looks like to the probe.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.cluster import child_env

REPO = Path(__file__).resolve().parents[2]
GO_FLANNELD = REPO / "build" / "testdeps" / "flanneld"
FLANNEL_TABLES = ("flannel-ipv4", "flannel-ipv6")
NFT_MISSING = "needs nft (Debian package nftables)"
IPTABLES_MISSING = "needs iptables-restore (Debian package iptables)"


def run_in(ns: str, argv: Sequence[str], *, input: str | None = None, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True,
                          timeout=timeout, env=child_env(), check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{ns}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


def ruleset(ns: str) -> dict[str, Any]:
    """``nft -j list ruleset`` in ``ns``, parsed."""
    doc: dict[str, Any] = json.loads(run_in(ns, ["nft", "-j", "list", "ruleset"]).stdout)
    return doc


def tables_of(doc: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Group a ruleset's objects by (family, table), handles removed, in listing order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for obj in doc["nftables"]:
        ((kind, body),) = obj.items()
        if kind == "metainfo":
            continue
        key = (body["family"], body["name"] if kind == "table" else body["table"])
        out.setdefault(key, []).append({kind: {k: v for k, v in body.items() if k != "handle"}})
    return out


def flannel_tables(ns: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {k: v for k, v in tables_of(ruleset(ns)).items() if k[1] in FLANNEL_TABLES}


def spec_code(spec: dict[str, Any]) -> str:
    """Python source for a FirewallSpec from plain JSON-able fields (networks as strings)."""
    return (
        "from ipaddress import ip_network\n"
        "from pyflannel.ports import FirewallSpec\n"
        f"_raw = {spec!r}\n"
        "_nets = ('network', 'subnet', 'network6', 'subnet6')\n"
        "spec = FirewallSpec(**{k: (ip_network(v) if k in _nets and v else v) for k, v in _raw.items()})\n"
    )


def firewall(ns: str, mode: str, op: str, spec: dict[str, Any] | None = None,
             prefix: Sequence[str] = ()) -> Any:
    """Run ``op`` ("ensure", "missing", "cleanup", "available", "present") of the ``mode`` Firewall in ``ns``.

    Returns the operation's result (JSON-decoded). ``prefix`` wraps the child command (e.g.
    :func:`hidden_iptables`).
    """
    if mode != "nftables":
        raise ValueError(f"firewall mode {mode!r}: only 'nftables' is driven from here")
    code = (
        "import json, sys\n"
        "from pyflannel.adapters.nftables import NftablesFirewall\n"
        + spec_code(spec or {"network": None, "subnet": None})
        + "fw = NftablesFirewall()\n"
        f"op = {op!r}\n"
        "res = getattr(fw, op)(spec) if op in ('ensure', 'missing') else getattr(fw, op)()\n"
        "print(json.dumps(res))\n"
    )
    out = run_in(ns, [*prefix, sys.executable, "-c", code]).stdout
    return json.loads(out.strip().splitlines()[-1])


def python_in(ns: str, code: str, prefix: Sequence[str] = ()) -> Any:
    """Run Python ``code`` in ``ns``; its last stdout line is JSON-decoded and returned."""
    out = run_in(ns, [*prefix, sys.executable, "-c", code]).stdout
    return json.loads(out.strip().splitlines()[-1])


_HIDE = ("iptables", "ip6tables", "xtables", "arptables", "ebtables")


def hidden_iptables() -> list[str]:
    """argv prefix: run the rest in a private mount namespace whose /usr/sbin has no *tables binaries.

    ``unshare -m`` gives the child its own mount table (propagation private, so nothing leaks back).
    The real /usr/sbin is first bind-mounted aside (under a private tmpfs on /mnt), then a directory of
    symlinks to everything except the iptables family goes over /usr/sbin (on Debian 12 /sbin is a
    symlink into /usr, so it is covered too). ``nft`` stays.
    """
    script = (
        # A tmpfs over /mnt, private to this mount namespace: nothing is created on the host.
        "set -e; mount -t tmpfs pyflannel-sbin /mnt; mkdir /mnt/real /mnt/view; "
        "mount --bind /usr/sbin /mnt/real; "
        "for f in /mnt/real/*; do b=${f##*/}; case $b in "
        + "|".join(f"{h}*" for h in _HIDE)
        + ") ;; *) ln -s \"$f\" /mnt/view/$b;; esac; done; "
        "mount --bind /mnt/view /usr/sbin; exec \"$@\""
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "hidden-iptables"]


def iptables_restore(ns: str, payload: str, binary: str = "iptables-restore") -> None:
    run_in(ns, [binary, "-w", "5", "--noflush"], input=payload)


def iptables_save(ns: str, binary: str = "iptables-save") -> str:
    return run_in(ns, [binary]).stdout


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def shell_quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
