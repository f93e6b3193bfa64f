"""The nftables Firewall: flannel's ``flannel-ipv4`` / ``flannel-ipv6`` tables, kept in place.

Mechanism: the ``nft`` binary with a libnftables JSON batch on stdin (``nft -j -f -``). nft sends the
whole batch to the kernel as one nf_tables netlink transaction, so a table is deleted and re-created
with all its chains and rules atomically: packets see the old table or the new one, never an empty or
half-built one, and a rejected batch changes nothing. Reading back uses ``nft -j list table``, so no
nft text is ever parsed. The alternatives were worse here: Debian's python3-nftables binds libnftables
for Debian's own python only (our venv's interpreter cannot import it without mixing site-packages),
and pyroute2's nf_tables support has no expression builders for masquerade/payload matches, so we
would be hand-assembling netlink attributes that nft already compiles correctly.

Drift is found by comparing ``nft -j list table`` (handles and comments dropped) with what
:mod:`pyflannel.core.nft_rules` says the table holds; only drifted tables are rewritten.

:func:`iptables_problem` is the probe for mode selection (``pyflannel.core.firewall_mode``): whether
the iptables Firewall could work on this host at all.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from typing import Any

from pyflannel.core import nft_rules
from pyflannel.core.errors import FlannelError
from pyflannel.core.nft_rules import NftTable
from pyflannel.ports import FirewallSpec

log = logging.getLogger(__name__)

# nft exits 1 with this on stderr when the listed table does not exist (nft 1.0.x: ENOENT).
_NO_TABLE = "No such file or directory"


class NftablesError(FlannelError):
    """nft failed; the message carries the command and nft's stderr."""


@dataclass
class NftablesFirewall:
    """flannel's nftables mode (``EnableNFTables``), implementing ``pyflannel.ports.Firewall``.

    ``nft`` is the binary (name or path). ``resyncs`` counts repairs of drifted tables (for /metrics).
    """

    nft: str = "nft"
    timeout: float = 30.0
    name: str = "nftables"
    resyncs: int = 0
    _fully_random: bool | None = field(default=None, repr=False)
    _written: bool = field(default=False, repr=False)

    # --- Firewall port ----------------------------------------------------------------------------

    def available(self) -> str:
        """Empty when nft works here: the binary exists and the kernel answers an nf_tables listing."""
        if shutil.which(self.nft) is None:
            return f"no {self.nft} binary in PATH (Debian package nftables)"
        try:
            self._run(["-j", "list", "tables"])
        except NftablesError as e:
            return f"nftables unusable: {e}"
        return ""

    def ensure(self, spec: FirewallSpec) -> bool:
        """Rewrite, in one transaction, every flannel table that is not exactly as ``spec`` says."""
        want = self._tables(spec)
        drifted = [(t, p) for t in want if (p := nft_rules.diff(t, self._list(t)))]
        if not drifted:
            return False
        if self._written:
            self.resyncs += 1
            log.warning(
                "nftables: %s; recreating %s",
                "; ".join(p for _, ps in drifted for p in ps),
                ", ".join(t.name for t, _ in drifted),
            )
        else:
            log.info("nftables: setting up %s", ", ".join(t.name for t, _ in drifted))
        self._apply(nft_rules.write_batch(t for t, _ in drifted))
        self._written = True
        return True

    def missing(self, spec: FirewallSpec) -> list[str]:
        return [p for t in self._tables(spec) for p in nft_rules.diff(t, self._list(t))]

    def cleanup(self) -> None:
        """Delete both flannel tables (absent ones are fine) in one transaction."""
        self._apply(nft_rules.delete_batch())
        self._written = False

    # --- helpers -----------------------------------------------------------------------------------

    def listings(self) -> dict[str, list[dict[str, Any]] | None]:
        """Both flannel tables' normalised listings by name (None: the table does not exist)."""
        return {t.name: self._list(t) for t in (_EMPTY4, _EMPTY6)}

    def present(self) -> list[str]:
        """Names of the flannel tables that exist now (for doctor and for mode-switch checks)."""
        return [t.name for t in (_EMPTY4, _EMPTY6) if self._list(t) is not None]

    def supports_fully_random(self) -> bool:
        """Whether the kernel takes ``masquerade fully-random``; asked once, with ``nft -c`` (nothing is committed)."""
        if self._fully_random is None:
            probe = NftTable(
                "ip",
                "flannel-probe",
                (nft_rules.postrtg_chain("ip", _PROBE_NET, _PROBE_NET, random_fully=True),),
            )
            batch = nft_rules.write_batch([probe])
            try:
                self._run(["-c", "-j", "-f", "-"], json.dumps(batch))
                self._fully_random = True
            except NftablesError as e:
                log.warning("nftables: masquerade fully-random unsupported, using plain masquerade (%s)", e)
                self._fully_random = False
        return self._fully_random

    def _tables(self, spec: FirewallSpec) -> tuple[NftTable, NftTable]:
        if spec.ip_masq and spec.random_fully and not self.supports_fully_random():
            spec = replace(spec, random_fully=False)
        return nft_rules.tables(spec)

    def _list(self, t: NftTable) -> list[dict[str, Any]] | None:
        """The table's normalised listing, or None if it does not exist."""
        try:
            out = self._run(["-j", "list", "table", t.family, t.name])
        except NftablesError as e:
            if _NO_TABLE in str(e):
                return None
            raise
        try:
            return nft_rules.normalise(json.loads(out))
        except (ValueError, TypeError) as e:
            raise NftablesError(f"nft -j list table {t.label}: unreadable JSON: {e}") from None

    def _apply(self, batch: dict[str, Any]) -> None:
        self._run(["-j", "-f", "-"], json.dumps(batch))

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        argv = [self.nft, *args]
        try:
            p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NftablesError(f"{' '.join(argv)}: {e}") from None
        if p.returncode != 0:
            err = " ".join(p.stderr.split())[:300]
            raise NftablesError(f"{' '.join(argv)}: exit {p.returncode}: {err}")
        return p.stdout


_EMPTY4 = NftTable("ip", nft_rules.TABLE4, ())
_EMPTY6 = NftTable("ip6", nft_rules.TABLE6, ())
_PROBE_NET = IPv4Network("100.64.0.0/10")  # any network works: the probe is never committed


def iptables_problem(binaries: tuple[str, ...] = ("iptables", "iptables-save", "iptables-restore")) -> str:
    """Empty when the iptables Firewall can work on this host, otherwise why not (one line).

    Unusable means: a binary the iptables adapter runs is not in PATH, or ``iptables`` cannot open the
    kernel's nat and filter tables. The latter happens when the kernel has neither the legacy x_tables
    (ip_tables, iptable_nat) nor what iptables-nft needs (nf_tables with the xt compat expressions)
    for whichever backend the installed ``iptables`` uses. Listing a chain with ``-S`` commits nothing.
    """
    for b in binaries:
        if shutil.which(b) is None:
            return f"no {b} binary in PATH"
    for table, chain in (("nat", "POSTROUTING"), ("filter", "FORWARD")):
        argv = [binaries[0], "-w", "5", "-t", table, "-S", chain]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{' '.join(argv)}: {e}"
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or ["no message"])[0][:200]
            return f"iptables cannot use the kernel's {table} table: {err}"
    return ""
