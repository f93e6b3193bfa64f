"""Fuzz every parser of outside input: 10 000 cases each, nothing but the documented error comes out.

What reaches these parsers is written by someone else: the network config and the leases (anyone with
write access to the etcd prefix), the subnet file (a previous run, or a hand edit), the command line
and FLANNELD_* variables (a unit file). Each test mixes raw text/bytes with structured input that uses
the real field names with wrong types, and checks that

* the parser returns a value or raises its documented error type, never anything else
  (``parse_config`` -> ConfigError, ``parse_lease_attrs``/``vxlan_data``/``parse_subnet_key`` ->
  LeaseFormatError, ``parse_env_text``/``previous_subnets`` -> SubnetEnvError, ``parse_flags`` ->
  FlagError, ``vxlan.parse_options`` -> ConfigError);
* the error is one short line (core/errors.py promises an operator can log ``str(err)`` and nothing
  else);
* what parses round-trips where the format allows it.

The whole file runs in well under 90 s (Hypothesis settings come from tests/unit/conftest.py: no
example database, no deadline).
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflannel.core.backends.vxlan import VxlanOptions, parse_options
from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import ConfigError, FlagError, LeaseFormatError, SubnetEnvError
from pyflannel.core.flags import FLAGS, Options, parse_flags
from pyflannel.core.ipnet import make_subnet_key, parse_subnet_key
from pyflannel.core.lease import LeaseAttrs, VxlanData, parse_lease_attrs
from pyflannel.core.subnet_env import SubnetEnv, parse_env_text, previous_subnets

N = 10_000
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck))


def check_error(e: Exception, kind: type[Exception]) -> None:
    assert type(e) is kind or isinstance(e, kind), f"{type(e).__name__}: {e}"
    msg = str(e)
    assert msg, "an error must say what is wrong"
    assert "\n" not in msg and "\r" not in msg, f"error is not one line: {msg!r}"
    assert len(msg) < 400, f"error is {len(msg)} characters long: {msg[:200]!r}..."


def expect(kind: type[Exception], fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), or None if it raised ``kind`` (checked); any other exception fails the test."""
    try:
        return fn(*args)
    except kind as e:
        check_error(e, kind)
        return None


# ------------------------------------------------------------------------------------------------
# Building blocks

ip4 = st.integers(0, 2**32 - 1).map(lambda i: str(IPv4Address(i)))
ip6 = st.integers(0, 2**128 - 1).map(lambda i: IPv6Address(i).compressed)
cidr4 = st.builds(lambda a, n: f"{a}/{n}", ip4, st.integers(0, 34))
cidr6 = st.builds(lambda a, n: f"{a}/{n}", ip6, st.integers(0, 130))
near_ip = st.text(alphabet="0123456789.:/abcdef%- x", max_size=24)
scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_value = st.recursive(
    scalar, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=6), ch, max_size=3), max_leaves=8
)
# Values that are almost right: the real kinds of thing, in the wrong place or the wrong shape.
plausible = st.one_of(
    cidr4, ip4, cidr6, ip6, near_ip, st.integers(-3, 140), st.integers(2**31, 2**64), st.booleans(),
    st.sampled_from(["", "0.0.0.0/0", "::/0", "100.64.0.0/16", "10.1.0.0/16", "1e400", "NaN", "null"]),
    json_value,
)


def case_mix(names: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(names).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper(), n.swapcase()]))


def deep(n: int, inner: str = "1") -> str:
    return "[" * n + inner + "]" * n


def dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False)


def raw_or(structured: st.SearchStrategy[str]) -> st.SearchStrategy[str | bytes]:
    """Structured text most of the time, raw text and bytes (and very deep nesting) the rest."""
    return st.one_of(
        structured, structured, structured,
        st.text(), st.binary(),
        st.text(alphabet='{}[]":,0123456789.-tfnrue ', max_size=60),
        st.integers(1, 3000).map(lambda n: '{"Network":' + deep(n) + "}"),
    )


# ------------------------------------------------------------------------------------------------
# Network config (``<prefix>/config``)

BACKEND_KEYS = ["Type", "VNI", "Port", "GBP", "DirectRouting", "Learning", "MTU"]
backend_obj = st.dictionaries(
    case_mix(BACKEND_KEYS) | st.text(max_size=6),
    st.one_of(st.sampled_from(["vxlan", "VXLAN", "udp", "host-gw", "", "carrier-pigeon"]), st.integers(-2, 2**25),
              st.booleans(), json_value),
    max_size=5,
)
CONFIG_FIELDS = ["Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6", "IPv6Network",
                 "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax"]
