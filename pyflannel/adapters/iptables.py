"""Masquerade and forward rules in the kernel, through iptables-restore (the ``Firewall`` port).

Chain bodies are written whole with ``iptables-restore -w 5 --noflush``: under --noflush a
``:CHAIN - [0:0]`` line flushes only that chain, and the commit is atomic per table, so a
bad payload changes nothing. Jump rules sit in built-in chains that must not be flushed;
they are inserted in the same payload only when the probe shows them missing.

The resync check reads only what we own. A full ``iptables-save`` of every table costs
hundreds of milliseconds on a node where kube-proxy keeps tens of thousands of rules (and
``iptables-save -t nat`` is no cheaper with the nf_tables backend, which fetches the whole
ruleset either way); ``iptables -t nat -S FLANNEL-POSTRTG`` and ``-S POSTROUTING`` cost a few
milliseconds each whatever else is loaded. ``bench/iptables_probe.py`` measures both.

Drift is detected without parsing rules back into a model: after an apply the adapter
remembers how ``iptables -S`` prints our chains, and a later probe compares against that
(rules do not always read back exactly as written). No shell is used.

Two APIs: ``IptablesFirewall`` implements ``pyflannel.ports.Firewall`` for both families
(ip6tables when the spec has an IPv6 network); ``RuleManager`` is the older IPv4 API the
daemon used before the ports, kept working on the same probe.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyflannel.core.errors import FlannelError
from pyflannel.core.rules import (
    FWD_CHAIN,
    MASQ_CHAIN,
    ChainSpec,
    chain_lines,
    forward_chain,
    has_jump,
    masq_chain,
    render_restore,
)
from pyflannel.ports import FirewallSpec

log = logging.getLogger(__name__)

Runner = Callable[[list[str], str | None], str]
WAIT = ("-w", "5")


class IptablesError(FlannelError):
    """iptables-save / iptables-restore failed; the message carries its stderr."""


class NoSuchChain(IptablesError):
    """``iptables -S CHAIN`` for a chain that does not exist."""


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IptablesError(f"{argv[0]}: {e}") from None
    if p.returncode != 0:
        err = p.stderr.strip()
        # iptables-nft 1.8.9 reports a missing user chain as "incompatible, use 'nft' tool"; a chain of
        # that name that really is incompatible gets rewritten by the next apply (or fails loudly there).
        if "No chain/target/match by that name" in err or "does not exist" in err or "is incompatible" in err:
            raise NoSuchChain(f"{' '.join(argv[:5])}: {err[:300]}")
        raise IptablesError(f"{' '.join(argv[:3])}: exit {p.returncode}: {err[:300]}")
    return p.stdout


def supports_random_fully(save_output: str, binary: str = "iptables") -> bool:
    """--random-fully needs iptables >= 1.6.2 (kernel >= 3.14).

    The version is read from the iptables-save header when there is one; otherwise
    ``iptables --version`` is asked.
    """
    m = re.search(r"iptables-save v(\d+)\.(\d+)\.(\d+)", save_output)
    if m is None:
        try:
            m = re.search(r"v(\d+)\.(\d+)\.(\d+)", _run([binary, "--version"]))
        except IptablesError:
            return False
    return m is not None and tuple(int(x) for x in m.groups()) >= (1, 6, 2)


@dataclass
class _Family:
    """One address family's binaries and the cheap reads of owned chains."""

    binary: str = "iptables"
    restore: str = "iptables-restore"
    run: Runner = _run

    def chain_rules(self, table: str, chain: str) -> list[str] | None:
        """The ``-A <chain>`` lines of one chain as ``iptables -S`` prints them; None if the chain is missing."""
        try:
            out = self.run([self.binary, *WAIT, "-t", table, "-S", chain], None)
        except NoSuchChain:
            return None
        return [ln for ln in out.splitlines() if ln.startswith(f"-A {chain} ")]

    def has_jump(self, spec: ChainSpec) -> bool:
        parent = self.chain_rules(spec.table, spec.parent) or []
        return any(f"-j {spec.chain}" in ln and spec.comment in ln for ln in parent)

    def policy(self, table: str, chain: str) -> str:
        out = self.run([self.binary, *WAIT, "-t", table, "-S", chain], None)
        first = out.splitlines()[0].split() if out.strip() else []
        return first[2] if len(first) >= 3 and first[0] == "-P" else ""

    def apply(self, chains: list[ChainSpec], missing_jumps: set[tuple[str, str]]) -> None:
        self.run([self.restore, *WAIT, "--noflush"], render_restore(chains, missing_jumps))

    def remove(self, spec: ChainSpec) -> bool:
        """Delete every jump to ``spec.chain`` from its parent, then the chain. True if anything was there."""
        removed = False
        for _ in range(16):  # more than one jump only if something else duplicated it
            if not self.has_jump(spec):
                break
            self.run([self.binary, *WAIT, "-t", spec.table, "-D", spec.parent, *spec.jump], None)
            removed = True
        if self.chain_rules(spec.table, spec.chain) is not None:
            self.run([self.binary, *WAIT, "-t", spec.table, "-F", spec.chain], None)
            self.run([self.binary, *WAIT, "-t", spec.table, "-X", spec.chain], None)
            removed = True
        return removed


