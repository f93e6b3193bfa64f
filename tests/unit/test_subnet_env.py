"""The subnet file (reference-state.md section 1, flannel-spec.md section 7)."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Network, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core.errors import SubnetEnvError
from pyflannel.core.subnet_env import SubnetEnv, parse_env_text, previous_subnets

REFERENCE_TEXT = "FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.67.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
REFERENCE_ENV = SubnetEnv(IPv4Network("100.64.0.0/16"), IPv4Network("100.64.67.0/24"), 1450, True)


def test_render_reference_exactly() -> None:
    assert REFERENCE_ENV.render() == REFERENCE_TEXT
    assert REFERENCE_ENV.render().encode() == REFERENCE_TEXT.encode("ascii")


def test_render_ipmasq_false() -> None:
    env = SubnetEnv(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.72.0/24"), 1450, False)
    assert env.render() == (
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )


def test_render_dual_stack_order_from_spec() -> None:
    env = SubnetEnv(
        IPv4Network("10.5.0.0/16"),
        IPv4Network("10.5.72.0/24"),
        1450,
        False,
        IPv6Network("2001:cafe:42::/56"),
        IPv6Network("2001:cafe:42::/64"),
    )
    assert env.render() == (
        "FLANNEL_NETWORK=10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.72.1/24\n"
        "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
        "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_render_ipv6_only() -> None:
    env = SubnetEnv(None, None, 1430, True, IPv6Network("fc00::/48"), IPv6Network("fc00:0:0:22::/64"))
    assert env.render() == (
        "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:22::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
    )


def test_render_other_prefix_lengths() -> None:
    env = SubnetEnv(IPv4Network("10.0.0.0/24"), IPv4Network("10.0.0.64/26"), 1400, True)
    assert "FLANNEL_SUBNET=10.0.0.65/26\n" in env.render()


def test_parse_reference() -> None:
    assert parse_env_text(REFERENCE_TEXT) == {
        "FLANNEL_NETWORK": "100.64.0.0/16",
        "FLANNEL_SUBNET": "100.64.67.1/24",
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "true",
    }


def test_parse_godotenv_forms() -> None:
    text = (
        "# written by hand\n"
        "\n"
        "export FLANNEL_NETWORK=10.5.0.0/16\n"
        '  FLANNEL_SUBNET="10.5.72.1/24"  \n'
        "FLANNEL_MTU='1450'\n"
        "FLANNEL_IPMASQ = false\n"
        "EMPTY=\n"
        "\r\n"
    )
    assert parse_env_text(text) == {
        "FLANNEL_NETWORK": "10.5.0.0/16",
        "FLANNEL_SUBNET": "10.5.72.1/24",
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "false",
        "EMPTY": "",
    }


def test_parse_crlf_and_later_value_wins() -> None:
    assert parse_env_text("A=1\r\nB=2\r\nA=3\r\n") == {"A": "3", "B": "2"}


def test_parse_empty() -> None:
    assert parse_env_text("") == {}
    assert parse_env_text("\n\n# only comments\n") == {}


@pytest.mark.parametrize(
    ("text", "line_no"),
    [
        pytest.param("GARBAGE\n", 1, id="no-equals-line-1"),
        pytest.param("FLANNEL_NETWORK=10.5.0.0/16\nGARBAGE\n", 2, id="no-equals-line-2"),
        pytest.param("A=1\n\n# c\nB=2\n=value\n", 5, id="empty-key-line-5"),
        pytest.param("A=1\nBAD KEY=1\n", 2, id="space-in-key"),
        pytest.param("A=1\nB=2\nKEY-X=1\n", 3, id="dash-in-key"),
        pytest.param("export\n", 1, id="bare-export"),
        pytest.param("A=1\n" * 40 + "x" * 500 + "\n", 41, id="long-line-41"),
    ],
)
def test_parse_malformed_names_line(text: str, line_no: int) -> None:
    with pytest.raises(SubnetEnvError) as ei:
        parse_env_text(text, source="/run/flannel/subnet.env")
    msg = str(ei.value)
    assert f"line {line_no}:" in msg
    assert "/run/flannel/subnet.env" in msg
    assert "\n" not in msg
    assert len(msg) < 200  # the offending line is truncated in the message


def test_previous_subnets_masks_to_network() -> None:
    sn4, sn6 = previous_subnets(parse_env_text(REFERENCE_TEXT))
    assert sn4 == IPv4Network("100.64.67.0/24")
    assert sn6 is None


def test_previous_subnets_dual_stack() -> None:
    env = {"FLANNEL_SUBNET": "10.5.72.1/24", "FLANNEL_IPV6_SUBNET": "2001:cafe:42::1/64"}
    assert previous_subnets(env) == (IPv4Network("10.5.72.0/24"), IPv6Network("2001:cafe:42::/64"))


def test_previous_subnets_absent_or_empty() -> None:
    assert previous_subnets({}) == (None, None)
    assert previous_subnets({"FLANNEL_SUBNET": "", "FLANNEL_IPV6_SUBNET": ""}) == (None, None)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        pytest.param({"FLANNEL_SUBNET": "bogus"}, "FLANNEL_SUBNET", id="v4-garbage"),
        pytest.param({"FLANNEL_SUBNET": "10.5.72.1/40"}, "FLANNEL_SUBNET", id="v4-prefix-40"),
        pytest.param({"FLANNEL_SUBNET": "10.5.72.300/24"}, "FLANNEL_SUBNET", id="v4-bad-octet"),
        pytest.param({"FLANNEL_IPV6_SUBNET": "fc00::1/129"}, "FLANNEL_IPV6_SUBNET", id="v6-prefix-129"),
        pytest.param({"FLANNEL_IPV6_SUBNET": "10.5.72.1/24"}, "FLANNEL_IPV6_SUBNET", id="v6-is-v4"),
    ],
)
def test_previous_subnets_invalid(env: dict[str, str], name: str) -> None:
    with pytest.raises(SubnetEnvError) as ei:
        previous_subnets(env)
    assert name in str(ei.value)
    assert "\n" not in str(ei.value)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
v4_nets = st.builds(lambda a, p: IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(8, 30))
v6_nets = st.builds(lambda a, p: IPv6Network((a, p), strict=False), st.integers(0, 2**128 - 1), st.integers(8, 126))


@settings(max_examples=300)
@given(
    network=v4_nets,
    subnet=v4_nets,
    mtu=st.integers(68, 65535),
    ipmasq=st.booleans(),
    v6=st.none() | st.tuples(v6_nets, v6_nets),
)
def test_render_parse_round_trip(
    network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool, v6: tuple[IPv6Network, IPv6Network] | None
) -> None:
    env = SubnetEnv(network, subnet, mtu, ipmasq, *(v6 or (None, None)))
    text = env.render()
    assert text.endswith("\n") and "\n\n" not in text
    parsed = parse_env_text(text)
    keys = ["FLANNEL_NETWORK", "FLANNEL_SUBNET"]
    if v6:
        keys += ["FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"]
    keys += ["FLANNEL_MTU", "FLANNEL_IPMASQ"]
    assert list(parsed) == keys
    assert parsed["FLANNEL_NETWORK"] == str(network)
    assert parsed["FLANNEL_MTU"] == str(mtu)
    assert parsed["FLANNEL_IPMASQ"] == ("true" if ipmasq else "false")
    assert previous_subnets(parsed) == (subnet, v6[1] if v6 else None)


@settings(max_examples=1000)
@given(st.text(max_size=200) | st.lists(st.sampled_from(["A=1", "export B=2", "#c", "", " ", "=", "x", '"q"', "\r"]))
       .map("\n".join))
def test_fuzz_parse_env_text(text: str) -> None:
    try:
        out = parse_env_text(text)
    except SubnetEnvError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(out, dict)
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in out.items())
    with contextlib.suppress(SubnetEnvError):
        previous_subnets(out)
