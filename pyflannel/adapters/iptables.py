"""Masquerade and forward rules in the kernel, through iptables-restore.

Chain bodies are written whole with ``iptables-restore -w 5 --noflush``: under --noflush a
``:CHAIN - [0:0]`` line flushes only that chain, and the commit is atomic per table, so a
bad payload changes nothing. Jump rules sit in built-in chains that must not be flushed;
they are inserted in the same payload only when ``iptables-save`` shows them missing.

Drift is detected without parsing rules back into a model: after an apply the adapter
remembers how iptables-save prints our chains, and a later resync compares against that
(rules "don't always read back as written", as Calico Felix notes). No shell is used.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass, field

from pyflannel.core.errors import FlannelError
from pyflannel.core.rules import ChainSpec, chain_lines, has_jump, render_restore

log = logging.getLogger(__name__)


class IptablesError(FlannelError):
    """iptables-save / iptables-restore failed; the message carries its stderr."""


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IptablesError(f"{argv[0]}: {e}") from None
    if p.returncode != 0:
        raise IptablesError(f"{' '.join(argv[:3])}: exit {p.returncode}: {p.stderr.strip()[:300]}")
    return p.stdout


def supports_random_fully(binary: str = "iptables") -> bool:
    """--random-fully needs iptables >= 1.6.2 (the kernel side exists since 3.14)."""
    try:
        out = _run([binary, "--version"])
    except IptablesError:
        return False
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    return bool(m) and tuple(int(x) for x in m.groups()) >= (1, 6, 2)  # type: ignore[union-attr]


@dataclass
class RuleManager:
    """Keeps a set of flannel-owned chains in place; ``ensure`` is cheap when nothing drifted."""

    save: str = "iptables-save"
    restore: str = "iptables-restore"
    binary: str = "iptables"
    applied: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    resyncs: int = 0

    def ensure(self, chains: list[ChainSpec], forward_policy_accept: bool = False) -> bool:
        """Make the kernel hold exactly ``chains``. Returns True if anything was written."""
        tables = sorted({c.table for c in chains})
        saved = {t: _run([self.save, "-t", t]) for t in tables}
        missing_jumps = {(c.table, c.chain) for c in chains if not has_jump(saved[c.table], c)}
        drifted = [
            c for c in chains if chain_lines(saved[c.table], c.table, c.chain) != self.applied.get((c.table, c.chain))
        ]
        wrote = False
        if missing_jumps or drifted:
            if self.applied:
                names = sorted({c.chain for c in drifted} | {ch for _, ch in missing_jumps})
                log.warning("iptables rules missing or changed in %s; recreating them", ", ".join(names))
                self.resyncs += 1
            _run([self.restore, "-w", "5", "--noflush"], render_restore(chains, missing_jumps))
            wrote = True
            for t in tables:
                after = _run([self.save, "-t", t])
                for c in chains:
                    if c.table == t:
                        self.applied[(t, c.chain)] = chain_lines(after, t, c.chain)
        if forward_policy_accept and ":FORWARD DROP" in saved.get("filter", _run([self.save, "-t", "filter"])):
            log.info("Changing default FORWARD chain policy to ACCEPT")
            _run([self.binary, "-w", "5", "-P", "FORWARD", "ACCEPT"])
            wrote = True
        return wrote
