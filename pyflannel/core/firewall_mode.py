"""Which Firewall a node uses: iptables or nftables, from net-conf's ``EnableNFTables`` and the host.

flannel decides by ``EnableNFTables`` alone (absent means false), so on a host without a usable
iptables (RHEL/Rocky 10, minimal images) it cannot write its rules and never writes subnet.env.
pyflannel keeps flannel's meaning for an explicit value and adds one rule for the unset case: if
iptables is unusable there, nftables is used. The decision comes with a reason, which the daemon
logs once at start (docs/firewall.md explains the choice to operators).

Pure: the probe result (empty string = iptables usable, else why not) is passed in by the caller;
``pyflannel.adapters.nftables.iptables_problem`` produces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["iptables", "nftables"]
OTHER: dict[Mode, Mode] = {"iptables": "nftables", "nftables": "iptables"}


@dataclass(frozen=True)
class ModeDecision:
    mode: Mode
    reason: str  # one line for the log, said once
    #: True when the mode was picked although it is known not to work (explicit EnableNFTables=false on a
    #: host without iptables): the daemon should fail with ``reason`` rather than run without rules.
    unusable: bool = False

    @property
    def other(self) -> Mode:
        """The mode whose leftovers must be cleaned up, so a node never holds both."""
        return OTHER[self.mode]


def decide(enable_nftables: bool | None, iptables_problem: str) -> ModeDecision:
    """``enable_nftables``: net-conf's EnableNFTables (None when the key is absent).

    ``iptables_problem``: empty if iptables can be used on this host, otherwise why not.
    """
    if enable_nftables is not None and not isinstance(enable_nftables, bool):
        raise ValueError(f"EnableNFTables must be true, false or absent, not {enable_nftables!r}")
    if enable_nftables:
        return ModeDecision("nftables", "using nftables: EnableNFTables is true in the network config")
    if enable_nftables is False:
        if iptables_problem:
            return ModeDecision(
                "iptables",
                f"EnableNFTables is false in the network config but iptables is unusable ({iptables_problem}); "
                "set EnableNFTables to true or remove it",
                unusable=True,
            )
        return ModeDecision("iptables", "using iptables: EnableNFTables is false in the network config")
    if iptables_problem:
        return ModeDecision(
            "nftables",
            f"using nftables: EnableNFTables is not set and iptables is unusable here ({iptables_problem})",
        )
    return ModeDecision("iptables", "using iptables: EnableNFTables is not set (flannel's default)")
