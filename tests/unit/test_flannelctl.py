"""flannelctl without etcd or a kernel: flag handling, offline validation, output helpers, reservation rules."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from pyflannel.cli.flannelctl import main, split_global
from pyflannel.core.config import parse_config
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.ctl import keyspace
from pyflannel.ctl.keyspace import CtlError, check_reservation, parse_subnet
from pyflannel.ctl.output import duration, table

GOOD = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'
CFG = parse_config(GOOD)



@pytest.mark.parametrize(
    ("argv", "flags", "rest"),
    [
        (["leases"], [], ["leases"]),
        (["-etcd-endpoints", "http://a:1", "leases", "--json"], ["-etcd-endpoints", "http://a:1"],
         ["leases", "--json"]),
        (["--etcd-prefix=/x", "-ip-masq", "status"], ["--etcd-prefix=/x", "-ip-masq"], ["status"]),
        (["-v", "4", "--", "doctor"], ["-v", "4"], ["doctor"]),
        (["-h"], ["-h"], []),
        (["docker-opts", "-f", "x"], [], ["docker-opts", "-f", "x"]),
    ],
)
def test_split_global_follows_go_flag_rules(argv: list[str], flags: list[str], rest: list[str]) -> None:
    assert split_global(argv) == (flags, rest)


def test_bad_flag_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-bogus", "leases"], {}) == 2
    assert capsys.readouterr().err == "flannelctl: flag provided but not defined: -bogus\n"
    assert main(["-etcd-endpoints=ftp://x", "leases"], {}) == 2
    assert "invalid endpoint 'ftp://x'" in capsys.readouterr().err


def test_env_flags_are_read_like_flanneld(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leases"], {"FLANNELD_ETCD_ENDPOINTS": "nope"}) == 2
    assert capsys.readouterr().err.startswith("flannelctl: -etcd-endpoints: invalid endpoint 'nope'")
    assert main(["leases"], {"FLANNELD_V": "x"}) == 2
    assert "environment variable FLANNELD_V" in capsys.readouterr().err


def test_usage_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"], {}) == 0
    text = capsys.readouterr().out
    assert "docker-opts" in text and "-etcd-endpoints" in text and "reserve SUBNET --public-ip IP" in text
    assert main([], {}) == 2
    assert "no command given" in capsys.readouterr().err
    assert main(["reserve", "100.64.1.0/24"], {}) == 2
    assert "--public-ip" in capsys.readouterr().err
    assert main(["config"], {}) == 2


def test_config_validate_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", GOOD], {}) == 0
    assert capsys.readouterr().out == (
        "the command line: valid: Network 100.64.0.0/16, SubnetLen 24, SubnetMin 100.64.1.0, "
        "SubnetMax 100.64.255.0 (255 subnets), backend vxlan\n"
    )
    assert main(["config", "validate", '{"Network":"100.64.0.0/16","SubnetLen":31}'], {}) == 1
    err = capsys.readouterr().err
    assert "invalid config: SubnetLen must be less than /31 (SubnetLen=31)" in err and err.count("\n") == 1


def test_config_validate_json_and_json_logs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", '{"Network":"100.64.0.0/16"}', "--json"], {}) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["valid"] and d["effective"]["BackendType"] == "udp" and d["effective"]["SubnetMax"] == "100.64.255.0"
    assert d["warnings"] == ["backend type 'udp' is valid for Go flanneld, but pyflannel nodes run only vxlan, "
                             "host-gw and wireguard"]
    assert main(["config", "validate", "{"], {"FLANNELD_LOG_FORMAT": "json"}) == 1
    line = json.loads(capsys.readouterr().err)
    assert line["level"] == "error" and "config is not valid JSON" in line["msg"]


def test_config_validate_from_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "net.json"
    f.write_text(GOOD)
    assert main(["config", "validate", "--from-file", str(f)], {}) == 0
    assert capsys.readouterr().out.startswith(f"{f}: valid:")
    assert main(["config", "validate", "--from-file", str(f) + ".missing"], {}) == 1
    assert "No such file or directory" in capsys.readouterr().err
    assert main(["config", "validate", GOOD, "--from-file", str(f)], {}) == 2


@pytest.mark.parametrize(("secs", "text"), [(0, "0s"), (59.6, "1m0s"), (3725, "1h2m5s"), (86399, "23h59m59s"),
                                            (None, "-"), (-5, "-5s")])
def test_duration(secs: float | None, text: str) -> None:
    assert duration(secs) == text


def test_table_aligns_without_trailing_blanks() -> None:
    assert table(("A", "LONGER"), [["xx", ""], ["y", "z"]]) == "A   LONGER\nxx\ny   z\n"


@pytest.mark.parametrize("text", ["100.64.5.0/24", "100.64.5.0-24", "/coreos.com/network/subnets/100.64.5.0-24"])
def test_parse_subnet_forms(text: str) -> None:
    assert parse_subnet(text) == IPv4Network("100.64.5.0/24")


def test_parse_subnet_refuses_host_bits() -> None:
    with pytest.raises(CtlError, match="invalid subnet '100.64.5.1/24'"):
        parse_subnet("100.64.5.1/24")
    with pytest.raises(CtlError, match="not a unicast host address"):
        keyspace.parse_public_ip("0.0.0.0")


def lease(sub: str, ip: str) -> Lease:
    return Lease(IPv4Network(sub), LeaseAttrs(IPv4Address(ip)))


def test_reservation_rules() -> None:
    ip = IPv4Address("198.18.0.50")
    other = [lease("100.64.9.0/24", "198.18.0.12")]
    assert check_reservation(CFG, IPv4Network("100.64.7.0/24"), ip, other) == []
    with pytest.raises(CtlError, match=r"^reserve: 100.65.7.0/24 is outside the Network 100.64.0.0/16$"):
        check_reservation(CFG, IPv4Network("100.65.7.0/24"), ip, other)
    with pytest.raises(CtlError, match=r"is not a /24 subnet"):
        check_reservation(CFG, IPv4Network("100.64.7.0/25"), ip, other)
    with pytest.raises(CtlError, match=r"overlaps the lease 100.64.9.0/24 of 198.18.0.12"):
        check_reservation(CFG, IPv4Network("100.64.9.0/24"), ip, other)
    # the same IP may turn its own lease into a reservation; a second subnet for one IP only warns
    assert check_reservation(CFG, IPv4Network("100.64.9.0/24"), IPv4Address("198.18.0.12"), other) == []
    warns = check_reservation(CFG, IPv4Network("100.64.0.0/24"), IPv4Address("198.18.0.12"), other)
    assert any("outside SubnetMin..SubnetMax" in w for w in warns)
    assert any("also holds lease 100.64.9.0/24" in w for w in warns)


def test_reservation_value_is_flannels_documented_form() -> None:
    assert LeaseAttrs(IPv4Address("198.18.0.50")).to_json() == '{"PublicIP":"198.18.0.50","PublicIPv6":null}'
