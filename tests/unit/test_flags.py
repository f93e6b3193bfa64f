"""flanneld's command line as an operator meets it: every bad value is one clear line and exit status 2.

``main(argv, env)`` is called in-process and only with input that stops before the daemon starts (a bad
flag, ``-h``, ``--version``); valid combinations are checked through ``parse_flags``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyflannel.cli.flanneld import main
from pyflannel.core.errors import FlagError
from pyflannel.core.flags import FLAGS, parse_flags

SECRET = "S3cretValue"


def run(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    rc = main(argv, env or {})
    out = capsys.readouterr()
    assert out.out == "", "flanneld writes nothing to stdout"
    return rc, out.err


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, f"want exactly one line, got {err!r}"
    assert err.startswith("flanneld: ")
    return err


BAD = [
    # bad integers (Go's strconv.ParseInt(s, 0, 64) syntax)
    (["-v=abc"], "invalid integer value 'abc' for flag -v"),
    (["-iptables-resync", "1.5"], "invalid integer value '1.5' for flag -iptables-resync"),
    (["--healthz-port= 80"], "invalid integer value ' 80' for flag -healthz-port"),
    (["-v=09"], "invalid integer value '09' for flag -v"),  # leading 0 means octal, as in Go
    (["-v=1__0"], "invalid integer value '1__0' for flag -v"),
    (["-v=\u0663"], "invalid integer value"),  # an Arabic-Indic digit: Go takes ASCII only
    (["-v=99999999999999999999"], "for flag -v is out of range"),
    (["-v=" + "9" * 5000], "for flag -v is out of range"),
    (["-v="], "invalid integer value '' for flag -v"),
    # out of range
    (["-subnet-lease-renew-margin=0"], "out of acceptable range (1-1439 minutes): 0"),
    (["-subnet-lease-renew-margin=1440"], "out of acceptable range (1-1439 minutes): 1440"),
    (["-healthz-port=65536"], "-healthz-port must be 0-65535: 65536"),
    (["-iptables-resync=0"], "-iptables-resync must be at least 1 second: 0"),
    (["-resync-period=-1"], "-resync-period must be at least 1 second: -1"),
    # bad booleans (strconv.ParseBool)
    (["-ip-masq=yes"], "invalid boolean value 'yes' for flag -ip-masq"),
    (["-iptables-forward-rules=tRuE"], "invalid boolean value 'tRuE' for flag -iptables-forward-rules"),
    (["--kube-subnet-mgr=2"], "invalid boolean value '2' for flag -kube-subnet-mgr"),
    # unknown flags, bad syntax, stray arguments
    (["-no-such-flag"], "flag provided but not defined: -no-such-flag"),
    (["--etcd-endpoint=http://198.18.0.1:2379"], "flag provided but not defined: -etcd-endpoint"),
    (["---v=1"], "bad flag syntax: ---v=1"),
    (["-=x"], "bad flag syntax: -=x"),
    (["-ip-masq", "false"], "unexpected argument 'false' (flanneld takes only flags)"),
    # missing argument
    (["-etcd-prefix"], "flag needs an argument: -etcd-prefix"),
    (["-v", "1", "--iface"], "flag needs an argument: -iface"),
    # bad IP addresses
    (["-public-ip=198.18.0.300"], "-public-ip: invalid IP address '198.18.0.300'"),
    (["-public-ip=fc00::1"], "-public-ip: not an IPv4 address 'fc00::1'"),
    (["-public-ipv6=198.18.0.1"], "-public-ipv6: invalid IPv6 address '198.18.0.1'"),
    (["-healthz-ip=localhost"], "-healthz-ip: invalid IP address 'localhost'"),
    (["-iface-can-reach=nope"], "-iface-can-reach: invalid IP address 'nope'"),
    # bad regular expressions, including the ones re.compile raises other errors for
    (["-iface-regex=eth[0"], "-iface-regex: invalid regular expression 'eth[0'"),
    (["-iface-regex=" + "(" * 2000 + ")" * 2000], "nested too deeply"),
    (["-iface-regex=a{99999999999}"], "the repetition number is too large"),
    (["-iface-regex=eth0", "-iface-regex=(?P<x"], "-iface-regex: invalid regular expression '(?P<x'"),
    # bad endpoints
    (["-etcd-endpoints=198.18.0.1:2379"], "-etcd-endpoints: invalid endpoint '198.18.0.1:2379'"),
    (["-etcd-endpoints=http://:2379"], "-etcd-endpoints: invalid endpoint 'http://:2379'"),
    (["-etcd-endpoints=http://198.18.0.1:99999"], "invalid endpoint 'http://198.18.0.1:99999'"),
    (["-etcd-endpoints=http://198.18.0.1:port"], "invalid endpoint 'http://198.18.0.1:port'"),
    (["-etcd-endpoints=ftp://198.18.0.1:2379"], "invalid endpoint 'ftp://198.18.0.1:2379'"),
    (["-etcd-endpoints=http://198.18.0.1:2379/v3/kv"], "invalid endpoint 'http://198.18.0.1:2379/v3/kv'"),
    (["-etcd-endpoints=http://[zz::1]:2379"], "invalid endpoint 'http://[zz::1]:2379'"),
    (["-etcd-endpoints=http://bad host:2379"], "invalid endpoint 'http://bad host:2379'"),
    (["-etcd-endpoints=http://198.18.0.1:2379,https://"], "invalid endpoint 'https://'"),
    (["-etcd-endpoints=,"], "-etcd-endpoints: no endpoint given"),
    # TLS flags
    (["-etcd-certfile=/etc/flannel/client.pem"], "-etcd-certfile and -etcd-keyfile must be given together"),
    (["-etcd-keyfile=/etc/flannel/client-key.pem"], "-etcd-certfile and -etcd-keyfile must be given together"),
    (["-etcd-cafile=/nonexistent/ca.pem"], "-etcd-cafile: cannot read '/nonexistent/ca.pem': No such file"),
    # everything else validate() checks
    (["-etcd-prefix=coreos.com/network"], "-etcd-prefix must start with '/'"),
    (["-log-format=xml"], "-log-format must be text or json: 'xml'"),
    (["-subnet-file="], "-subnet-file must not be empty"),
    (["-kube-subnet-mgr", "-kube-annotation-prefix=a/b/c"], "prefix can contain at most single slash"),
]


@pytest.mark.parametrize(("argv", "want"), BAD, ids=[" ".join(a)[:50] for a, _ in BAD])
def test_bad_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], want: str) -> None:
    rc, err = run(capsys, argv)
    assert rc == 2
    assert want in one_line(err)
    assert len(err) < 400


BAD_ENV = [
    ({"FLANNELD_V": "abc"}, "invalid integer value 'abc' for environment variable FLANNELD_V for -v"),
    ({"FLANNELD_IP_MASQ": "maybe"}, "invalid boolean value 'maybe' for environment variable FLANNELD_IP_MASQ"),
    ({"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "5000"}, "out of acceptable range (1-1439 minutes): 5000"),
    ({"FLANNELD_ETCD_ENDPOINTS": "198.18.0.1:2379"}, "-etcd-endpoints: invalid endpoint '198.18.0.1:2379'"),
    ({"FLANNELD_PUBLIC_IP": "1.2.3"}, "-public-ip: invalid IP address '1.2.3'"),
    ({"FLANNELD_IFACE_REGEX": "("}, "-iface-regex: invalid regular expression '('"),
    ({"FLANNELD_HEALTHZ_PORT": "http"}, "for environment variable FLANNELD_HEALTHZ_PORT for -healthz-port"),
    ({"FLANNELD_ETCD_CERTFILE": "/c.pem"}, "-etcd-certfile and -etcd-keyfile must be given together"),
]


@pytest.mark.parametrize(("env", "want"), BAD_ENV, ids=[next(iter(e)) for e, _ in BAD_ENV])
def test_bad_environment_variable_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], want: str
) -> None:
    rc, err = run(capsys, [], env)
    assert rc == 2
    assert want in one_line(err)


def test_tls_file_that_is_not_pem_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    rc, err = run(capsys, [f"-etcd-cafile={bad}"])
    assert rc == 2
    assert "not usable TLS material" in one_line(err)
    rc, err = run(capsys, [f"-etcd-certfile={bad}", f"-etcd-keyfile={bad}"])
    assert rc == 2
    assert "not usable TLS material" in one_line(err)


def test_credentials_in_an_endpoint_are_refused_without_echoing_them(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run(capsys, [f"-etcd-endpoints=http://flannel:{SECRET}@198.18.0.1:2379"])
    assert rc == 2
    assert "credentials in endpoint http://***@198.18.0.1:2379 are not supported" in one_line(err)
    assert SECRET not in err


@pytest.mark.parametrize("argv", [["-h"], ["--h"], ["-help"], ["--help"], ["-help=true"]])
def test_help_exits_0_with_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, err = run(capsys, argv, {"FLANNELD_ETCD_PASSWORD": SECRET})
    assert rc == 0
    assert err.startswith("Usage: flanneld")
    for f in FLAGS:
        assert f"  -{f.name}: " in err
    assert SECRET not in err


@pytest.mark.parametrize("argv", [["--version"], ["-version"], ["-version", f"-etcd-password={SECRET}"]])
def test_version_exits_0_and_shows_no_secret(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, err = run(capsys, argv, {"FLANNELD_ETCD_PASSWORD": SECRET})
    assert rc == 0
    assert err.startswith("pyflannel ") and "flanneld v0.20.2 compatible" in err and err.count("\n") == 1
    assert SECRET not in err


# ------------------------------------------------------------------------------------------------
# Go flag syntax: what parses, and to what


def test_go_syntax_forms() -> None:
    o = parse_flags(
        ["-etcd-prefix=/a", "--etcd-endpoints", "http://198.18.0.1:2379", "-ip-masq", "--iface", "eth0",
         "-iface=198.18.0.11", "-iface-regex", "^eth", "--iface-regex=^ens", "-v", "2",
         "-iptables-forward-rules=false", "--healthz-port=0x1F90", "-subnet-lease-renew-margin", "0o17"],
        {},
    )
    assert o.etcd_prefix == "/a"
    assert o.etcd_endpoints == "http://198.18.0.1:2379"
    assert o.ip_masq is True and o.iptables_forward_rules is False
    assert o.iface == ["eth0", "198.18.0.11"]
    assert o.iface_regex == ["^eth", "^ens"]
    assert o.v == 2 and o.healthz_port == 8080 and o.subnet_lease_renew_margin == 15


@pytest.mark.parametrize(("raw", "value"), [
    ("10", 10), ("+10", 10), ("0", 0), ("010", 8), ("0x10", 16), ("0X1f", 31), ("0b101", 5), ("0o17", 15),
    ("1_000", 1000), ("0x_1F", 31), ("-1", -1), ("9223372036854775807", 2**63 - 1),
])
def test_integers_follow_go(raw: str, value: int) -> None:
    assert parse_flags([f"-v={raw}"], {}).v == value


@pytest.mark.parametrize(("raw", "value"), [
    ("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
    ("0", False), ("f", False), ("F", False), ("FALSE", False), ("false", False), ("False", False),
])
def test_booleans_follow_go(raw: str, value: bool) -> None:
    assert parse_flags([f"-ip-masq={raw}"], {}).ip_masq is value
    assert parse_flags([], {"FLANNELD_IP_MASQ": raw}).ip_masq is value


def test_last_value_wins_and_double_dash_ends_flags() -> None:
    o = parse_flags(["-v=1", "--v=3", "-ip-masq", "-ip-masq=false", "--"], {})
    assert o.v == 3 and o.ip_masq is False
    with pytest.raises(FlagError, match="unexpected argument 'x'"):
        parse_flags(["--", "x"], {})


def test_environment_fills_only_what_the_command_line_left_unset() -> None:
    env = {"FLANNELD_IFACE": "eth9", "FLANNELD_V": "4", "FLANNELD_IP_MASQ": "true",
           "FLANNELD_ETCD_ENDPOINTS": "https://198.18.0.1:2379", "FLANNELD_ETCD_PASSWORD": SECRET}
    o = parse_flags(["-iface=eth0", "-v=1"], env)
    assert o.iface == ["eth0"] and o.v == 1  # the command line wins
    assert o.ip_masq is True and o.etcd_endpoints == "https://198.18.0.1:2379"
    assert parse_flags([], env).iface == ["eth9"]  # one value from the environment
    assert o.etcd_password == SECRET
    assert SECRET not in repr(o.redacted()) and o.redacted()["etcd-password"] == "<redacted>"


def test_empty_environment_variables_are_ignored_like_flanneld() -> None:
    # coreos/pkg flagutil: `if val != ""` -- an empty FLANNELD_* is the same as an unset one.
    o = parse_flags([], {"FLANNELD_V": "", "FLANNELD_IFACE": "", "FLANNELD_IP_MASQ": "", "FLANNELD_ETCD_ENDPOINTS": ""})
    assert o.v == 0 and o.iface == [] and o.ip_masq is False
    assert o.etcd_endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379"


@pytest.mark.parametrize("ep", [
    "http://198.18.0.1:2379", "https://198.18.0.1:2379/", "http://etcd-0.etcd.svc:2379", "http://[fd00::1]:2379",
    "http://localhost", "https://etcd_1.internal:2379",
])
def test_good_endpoints(ep: str) -> None:
    assert parse_flags([f"-etcd-endpoints={ep},http://198.18.0.2:2379"], {}).etcd_endpoints.startswith(ep)