def _probe(fam: _Family, chains: Iterable[ChainSpec], applied: dict[tuple[str, str], list[str]]
           ) -> tuple[set[tuple[str, str]], list[ChainSpec], dict[tuple[str, str], str]]:
    """(missing jumps, drifted chains, reason per (table, chain)) from 2 cheap reads per chain."""
    missing_jumps: set[tuple[str, str]] = set()
    drifted: list[ChainSpec] = []
    why: dict[tuple[str, str], str] = {}
    for c in chains:
        key = (c.table, c.chain)
        lines = fam.chain_rules(c.table, c.chain)
        if lines is None:
            drifted.append(c)
            why[key] = "chain missing"
        elif lines != applied.get(key):
            drifted.append(c)
            why[key] = "rules differ from what was applied" if key in applied else "not written by this process yet"
        if not fam.has_jump(c):
            missing_jumps.add(key)
            why[(c.table, c.parent)] = f"jump to {c.chain} missing"
    return missing_jumps, drifted, why


@dataclass
class RuleManager:
    """Keeps a set of flannel-owned IPv4 chains in place; ``ensure`` is cheap when nothing drifted."""

    save: str = "iptables-save"
    restore: str = "iptables-restore"
    binary: str = "iptables"
    applied: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    resyncs: int = 0
    runner: Runner = _run

    def _family(self) -> _Family:
        return _Family(self.binary, self.restore, self.runner)

    def save_all(self) -> str:
        """One ``iptables-save`` of every table (for the --random-fully probe at start-up; not per resync)."""
        return self.runner([self.save], None)

    def ensure(self, chains: list[ChainSpec], forward_policy_accept: bool = False, saved: str | None = None) -> bool:
        """Make the kernel hold exactly ``chains``. Returns True if anything was written.

        ``saved`` is a fresh iptables-save output, if the caller already has one; without it only
        our chains and their parents are read (``iptables -S``).
        """
        fam = self._family()
        if saved is not None:
            missing_jumps = {(c.table, c.chain) for c in chains if not has_jump(saved, c)}
            # iptables-save and iptables -S print rules the same way
            drifted = [c for c in chains
                       if chain_lines(saved, c.table, c.chain) != self.applied.get((c.table, c.chain))]
        else:
            missing_jumps, drifted, _ = _probe(fam, chains, self.applied)
        wrote = False
        if missing_jumps or drifted:
            if self.applied:
                names = sorted({c.chain for c in drifted} | {ch for _, ch in missing_jumps})
                log.warning("iptables rules missing or changed in %s; recreating them", ", ".join(names))
                self.resyncs += 1
            fam.apply(chains, missing_jumps)
            wrote = True
            for c in chains:
                self.applied[(c.table, c.chain)] = fam.chain_rules(c.table, c.chain) or []
        if forward_policy_accept and fam.policy("filter", "FORWARD") == "DROP":
            log.info("Changing default FORWARD chain policy to ACCEPT")
            self.runner([self.binary, *WAIT, "-P", "FORWARD", "ACCEPT"], None)
            wrote = True
        return wrote


