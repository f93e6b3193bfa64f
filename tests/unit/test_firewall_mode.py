"""Mode selection: flannel's meaning of an explicit EnableNFTables; nftables when unset and iptables is unusable."""

from __future__ import annotations

import pytest

from pyflannel.core.firewall_mode import ModeDecision, decide

NO_IPT = "no iptables binary in PATH"


@pytest.mark.parametrize(
    ("enable", "problem", "mode", "unusable", "says"),
    [
        (True, "", "nftables", False, "EnableNFTables is true"),
        (True, NO_IPT, "nftables", False, "EnableNFTables is true"),
        (False, "", "iptables", False, "EnableNFTables is false"),
        (False, NO_IPT, "iptables", True, f"iptables is unusable ({NO_IPT}); set EnableNFTables to true"),
        (None, "", "iptables", False, "EnableNFTables is not set (flannel's default)"),
        (None, NO_IPT, "nftables", False, f"EnableNFTables is not set and iptables is unusable here ({NO_IPT})"),
    ],
)
def test_decide(enable: bool | None, problem: str, mode: str, unusable: bool, says: str) -> None:
    d = decide(enable, problem)
    assert (d.mode, d.unusable) == (mode, unusable)
    assert says in d.reason
    assert "\n" not in d.reason
    assert d.other == ("iptables" if mode == "nftables" else "nftables")


def test_decision_is_frozen() -> None:
    d = decide(None, "")
    with pytest.raises(AttributeError):
        d.mode = "nftables"  # type: ignore[misc]
    assert isinstance(d, ModeDecision)


def test_non_boolean_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="EnableNFTables must be true, false or absent, not 'yes'"):
        decide("yes", "")  # type: ignore[arg-type]
