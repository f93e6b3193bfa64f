"""The flannel CNI plugin's decisions (pyflannel.core.cni_conf): netconf, subnet.env, delegate config.

Expected delegate configs follow flannel-io/cni-plugin (flannel_linux.go ``doCmdAdd``/``getDelegateIPAM``, the
v4/v6/dual-stack cases of flannel_linux_test.go) and flannel-spec.md section 9; error codes are the CNI spec's.
The fuzz tests feed arbitrary input to every parser and accept only CNIError.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core import cni_conf as cc
from pyflannel.core.cni_conf import CNIError

SUBNET_ENV = "FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.67.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
)
V6_ENV = (
    "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:22::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
)
#: The flannel entry of kube-flannel's 10-flannel.conflist as the runtime passes it (name/cniVersion from the list).
KUBE_NETCONF = {"name": "cbr0", "cniVersion": "0.3.1", "type": "flannel",
                "delegate": {"hairpinMode": True, "isDefaultGateway": True}}


def env_of(text: str = SUBNET_ENV) -> cc.FlannelEnv:
    return cc.parse_subnet_env(text, "/run/flannel/subnet.env")


def netconf(**kw: Any) -> dict[str, Any]:
    return cc.parse_netconf(json.dumps({**KUBE_NETCONF, **kw}))


def code_of(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(CNIError) as ei:
        fn(*args)
    return ei.value.code, ei.value.msg


# ---- delegate config ---------------------------------------------------------------------------------------


def test_kube_flannel_conflist_entry_gives_flannels_bridge_config() -> None:
    d = cc.delegate_config(netconf(), env_of())
    assert d == {
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "type": "bridge",
        "hairpinMode": True,
        "isDefaultGateway": True,
        "ipMasq": False,  # flanneld masquerades (FLANNEL_IPMASQ=true), so the bridge must not
        "isGateway": True,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "100.64.67.0/24"}]],
            "routes": [{"dst": "100.64.0.0/16"}],
        },
    }


def test_bridge_masquerades_when_flanneld_does_not() -> None:
    d = cc.delegate_config(netconf(), env_of(SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false")))
    assert d["ipMasq"] is True


def test_user_delegate_keys_win_over_defaults() -> None:
    nc = netconf(delegate={"ipMasq": True, "mtu": 1400, "isGateway": False, "bridge": "cni1", "forceAddress": True})
    d = cc.delegate_config(nc, env_of())
    assert (d["ipMasq"], d["mtu"], d["isGateway"], d["bridge"], d["forceAddress"]) == (True, 1400, False, "cni1", True)


def test_no_delegate_section_means_plain_bridge() -> None:
    d = cc.delegate_config(cc.parse_netconf('{"name": "n", "cniVersion": "1.0.0"}'), env_of())
    assert d["type"] == "bridge" and d["isGateway"] is True and d["cniVersion"] == "1.0.0"
    assert "hairpinMode" not in d


def test_non_bridge_delegate_gets_no_is_gateway() -> None:
    d = cc.delegate_config(netconf(delegate={"type": "ipvlan", "master": "eth0"}), env_of())
    assert d["type"] == "ipvlan" and "isGateway" not in d and d["master"] == "eth0"
    assert d["ipam"]["ranges"] == [[{"subnet": "100.64.67.0/24"}]]


@pytest.mark.parametrize("key", ["name", "ipam"])
def test_delegate_must_not_set_name_or_ipam(key: str) -> None:
    code, msg = code_of(cc.delegate_config, netconf(delegate={key: "x"}), env_of())
    assert code == cc.ERR_INVALID_NETCONF
    assert msg == f"'delegate' dictionary must not have '{key}' field, it'll be set by flannel"


@pytest.mark.parametrize("kind", [1, None, "", ["bridge"]])
def test_delegate_type_must_be_a_string(kind: Any) -> None:
    code, msg = code_of(cc.delegate_config, netconf(delegate={"type": kind}), env_of())
    assert code == cc.ERR_INVALID_NETCONF and "'type' field" in msg


@pytest.mark.parametrize("kind", ["../bridge", "/usr/lib/cni/bridge", ".", "..", "a\0b"])
def test_delegate_type_must_be_a_plugin_name(kind: str) -> None:
    code, msg = code_of(cc.delegate_config, netconf(delegate={"type": kind}), env_of())
    assert code == cc.ERR_INVALID_NETCONF and "plugin name" in msg


def test_user_ipam_keeps_its_keys_but_ranges_are_flannels() -> None:
    ipam = {"type": "host-local", "dataDir": "/tmp/ipam", "ranges": [[{"subnet": "192.0.2.0/24"}]],
            "routes": [{"dst": "198.18.0.0/15", "gw": "100.64.67.1"}]}
    d = cc.delegate_config(netconf(ipam=ipam), env_of())
    assert d["ipam"] == {
        "type": "host-local",
        "dataDir": "/tmp/ipam",
        "ranges": [[{"subnet": "100.64.67.0/24"}]],
        "routes": [{"dst": "198.18.0.0/15", "gw": "100.64.67.1"}, {"dst": "100.64.0.0/16"}],
    }
    assert ipam["ranges"] == [[{"subnet": "192.0.2.0/24"}]]  # the input is not modified


def test_user_ipam_type_is_kept() -> None:
    d = cc.delegate_config(netconf(ipam={"type": "static"}), env_of())
    assert d["ipam"]["type"] == "static"


def test_user_route_to_the_network_is_not_duplicated() -> None:
    d = cc.delegate_config(netconf(ipam={"routes": [{"dst": "100.64.0.0/16"}]}), env_of())
    assert d["ipam"]["routes"] == [{"dst": "100.64.0.0/16"}]


@pytest.mark.parametrize(
    "ipam",
    [{"routes": "x"}, {"routes": [1]}, {"routes": [{"gw": "1.2.3.4"}]}, {"routes": [{"dst": "nope"}]},
     {"routes": [{"dst": "10.0.0.0/8", "gw": 5}]}, {"type": 3}, {"type": ""}],
)
def test_bad_user_ipam_is_invalid_netconf(ipam: dict[str, Any]) -> None:
    code, _ = code_of(cc.delegate_config, netconf(ipam=ipam), env_of())
    assert code == cc.ERR_INVALID_NETCONF


def test_dual_stack_ranges_and_routes() -> None:
    d = cc.delegate_config(netconf(), env_of(DUAL_ENV))
    assert d["ipam"]["ranges"] == [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]
    assert d["ipam"]["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]
    assert d["mtu"] == 1472 and d["ipMasq"] is True


def test_ipv6_only() -> None:
    d = cc.delegate_config(netconf(), env_of(V6_ENV))
    assert d["ipam"]["ranges"] == [[{"subnet": "fc00:0:0:22::/64"}]]
    assert d["ipam"]["routes"] == [{"dst": "fc00::/48"}]


def test_runtime_config_is_passed_to_the_delegate() -> None:
    d = cc.delegate_config(netconf(runtimeConfig={"portMappings": []}), env_of())
    assert d["runtimeConfig"] == {"portMappings": []}
    assert "runtimeConfig" not in cc.delegate_config(netconf(), env_of())


def test_flannels_own_keys_do_not_leak_into_the_delegate() -> None:
    d = cc.delegate_config(netconf(subnetFile="/x/subnet.env", dataDir="/x/data"), env_of())
    assert not {"subnetFile", "dataDir", "delegate"} & set(d)


def test_delegate_config_is_json_and_deterministic() -> None:
    a = json.dumps(cc.delegate_config(netconf(), env_of()), sort_keys=True)
    b = json.dumps(cc.delegate_config(netconf(), env_of()), sort_keys=True)
    assert a == b


# ---- netconf ----------------------------------------------------------------------------------------------


def test_defaults_for_subnet_file_and_data_dir() -> None:
    nc = cc.parse_netconf(json.dumps(KUBE_NETCONF))
    assert nc["subnetFile"] == "/run/flannel/subnet.env" and nc["dataDir"] == "/var/lib/cni/flannel"
    nc = netconf(subnetFile="/run/f/s.env", dataDir="/tmp/d")
    assert nc["subnetFile"] == "/run/f/s.env" and nc["dataDir"] == "/tmp/d"


def test_netconf_accepts_bytes_and_str_and_prev_result() -> None:
    raw = json.dumps({**KUBE_NETCONF, "prevResult": {"cniVersion": "0.3.1", "ips": []}})
    assert cc.parse_netconf(raw) == cc.parse_netconf(raw.encode())


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"", cc.ERR_DECODE, "failed to load netconf"),
        (b"{", cc.ERR_DECODE, "failed to load netconf"),
        (b"[1]", cc.ERR_DECODE, "expected a JSON object, got list"),
        (b"\xff\xfe\xfa", cc.ERR_DECODE, "failed to load netconf"),
        (b'{"name": "n", "x": NaN}', cc.ERR_DECODE, "NaN"),
        (b"[" * 100000, cc.ERR_DECODE, "failed to load netconf"),
        (b'{"cniVersion": "0.3.1"}', cc.ERR_INVALID_NETCONF, "missing network name"),
        (b'{"name": 3}', cc.ERR_INVALID_NETCONF, "missing network name"),
        (b'{"name": "a b"}', cc.ERR_INVALID_NETCONF, "invalid characters found in network name"),
        (b'{"name": "-a"}', cc.ERR_INVALID_NETCONF, "invalid characters found in network name"),
        (b'{"name": "n", "cniVersion": 1}', cc.ERR_DECODE, "cniVersion must be a string"),
        (b'{"name": "n", "subnetFile": "subnet.env"}', cc.ERR_INVALID_NETCONF, "subnetFile must be an absolute"),
        (b'{"name": "n", "dataDir": ""}', cc.ERR_INVALID_NETCONF, "dataDir must be an absolute"),
        (b'{"name": "n", "dataDir": 7}', cc.ERR_INVALID_NETCONF, "dataDir must be an absolute"),
        (b'{"name": "n", "delegate": []}', cc.ERR_INVALID_NETCONF, "'delegate' must be a JSON object"),
        (b'{"name": "n", "ipam": "host-local"}', cc.ERR_INVALID_NETCONF, "'ipam' must be a JSON object"),
        (b'{"name": "n", "runtimeConfig": 1}', cc.ERR_INVALID_NETCONF, "'runtimeConfig' must be a JSON object"),
    ],
)
def test_bad_netconf(raw: bytes, code: int, fragment: str) -> None:
    with pytest.raises(CNIError) as ei:
        cc.parse_netconf(raw)
    assert ei.value.code == code
    assert fragment in str(ei.value)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_supported_versions(version: str) -> None:
    assert cc.check_version({"cniVersion": version}, "ADD") == version


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "1.1.0", "1.0", "", "banana"])
def test_unsupported_versions_are_code_1(version: str) -> None:
    with pytest.raises(CNIError) as ei:
        cc.check_version({"cniVersion": version}, "ADD")
    assert ei.value.code == cc.ERR_INCOMPATIBLE_VERSION
    assert ei.value.msg == "incompatible CNI versions"
    shown = version or "0.1.0"  # libcni's default for a config without cniVersion
    assert ei.value.details == f'config is "{shown}", plugin supports ["0.3.1" "0.4.0" "1.0.0"]'


def test_check_needs_0_4_0() -> None:
    with pytest.raises(CNIError) as ei:
        cc.check_version({"cniVersion": "0.3.1"}, "CHECK")
    assert (ei.value.code, ei.value.msg) == (1, "config version does not allow CHECK")
    assert cc.check_version({"cniVersion": "0.4.0"}, "CHECK") == "0.4.0"


def test_reply_version() -> None:
    assert cc.reply_version(None) == "1.0.0"
    assert cc.reply_version({"cniVersion": "0.3.1"}) == "0.3.1"
    assert cc.reply_version({"cniVersion": "0.2.0"}) == "1.0.0"
    assert cc.reply_version({"cniVersion": 4}) == "1.0.0"


def test_version_info() -> None:
    assert cc.version_info() == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}


def test_error_json_shape() -> None:
    assert CNIError(7, "bad", "why").to_dict("0.3.1") == {"cniVersion": "0.3.1", "code": 7, "msg": "bad",
                                                          "details": "why"}
    assert CNIError(5, "io").to_dict() == {"cniVersion": "1.0.0", "code": 5, "msg": "io"}
    assert str(CNIError(5, "io", "disk full")) == "io; disk full"


# ---- subnet.env -------------------------------------------------------------------------------------------


def test_subnet_env_as_flanneld_writes_it() -> None:
    assert env_of() == {"network": "100.64.0.0/16", "subnet": "100.64.67.0/24", "ipv6_network": None,
                        "ipv6_subnet": None, "mtu": 1450, "ipmasq": True}


def test_subnet_env_tolerates_comments_export_quotes_and_unknown_lines() -> None:
    text = ("# written by hand\n\nexport FLANNEL_NETWORK=\"100.64.0.0/16\"\n  FLANNEL_SUBNET = '100.64.3.1/24'\n"
            "garbage line\nFLANNEL_FOO=bar\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=false\n")
    e = env_of(text)
    assert (e["network"], e["subnet"], e["mtu"], e["ipmasq"]) == ("100.64.0.0/16", "100.64.3.0/24", 1450, False)


def test_subnet_env_later_lines_win() -> None:
    assert env_of(SUBNET_ENV + "FLANNEL_MTU=1400\n")["mtu"] == 1400


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "loadFlannelSubnetEnv failed: /run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, "
             "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
        (SUBNET_ENV.replace("FLANNEL_MTU=1450\n", ""),
         "loadFlannelSubnetEnv failed: /run/flannel/subnet.env is missing FLANNEL_MTU"),
        (SUBNET_ENV.replace("FLANNEL_SUBNET=100.64.67.1/24\n", ""),
         "loadFlannelSubnetEnv failed: /run/flannel/subnet.env is missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET"),
    ],
)
def test_subnet_env_missing_keys_use_flannels_message(text: str, message: str) -> None:
    assert code_of(env_of, text) == (cc.ERR_DECODE, message)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("FLANNEL_SUBNET=100.64.67.1", "FLANNEL_SUBNET: invalid CIDR"),
        ("FLANNEL_SUBNET=100.64.67.1/33", "FLANNEL_SUBNET: invalid CIDR"),
        ("FLANNEL_SUBNET=100.64.67.1/255.255.255.0", "FLANNEL_SUBNET: invalid CIDR"),
        ("FLANNEL_SUBNET=fc00::1/64", "FLANNEL_SUBNET: invalid CIDR"),
        ("FLANNEL_IPV6_SUBNET=10.0.0.1/24", "FLANNEL_IPV6_SUBNET: invalid CIDR"),
        ("FLANNEL_NETWORK=", "FLANNEL_NETWORK: invalid CIDR"),
        ("FLANNEL_MTU=abc", "FLANNEL_MTU: invalid value"),
        ("FLANNEL_MTU=0", "FLANNEL_MTU: invalid value"),
        ("FLANNEL_MTU=65536", "FLANNEL_MTU: invalid value"),
        ("FLANNEL_MTU=-1", "FLANNEL_MTU: invalid value"),
        ("FLANNEL_IPMASQ=yes", "FLANNEL_IPMASQ: invalid value"),
        ("FLANNEL_IPMASQ=True", "FLANNEL_IPMASQ: invalid value"),
    ],
)
def test_subnet_env_bad_values_are_code_6(line: str, fragment: str) -> None:
    code, msg = code_of(env_of, SUBNET_ENV + line + "\n")
    assert code == cc.ERR_DECODE
    assert msg.startswith("loadFlannelSubnetEnv failed: /run/flannel/subnet.env: ") and fragment in msg


# ---- the CNI_* environment --------------------------------------------------------------------------------

FULL_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "CNI_ARGS": "K8S_POD_NAME=x"}


def test_request_from_env() -> None:
    r = cc.request_from_env(FULL_ENV)
    assert (r.command, r.container_id, r.netns, r.ifname, r.args) == ("ADD", "c1", "/run/netns/p", "eth0",
                                                                       "K8S_POD_NAME=x")
    assert r.path_list == ["/opt/cni/bin", "/usr/lib/cni"]
    assert cc.request_from_env({**FULL_ENV, "CNI_PATH": ":/a::/b:"}).path_list == ["/a", "/b"]


@pytest.mark.parametrize(
    ("command", "drop", "missing"),
    [
        ("ADD", ("CNI_NETNS", "CNI_PATH"), "CNI_NETNS,CNI_PATH"),
        ("CHECK", ("CNI_IFNAME",), "CNI_IFNAME"),
        ("DEL", ("CNI_CONTAINERID",), "CNI_CONTAINERID"),
    ],
)
def test_missing_env_is_code_4(command: str, drop: tuple[str, ...], missing: str) -> None:
    env = {k: v for k, v in FULL_ENV.items() if k not in drop} | {"CNI_COMMAND": command}
    assert code_of(cc.request_from_env, env) == (4, f"required env variables [{missing}] missing")


def test_del_needs_no_netns_and_version_needs_nothing() -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != "CNI_NETNS"} | {"CNI_COMMAND": "DEL"}
    assert cc.request_from_env(env).netns == ""
    assert cc.request_from_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"


def test_unknown_command_is_code_4() -> None:
    assert code_of(cc.request_from_env, {**FULL_ENV, "CNI_COMMAND": "GC"}) == (4, "unknown CNI_COMMAND: GC")


@pytest.mark.parametrize("cid", ["../etc/passwd", "a/b", ".hidden", "-x", "a b", "ä", "a\nb"])
def test_container_ids_that_could_escape_data_dir_are_refused(cid: str) -> None:
    code, msg = code_of(cc.request_from_env, {**FULL_ENV, "CNI_CONTAINERID": cid})
    assert (code, msg) == (4, "invalid characters in containerID")


def test_container_id_forms_runtimes_use() -> None:
    for cid in ("0f3a" * 16, "k8s_POD_default-nginx-1.0", "cnitool-77383ca0a0715733ca6f"):
        cc.validate_container_id(cid)
    assert code_of(cc.validate_container_id, "")[0] == cc.ERR_UNKNOWN_CONTAINER


@pytest.mark.parametrize(
    ("ifname", "msg"),
    [("a" * 16, "interface name is too long"), (".", "interface name is . or .."),
     ("..", "interface name is . or .."), ("eth/0", "interface name contains / or : or whitespace characters"),
     ("eth:0", "interface name contains / or : or whitespace characters"),
     ("eth 0", "interface name contains / or : or whitespace characters")],
)
def test_bad_interface_names(ifname: str, msg: str) -> None:
    assert code_of(cc.validate_ifname, ifname) == (4, msg)
    cc.validate_ifname("a" * 15)


# ---- CHECK ------------------------------------------------------------------------------------------------


def test_stale_reason() -> None:
    saved = cc.delegate_config(netconf(), env_of())
    assert cc.stale_reason(saved, cc.delegate_config(netconf(), env_of())) is None
    moved = env_of(SUBNET_ENV.replace("100.64.67.1/24", "100.64.9.1/24"))
    reason = cc.stale_reason(saved, cc.delegate_config(netconf(), moved))
    assert reason and "100.64.67.0/24" in reason and "100.64.9.0/24" in reason
    other = cc.delegate_config(netconf(delegate={"type": "ipvlan"}), env_of())
    assert "type changed" in (cc.stale_reason(saved, other) or "")
    assert cc.stale_reason({}, saved)


# ---- fuzzing: only CNIError may escape ---------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                                  kids, max_size=4),
                          max_leaves=12)
key = st.sampled_from(["name", "cniVersion", "type", "subnetFile", "dataDir", "delegate", "ipam", "runtimeConfig",
                       "routes", "ranges", "dst", "gw", "ipMasq", "mtu", "isGateway", "hairpinMode"])
word = st.sampled_from(["cbr0", "0.3.1", "1.0.0", "bridge", "host-local", "/tmp/x", "10.0.0.0/8", "fc00::/7",
                        "not/a/cidr", "../x", ""])
shaped = st.recursive(json_leaf | word,
                      lambda kids: st.lists(kids, max_size=3) | st.dictionaries(key, kids, max_size=5), max_leaves=10)
route = st.fixed_dictionaries({"dst": st.sampled_from(["100.64.0.0/16", "0.0.0.0/0", "10.0.0.0/8", "x", "1.2.3.4"])},
                              optional={"gw": st.sampled_from(["10.0.0.1", ""]) | json_leaf, "x": shaped}) | shaped


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` 9 times in 10 (``a | b`` would flatten and weight every branch of ``bad`` like ``good``)."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


# Mostly-valid configs, so that the delegate builder (not just the first check) sees most examples.
netconf_like = st.fixed_dictionaries(
    {"name": mostly(st.sampled_from(["cbr0", "n-1.x"]), json_leaf),
     "cniVersion": mostly(st.sampled_from(["0.3.1", "0.4.0", "1.0.0", "0.3.0"]), json_leaf)},
    optional={
        "subnetFile": mostly(st.just("/run/flannel/subnet.env"), word | json_leaf),
        "dataDir": mostly(st.sampled_from(["/var/lib/cni/flannel", "/tmp/d"]), word | json_leaf),
        "delegate": mostly(st.dictionaries(key, mostly(word, shaped), max_size=5), shaped),
        "ipam": mostly(st.fixed_dictionaries({}, optional={"type": mostly(word, json_leaf), "dataDir": word,
                                                           "routes": mostly(st.lists(route, max_size=3), shaped),
                                                           "ranges": shaped}), shaped),
        "runtimeConfig": mostly(st.dictionaries(key, shaped, max_size=3), shaped),
        "prevResult": shaped,
    },
)


@settings(max_examples=10000, deadline=None)
@given(netconf_like, st.sampled_from([SUBNET_ENV, DUAL_ENV, V6_ENV]), st.sampled_from(["ADD", "CHECK", "DEL"]))
def test_fuzz_netconf_to_delegate_raises_only_cnierror(conf: dict[str, Any], env_text: str, command: str) -> None:
    raw = json.dumps(conf)
    try:
        nc = cc.parse_netconf(raw)
        cc.check_version(nc, command)
        d = cc.delegate_config(nc, env_of(env_text))
    except CNIError as e:
        assert isinstance(e.code, int) and e.msg
        assert len(str(e)) < 1000  # one readable line, whatever the input
        json.dumps(e.to_dict())
        return
    assert d["name"] == conf["name"] and isinstance(d["type"], str) and "/" not in d["type"]
    assert d["cniVersion"] == nc["cniVersion"]
    assert [r[0]["subnet"] for r in d["ipam"]["ranges"]] == [
        s for s in (env_of(env_text)["subnet"], env_of(env_text)["ipv6_subnet"]) if s
    ]
    json.loads(json.dumps(d))  # the config the delegate gets is plain JSON


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200) | json_value.map(lambda v: json.dumps(v).encode()))
def test_fuzz_netconf_bytes_raise_only_cnierror(raw: bytes) -> None:
    try:
        nc = cc.parse_netconf(raw)
    except CNIError as e:
        assert len(str(e)) < 1000
        return
    assert isinstance(nc, dict) and nc["name"]


subnet_line = st.one_of(
    st.text(max_size=40),
    st.tuples(
        st.sampled_from(["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET",
                         "FLANNEL_MTU", "FLANNEL_IPMASQ", "export FLANNEL_MTU", "X"]),
        st.sampled_from(["=", " = ", "", "=="]),
        st.text(max_size=20) | st.sampled_from(["10.0.0.1/24", "fc00::1/64", "1450", "true", "false", "'1450'",
                                                "10.0.0.1/99", "::/0", "0.0.0.0/0"]),
    ).map("".join),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(subnet_line, max_size=8).map("\n".join))
def test_fuzz_subnet_env_raises_only_cnierror(text: str) -> None:
    try:
        e = cc.parse_subnet_env(text, "/f")
    except CNIError as err:
        assert err.code == cc.ERR_DECODE and err.msg.startswith("loadFlannelSubnetEnv failed: /f")
        return
    assert 68 <= e["mtu"] <= 65535 and isinstance(e["ipmasq"], bool)
    assert e["subnet"] or e["ipv6_subnet"]


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH",
                                        "CNI_ARGS"]),
                       st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "c1", "eth0", "/p"]) | st.text(max_size=20)))
def test_fuzz_request_env_raises_only_cnierror(env: dict[str, str]) -> None:
    try:
        r = cc.request_from_env(env)
    except CNIError as e:
        assert e.code in (cc.ERR_INVALID_ENV, cc.ERR_UNKNOWN_CONTAINER)
        return
    assert r.command in cc.COMMANDS
    if r.command != "VERSION":
        assert "/" not in r.container_id and not r.container_id.startswith(".")


def test_huge_or_deep_values_give_short_messages() -> None:
    deep: Any = "x"
    for _ in range(500):
        deep = [deep]
    for conf in ({"name": "n", "dataDir": "y" * 100000}, {"name": "n", "dataDir": deep},
                 {"name": "n", "cniVersion": deep}, {"name": "é" * 100000}):
        with pytest.raises(CNIError) as ei:
            cc.parse_netconf(json.dumps(conf))
        assert len(str(ei.value)) < 300