@dataclass
class IptablesFirewall:
    """``pyflannel.ports.Firewall`` through iptables(-restore) and ip6tables(-restore).

    IPv4 rules when the spec has ``network`` and ``subnet``; IPv6 rules (the same chains in
    ip6tables, multicast ff00::/8) when it has ``network6`` (and ``subnet6`` for masquerade).
    ``runner`` runs one command (argv, stdin) and returns stdout, raising IptablesError;
    tests pass their own.
    """

    runner: Runner = _run
    name: str = "iptables"
    # (family, table, chain) -> the chain's rules as read back after we wrote them
    applied: dict[tuple[int, str, str], list[str]] = field(default_factory=dict)
    resyncs: int = 0

    def _families(self) -> dict[int, _Family]:
        return {4: _Family("iptables", "iptables-restore", self.runner),
                6: _Family("ip6tables", "ip6tables-restore", self.runner)}

    @staticmethod
    def chains(spec: FirewallSpec) -> dict[int, list[ChainSpec]]:
        """The owned chains ``spec`` calls for, per family (pure)."""
        out: dict[int, list[ChainSpec]] = {4: [], 6: []}
        if spec.network is not None:
            if spec.ip_masq and spec.subnet is not None:
                out[4].append(masq_chain(spec.network, spec.subnet, spec.random_fully))
            if spec.forward:
                out[4].append(forward_chain(spec.network))
        if spec.network6 is not None:
            if spec.ip_masq and spec.subnet6 is not None:
                out[6].append(masq_chain(spec.network6, spec.subnet6, spec.random_fully))
            if spec.forward:
                out[6].append(forward_chain(spec.network6))
        return out

    def available(self) -> str:
        for b in ("iptables", "iptables-restore"):
            if shutil.which(b) is None:
                return f"{b} not found on PATH"
        try:
            self.runner(["iptables", *WAIT, "-t", "nat", "-S", "POSTROUTING"], None)
        except IptablesError as e:
            return str(e)
        return ""

    def _applied(self, version: int) -> dict[tuple[str, str], list[str]]:
        return {(t, c): v for (fv, t, c), v in self.applied.items() if fv == version}

    def missing(self, spec: FirewallSpec) -> list[str]:
        """One line per owned chain or jump that is not as ``spec`` says (two ``-S`` reads per chain)."""
        out: list[str] = []
        fams = self._families()
        for version, chains in self.chains(spec).items():
            if not chains:
                continue
            _, _, why = _probe(fams[version], chains, self._applied(version))
            out += [f"{fams[version].binary} {t} {c}: {reason}" for (t, c), reason in sorted(why.items())]
        # chains this process wrote that the spec no longer calls for (no kernel read needed)
        wanted = {(v, c.table, c.chain) for v, cs in self.chains(spec).items() for c in cs}
        out += [f"{fams[v].binary} {t} {c}: not configured any more" for (v, t, c) in sorted(self.applied)
                if (v, t, c) not in wanted]
        return out

    def ensure(self, spec: FirewallSpec) -> bool:
        wrote = False
        fams = self._families()
        wanted = self.chains(spec)
        for version, fam in fams.items():
            chains = wanted[version]
            if chains:
                missing_jumps, drifted, why = _probe(fam, chains, self._applied(version))
                if missing_jumps or drifted:
                    if any(k[0] == version for k in self.applied):
                        log.warning("%s rules missing or changed (%s); recreating them", fam.binary,
                                    "; ".join(f"{t} {c}: {r}" for (t, c), r in sorted(why.items())))
                        self.resyncs += 1
                    fam.apply(chains, missing_jumps)
                    wrote = True
                    for c in chains:
                        self.applied[(version, c.table, c.chain)] = fam.chain_rules(c.table, c.chain) or []
            # Chains the spec does not call for (-ip-masq off, no IPv6 network) are removed if present,
            # also when an earlier run wrote them. ip6tables is only asked when it is installed.
            names = {c.chain for c in chains}
            if version == 4 or shutil.which(fam.binary) is not None:
                for table, chain in (("nat", MASQ_CHAIN), ("filter", FWD_CHAIN)):
                    stub = _stub(table, chain)
                    if chain in names or (fam.chain_rules(table, chain) is None and not fam.has_jump(stub)):
                        continue
                    fam.remove(stub)
                    self.applied.pop((version, table, chain), None)
                    log.info("Removed %s %s %s (not configured)", fam.binary, table, chain)
                    wrote = True
            if spec.forward and chains and fam.policy("filter", "FORWARD") == "DROP":
                log.info("Changing default FORWARD chain policy to ACCEPT (%s)", fam.binary)
                self.runner([fam.binary, *WAIT, "-P", "FORWARD", "ACCEPT"], None)
                wrote = True
        return wrote

    def cleanup(self) -> None:
        """Remove our chains and jumps in both families (switching to nftables)."""
        for fam in self._families().values():
            if shutil.which(fam.binary) is None:
                continue
            for table, chain in (("nat", MASQ_CHAIN), ("filter", FWD_CHAIN)):
                try:
                    if fam.remove(_stub(table, chain)):
                        log.info("Removed %s %s %s", fam.binary, table, chain)
                except IptablesError as e:
                    log.warning("Could not remove %s %s %s: %s", fam.binary, table, chain, e)
        self.applied.clear()


def _stub(table: str, chain: str) -> ChainSpec:
    """A ChainSpec naming one of our chains (for removal; rules do not matter)."""
    from pyflannel.core.rules import FWD_COMMENT, MASQ_COMMENT

    if chain == MASQ_CHAIN:
        return ChainSpec(table, chain, "POSTROUTING", MASQ_COMMENT, ())
    return ChainSpec(table, chain, "FORWARD", FWD_COMMENT, ())