config_obj = st.builds(
    lambda fields, backend, extra: {**fields, **({"Backend": backend} if backend is not None else {}), **extra},
    st.dictionaries(case_mix(CONFIG_FIELDS), plausible, max_size=6),
    st.none() | backend_obj | json_value,
    st.dictionaries(st.text(max_size=5), json_value, max_size=2),
)
# Mostly-valid configs, so the validation (not only the decoding) is exercised.
good_config = st.builds(
    lambda net, sl, smin, smax, ipv6, b: {
        "Network": net, **({"SubnetLen": sl} if sl is not None else {}),
        **({"SubnetMin": smin} if smin else {}), **({"SubnetMax": smax} if smax else {}),
        **({"EnableIPv6": True, "IPv6Network": ipv6} if ipv6 else {}), "Backend": b,
    },
    cidr4, st.none() | st.integers(0, 32), st.none() | ip4, st.none() | ip4, st.none() | cidr6,
    st.fixed_dictionaries({"Type": st.just("vxlan")}, optional={"VNI": st.integers(-1, 2**24), "Port": plausible}),
)


@FUZZ
@given(raw_or(st.one_of(config_obj.map(dumps), good_config.map(dumps), json_value.map(dumps))))
def test_fuzz_parse_config(text: str | bytes) -> None:
    cfg = expect(ConfigError, parse_config, text)
    if cfg is None:
        return
    assert isinstance(cfg, NetworkConfig)
    if cfg.enable_ipv4:
        assert cfg.network is not None and cfg.subnet_min is not None and cfg.subnet_max is not None
        assert cfg.network.prefixlen + 2 <= cfg.subnet_len <= 30
        assert cfg.subnet_min in cfg.network and cfg.subnet_max in cfg.network
    assert cfg.backend_type == cfg.backend_type.lower()
    if cfg.backend_type == "vxlan":
        opts = expect(ConfigError, parse_options, cfg.backend)
        assert opts is None or isinstance(opts, VxlanOptions)


# ------------------------------------------------------------------------------------------------
# Lease values

