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


def supports_random_fully(save_output: str, binary: str = "iptables") -> bool:
    """--random-fully needs iptables >= 1.6.2 (kernel >= 3.14).

    The version is read from the iptables-save header when there is one; a host with no
    rules at all prints no header, and then ``iptables --version`` is asked.
    """
    m = re.search(r"iptables-save v(\d+)\.(\d+)\.(\d+)", save_output)
    if m is None:
        try:
            m = re.search(r"v(\d+)\.(\d+)\.(\d+)", _run([binary, "--version"]))
        except IptablesError:
            return False
    return m is not None and tuple(int(x) for x in m.groups()) >= (1, 6, 2)


@dataclass
class RuleManager:
    """Keeps a set of flannel-owned chains in place; ``ensure`` is cheap when nothing drifted."""

    save: str = "iptables-save"
    restore: str = "iptables-restore"
    binary: str = "iptables"
    applied: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    resyncs: int = 0

    def save_all(self) -> str:
        """One ``iptables-save`` of every table (a few ms; cheaper than one call per table)."""
        return _run([self.save])

    def ensure(self, chains: list[ChainSpec], forward_policy_accept: bool = False, saved: str | None = None) -> bool:
        """Make the kernel hold exactly ``chains``. Returns True if anything was written.

        ``saved`` is a fresh iptables-save output, if the caller already has one.
        """
        if saved is None:
            saved = self.save_all()
        missing_jumps = {(c.table, c.chain) for c in chains if not has_jump(saved, c)}
        drifted = [c for c in chains if chain_lines(saved, c.table, c.chain) != self.applied.get((c.table, c.chain))]
        wrote = False
        if missing_jumps or drifted:
            if self.applied:
                names = sorted({c.chain for c in drifted} | {ch for _, ch in missing_jumps})
                log.warning("iptables rules missing or changed in %s; recreating them", ", ".join(names))
                self.resyncs += 1
            _run([self.restore, "-w", "5", "--noflush"], render_restore(chains, missing_jumps))
            wrote = True
            after = self.save_all()
            for c in chains:
                self.applied[(c.table, c.chain)] = chain_lines(after, c.table, c.chain)
        if forward_policy_accept and ":FORWARD DROP" in _table(saved, "filter"):
            log.info("Changing default FORWARD chain policy to ACCEPT")
            _run([self.binary, "-w", "5", "-P", "FORWARD", "ACCEPT"])
            wrote = True
        return wrote


def _table(save_output: str, table: str) -> str:
    out, cur = [], None
    for line in save_output.splitlines():
        if line.startswith("*"):
            cur = line[1:].strip()
        if cur == table:
            out.append(line)
    return "\n".join(out)