mac = st.one_of(
    st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    st.binary(min_size=6, max_size=6).map(lambda b: "-".join(f"{x:02X}" for x in b)),
    st.text(alphabet="0123456789abcdefABCDEF:-. \n", max_size=20),
)
backend_data = st.one_of(
    st.fixed_dictionaries({}, optional={k: v for k, v in {"VNI": st.integers(-1, 2**33) | plausible,
                                                          "VtepMAC": mac | plausible}.items()}),
    st.dictionaries(case_mix(["VNI", "VtepMAC"]), mac | plausible, max_size=2),
    json_value,
)
lease_obj = st.fixed_dictionaries({}, optional={
    "PublicIP": st.one_of(ip4, ip6, near_ip, plausible),
    "PublicIPv6": st.one_of(st.none(), ip6, ip4, near_ip, st.just("fe80::1%eth0"), plausible),
    "BackendType": st.one_of(st.sampled_from(["vxlan", "", "host-gw"]), plausible),
    "BackendData": backend_data,
    "BackendV6Data": backend_data,
}).flatmap(lambda d: st.sampled_from([d, {k.lower(): v for k, v in d.items()}, {k.upper(): v for k, v in d.items()}]))
good_lease = st.builds(
    lambda ip, m, vni: {"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                        "BackendData": {"VNI": vni, "VtepMAC": m}},
    ip4, mac, st.integers(0, 2**24),
)


backend_data_text = st.one_of(
    backend_data.map(dumps), st.text(), st.text(alphabet='{}[]":,VNItepMAC0123456789 ', max_size=40),
    st.integers(1, 3000).map(lambda n: deep(n)),
)


@FUZZ
@given(raw_or(st.one_of(lease_obj.map(dumps), good_lease.map(dumps), json_value.map(dumps))), backend_data_text)
def test_fuzz_parse_lease_attrs_and_vxlan_data(value: str | bytes, bd_text: str) -> None:
    attrs = expect(LeaseFormatError, parse_lease_attrs, value)
    if attrs is not None:
        assert isinstance(attrs, LeaseAttrs) and isinstance(attrs.public_ip, IPv4Address)
        # What we parsed, we write back in flanneld's byte format, and it reads back the same.
        assert parse_lease_attrs(attrs.to_json()) == attrs
        check_vxlan_data(attrs)
    # LeaseAttrs built directly (not through parse_lease_attrs), as a lease from another source could be:
    # every example also feeds vxlan_data() arbitrary BackendData text.
    check_vxlan_data(LeaseAttrs(IPv4Address("198.18.0.11"), backend_type="vxlan", backend_data=bd_text))


def check_vxlan_data(attrs: LeaseAttrs) -> None:
    data = expect(LeaseFormatError, attrs.vxlan_data)
    if data is not None:
        assert isinstance(data, VxlanData) and isinstance(data.vni, int)
        assert data.vtep_mac == data.vtep_mac.lower() and len(data.vtep_mac) == 17


# ------------------------------------------------------------------------------------------------
# Subnet keys (the last path element of ``<prefix>/subnets/<key>``)

octet = st.one_of(st.integers(0, 300).map(str), st.integers(0, 255).map(lambda i: f"0{i}"),
                  st.text("0123456789", max_size=4))
key_struct = st.builds(
    lambda a, b, c, d, sep1, sep2, n, v6: f"{a}.{b}{sep1}{c}{sep2}{d}-{n}{v6}",
    octet, octet, octet, octet, st.sampled_from([".", ".", "x", "/"]), st.sampled_from([".", ".", "-"]),
    st.one_of(st.integers(0, 40).map(str), st.text("0123456789", max_size=6)),
    st.one_of(st.just(""), st.builds(lambda a, n: f"&{a}-{n}", ip6 | st.text("0123456789abcdef:", max_size=42),
                                     st.integers(0, 200))),
)


@FUZZ
@given(st.one_of(
    key_struct, key_struct, key_struct,
    st.builds(lambda p, k, s: p + k + s, st.text(max_size=10), key_struct, st.sampled_from(["", "\n", "x", "-24"])),
    st.text(), st.text(alphabet="0123456789.-&:abcdef/", max_size=100),
    # IPv6-only keys (EnableIPv4=false): "<v6>-<len>", alone or after a path
    st.builds(lambda p, a, n: f"{p}{a}-{n}", st.sampled_from(["", "/", "x", "/p/subnets/", "1.2.3.4-24&"]),
              ip6 | st.text("0123456789abcdef:", max_size=42), st.one_of(st.integers(0, 200).map(str),
                                                                          st.text("0123456789", max_size=5))),
    st.integers(1, 6000).map(lambda n: "1." + "1" * n + "x"),  # made the regex backtrack for seconds
    st.integers(4300, 6000).map(lambda n: "100.64.1.0-" + "9" * n),  # int() refused it with a ValueError
))
def test_fuzz_parse_subnet_key(key: str) -> None:
    got = expect(LeaseFormatError, parse_subnet_key, key)
    if got is None:
        return
    sn4, sn6 = got
    assert sn4 is not None or sn6 is not None  # an IPv6-only key has no v4 part
    assert sn4 is None or (isinstance(sn4, IPv4Network) and sn4.prefixlen <= 31)
    assert sn6 is None or (isinstance(sn6, IPv6Network) and sn6.prefixlen <= 127)
    assert parse_subnet_key(make_subnet_key(sn4, sn6)) == (sn4, sn6)


# ------------------------------------------------------------------------------------------------
# subnet.env

env_key = st.sampled_from(["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET",
                           "FLANNEL_MTU", "FLANNEL_IPMASQ", "export FLANNEL_SUBNET", "  FLANNEL_SUBNET", "#",
                           "", "BAD-KEY", "K\u00e9Y"])
env_value = st.one_of(cidr4, cidr6, ip4, near_ip, st.text(max_size=20), st.integers(-1, 70000).map(str))
env_line = st.builds(
    lambda k, sep, q, v: f"{k}{sep}{q}{v}{q}", env_key, st.sampled_from(["=", "=", " = ", ":", ""]),
    st.sampled_from(["", "", '"', "'"]), env_value,
)
env_text = st.lists(env_line, max_size=6).flatmap(
    lambda lines: st.sampled_from(["\n".join(lines), "\r\n".join(lines), "\n".join(lines) + "\n"])
)


any_env = st.dictionaries(st.sampled_from(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET", "OTHER"]) | st.text(max_size=5),
                          env_value, max_size=4)
rendered_env = st.builds(
    lambda v4, v6: SubnetEnv(IPv4Network("100.64.0.0/16"), v4, 1450, True, None, v6).render(),
    st.integers(0, 255).map(lambda i: IPv4Network(f"100.64.{i}.0/24")),
    st.none() | st.integers(0, 2**16).map(lambda i: IPv6Network((0xFC00 << 112 | i << 64, 64))),
)


@FUZZ
@given(st.one_of(env_text, env_text, env_text, rendered_env, st.text(),
                 st.text(alphabet=string.printable, max_size=200)), any_env)
def test_fuzz_parse_env_text_and_previous_subnets(text: str, mapping: dict[str, str]) -> None:
    env = expect(SubnetEnvError, parse_env_text, text)
    if env is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        check_previous(env)
    check_previous(mapping)  # and any mapping at all, every example


def check_previous(env: dict[str, str]) -> None:
    got = expect(SubnetEnvError, previous_subnets, env)
    if got is not None:
        sn4, sn6 = got
        assert sn4 is None or isinstance(sn4, IPv4Network)
        assert sn6 is None or isinstance(sn6, IPv6Network)


# ------------------------------------------------------------------------------------------------
# flanneld's flags and FLANNELD_* variables

FLAG_NAMES = [f.name for f in FLAGS]
flag_value = st.one_of(
    st.text(max_size=12), st.integers(-(2**65), 2**65).map(str), st.sampled_from(["0x1F", "010", "1_0", "true", "T"]),
    ip4, ip6, near_ip, cidr4,
    st.builds(lambda s, h, p: f"{s}://{h}:{p}", st.sampled_from(["http", "https", "ftp", ""]), ip4 | near_ip,
              st.integers(-1, 70000)),
    st.text(alphabet="()[]{}*+?|^$\\.a0,", max_size=12),  # regexes, good and bad
    st.integers(1, 1500).map(lambda n: "(" * n + ")" * n),  # re.compile: RecursionError
    st.integers(0, 2**40).map(lambda n: f"a{{{n}}}"),  # re.compile: OverflowError past 2**32
    st.integers(4000, 5000).map(lambda n: "9" * n),  # int(): ValueError past 4300 digits
    st.builds(lambda s, h: f"http://{s}@{h}:2379", st.text(max_size=8), ip4),  # credentials in an endpoint
)
flag_token = st.one_of(
    st.builds(lambda dash, name, v: f"{dash}{name}={v}", st.sampled_from(["-", "--"]), st.sampled_from(FLAG_NAMES),
              flag_value),
    st.builds(lambda dash, name: f"{dash}{name}", st.sampled_from(["-", "--", "---"]),
              st.sampled_from([*FLAG_NAMES, "h", "bogus", "", "="])),
    flag_value,
    st.text(max_size=10),
    st.text(max_size=8).map(lambda t: "-" + t),  # any name, including newlines and '='
)
env_var = st.dictionaries(
    st.sampled_from(["FLANNELD_" + n.upper().replace("-", "_") for n in FLAG_NAMES]) | st.text(max_size=6),
    flag_value, max_size=4,
)


@FUZZ
@given(st.lists(flag_token, max_size=6), env_var)
def test_fuzz_parse_flags(argv: list[str], env: dict[str, str]) -> None:
    opts = expect(FlagError, parse_flags, argv, env)
    if opts is None:
        return
    assert isinstance(opts, Options)
    assert 1 <= opts.subnet_lease_renew_margin <= 1439 and 0 <= opts.healthz_port <= 65535
    assert isinstance(opts.iface, list) and all(isinstance(i, str) for i in opts.iface)


# ------------------------------------------------------------------------------------------------
# The vxlan Backend object


@FUZZ
@given(st.one_of(
    backend_obj,
    st.fixed_dictionaries({}, optional={k: st.one_of(st.integers(-(2**40), 2**40), plausible, json_value)
                                        for k in BACKEND_KEYS}),
    st.dictionaries(st.text(max_size=8), json_value, max_size=4),
    st.integers(1, 3000).map(lambda n: {"VNI": json.loads(deep(min(n, 400)))}),
))
def test_fuzz_vxlan_parse_options(backend: dict[str, Any]) -> None:
    opts = expect(ConfigError, parse_options, backend)
    if opts is None:
        return
    assert 0 <= opts.vni < 2**24 and 0 <= opts.port <= 65535 and 0 <= opts.mtu <= 65535
    assert opts.device == f"flannel.{opts.vni}"
