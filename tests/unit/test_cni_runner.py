"""The flannel CNI plugin's runner (pyflannel.cli.cni.run) driven in-process with StringIO streams.

No process is started: the delegate is a fake ``exec_plugin`` that records what it was given and answers
like Debian's bridge plugin would.  Files (subnet.env, dataDir, a CNI_PATH directory holding an executable
named ``bridge``) live in ``tmp_path``.  tests/netns/test_cni.py runs the real console script and plugins.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pyflannel.cli.cni import find_plugin, run, save_scratch
from pyflannel.core.cni_conf import CNIError

SUBNET_ENV = "FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.67.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
RESULT = {
    "cniVersion": "0.3.1",
    "interfaces": [{"name": "cni0", "mac": "1e:65:d3:bd:c4:95"}, {"name": "veth1", "mac": "ae:10:12:4f:38:21"},
                   {"name": "eth0", "mac": "aa:ba:ad:20:06:34", "sandbox": "/run/netns/p1"}],
    "ips": [{"version": "4", "interface": 2, "address": "100.64.67.2/24", "gateway": "100.64.67.1"}],
    "routes": [{"dst": "100.64.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "100.64.67.1"}],
    "dns": {},
}


class FakeDelegate:
    """Stands in for ``_posix_spawn_plugin``: records calls, returns a result or raises a delegate error."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, str], bytes]] = []
        self.fail: CNIError | None = None
        self.reply: bytes = json.dumps(RESULT).encode()

    def __call__(self, path: str, conf: bytes, env: Mapping[str, str]) -> bytes:
        self.calls.append((path, json.loads(conf), dict(env), conf))
        if self.fail is not None:
            raise self.fail
        return self.reply if env["CNI_COMMAND"] == "ADD" else b""


class Node:
    """A node's files in tmp_path, and helpers to run the plugin against them."""

    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        bridge = self.bin / "bridge"
        bridge.write_text("#!/bin/sh\nexit 99\n")  # never executed here; find_plugin only needs it executable
        bridge.chmod(0o755)
        self.subnet_file = tmp / "run" / "subnet.env"
        self.subnet_file.parent.mkdir()
        self.subnet_file.write_text(SUBNET_ENV)
        self.data_dir = tmp / "data"
        self.delegate = FakeDelegate()
        self.stderr = io.StringIO()

    def netconf(self, **kw: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "name": "cbr0", "cniVersion": "0.3.1", "type": "flannel",
            "subnetFile": str(self.subnet_file), "dataDir": str(self.data_dir),
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        }
        conf.update(kw)
        return conf

    def env(self, command: str, cid: str = "c1", **kw: str) -> dict[str, str]:
        e = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/p1", "CNI_IFNAME": "eth0",
             "CNI_PATH": f"/nonexistent:{self.bin}"}
        e.update(kw)
        return e

    def run(self, command: str, conf: Any = None, cid: str = "c1", **kw: str) -> tuple[int, str]:
        raw = json.dumps(self.netconf() if conf is None else conf)
        out = io.StringIO()
        rc = run(self.env(command, cid, **kw), io.StringIO(raw), out, self.stderr, exec_plugin=self.delegate)
        return rc, out.getvalue()

    def error(self, command: str, conf: Any = None, **kw: str) -> dict[str, Any]:
        rc, out = self.run(command, conf, **kw)
        assert rc == 1, out
        assert out.endswith("\n") and out.count("\n") == 1
        err: dict[str, Any] = json.loads(out)
        assert set(err) <= {"cniVersion", "code", "msg", "details"}
        return err


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


# ---- ADD ---------------------------------------------------------------------------------------------------


def test_add_saves_the_delegate_config_and_prints_the_delegates_result(node: Node) -> None:
    rc, out = node.run("ADD")
    assert rc == 0
    assert json.loads(out) == RESULT
    ((path, conf, env, raw),) = node.delegate.calls
    assert path == str(node.bin / "bridge")
    assert conf == {
        "cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "hairpinMode": True, "isDefaultGateway": True,
        "ipMasq": False, "isGateway": True, "mtu": 1450,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "100.64.67.0/24"}]],
                 "routes": [{"dst": "100.64.0.0/16"}]},
    }
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_CONTAINERID"] == "c1" and env["CNI_NETNS"] == "/run/netns/p1"
    saved = node.data_dir / "c1"
    assert saved.read_bytes() == raw  # exactly what the delegate got, replayed on DEL
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
    assert sorted(os.listdir(node.data_dir)) == ["c1"]  # no temp file left behind
    assert node.stderr.getvalue() == ""


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_add_speaks_every_supported_version(node: Node, version: str) -> None:
    rc, _ = node.run("ADD", node.netconf(cniVersion=version))
    assert rc == 0
    assert node.delegate.calls[0][1]["cniVersion"] == version


def test_add_stdin_may_be_bytes_text_or_binary_stream(node: Node) -> None:
    raw = json.dumps(node.netconf())
    for stdin in (raw.encode(), io.BytesIO(raw.encode()), io.StringIO(raw)):
        out = io.StringIO()
        assert run(node.env("ADD"), stdin, out, node.stderr, exec_plugin=node.delegate) == 0
        assert json.loads(out.getvalue()) == RESULT


def test_add_with_runtime_config_passes_it_on(node: Node) -> None:
    assert node.run("ADD", node.netconf(runtimeConfig={"portMappings": []}))[0] == 0
    assert node.delegate.calls[0][1]["runtimeConfig"] == {"portMappings": []}


def test_add_with_ipam_data_dir_override(node: Node, tmp_path: Path) -> None:
    assert node.run("ADD", node.netconf(ipam={"dataDir": str(tmp_path / "ipam")}))[0] == 0
    assert node.delegate.calls[0][1]["ipam"]["dataDir"] == str(tmp_path / "ipam")


def test_add_without_subnet_env_is_try_again_later(node: Node) -> None:
    node.subnet_file.unlink()
    err = node.error("ADD")
    assert err["code"] == 11
    assert err["msg"] == f"loadFlannelSubnetEnv failed: open {node.subnet_file}: no such file or directory"
    assert "flanneld" in err["details"]
    assert err["cniVersion"] == "0.3.1"
    assert node.delegate.calls == [] and not node.data_dir.exists()
    assert "loadFlannelSubnetEnv failed" in node.stderr.getvalue()


def test_add_with_unreadable_subnet_env_is_io_failure(node: Node) -> None:
    node.subnet_file.unlink()
    node.subnet_file.mkdir()
    err = node.error("ADD")
    assert err["code"] == 5 and err["msg"].startswith(f"loadFlannelSubnetEnv failed: open {node.subnet_file}: ")


def test_add_with_incomplete_subnet_env(node: Node) -> None:
    node.subnet_file.write_text("FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.67.1/24\n")
    err = node.error("ADD")
    assert err["code"] == 6
    assert err["msg"] == f"loadFlannelSubnetEnv failed: {node.subnet_file} is missing FLANNEL_MTU, FLANNEL_IPMASQ"


def test_add_with_delegate_missing_from_cni_path(node: Node) -> None:
    (node.bin / "bridge").unlink()
    err = node.error("ADD")
    assert err["code"] == 4
    assert err["msg"] == f'failed to find plugin "bridge" in path [/nonexistent {node.bin}]'
    assert node.delegate.calls == [] and not (node.data_dir / "c1").exists()


def test_add_ignores_a_non_executable_file_on_cni_path(node: Node) -> None:
    (node.bin / "bridge").chmod(0o644)
    if os.access(node.bin / "bridge", os.X_OK):  # root may execute anything with an x bit; none is set here
        pytest.skip("os.access reports X_OK for a file without x bits")
    assert node.error("ADD")["code"] == 4


@pytest.mark.parametrize(
    ("stdin", "code", "msg"),
    [
        ("{not json", 6, "failed to load netconf: "),
        ("[]", 6, "failed to load netconf: expected a JSON object, got list"),
        ('{"cniVersion": "0.3.1"}', 7, "missing network name"),
        ('{"name": "cbr0", "cniVersion": "0.2.0"}', 1, "incompatible CNI versions"),
        ('{"name": "cbr0", "cniVersion": "0.3.1", "delegate": {"name": "x"}}', 7, "'delegate' dictionary must not"),
        ('{"name": "cbr0", "cniVersion": "0.3.1", "subnetFile": "rel.env"}', 7, "subnetFile must be an absolute"),
    ],
)
def test_malformed_network_config(node: Node, stdin: str, code: int, msg: str) -> None:
    out = io.StringIO()
    rc = run(node.env("ADD"), io.StringIO(stdin), out, node.stderr, exec_plugin=node.delegate)
    assert rc == 1
    err = json.loads(out.getvalue())
    assert err["code"] == code and err["msg"].startswith(msg)
    assert node.delegate.calls == []


def test_add_passes_a_delegate_error_through_and_keeps_the_config_for_del(node: Node) -> None:
    node.delegate.fail = CNIError(11, "bridge ADD failed: failed to allocate for range 0", "no IP addresses")
    err = node.error("ADD")
    assert (err["code"], err["msg"], err["details"]) == (11, "bridge ADD failed: failed to allocate for range 0",
                                                          "no IP addresses")
    assert (node.data_dir / "c1").exists()  # the runtime's DEL will replay it and undo the partial ADD
    node.delegate.fail = None
    assert node.run("DEL") == (0, "")
    assert node.delegate.calls[-1][2]["CNI_COMMAND"] == "DEL"
    assert not (node.data_dir / "c1").exists()


@pytest.mark.parametrize(("reply", "code"), [(b"", 6), (b"not json", 6), (b"[1, 2]", 6)])
def test_add_with_an_unreadable_delegate_result(node: Node, reply: bytes, code: int) -> None:
    node.delegate.reply = reply
    assert node.error("ADD")["code"] == code


def test_add_when_data_dir_cannot_be_created(node: Node, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = node.error("ADD", node.netconf(dataDir=str(blocker / "sub")))
    assert err["code"] == 5 and err["msg"].startswith(f"failed to save the delegate config to {blocker}/sub/c1: ")
    assert node.delegate.calls == []


def test_a_bug_is_still_reported_as_cni_json(node: Node) -> None:
    def broken(path: str, conf: bytes, env: Mapping[str, str]) -> bytes:
        raise KeyError("oops")

    out = io.StringIO()
    rc = run(node.env("ADD"), json.dumps(node.netconf()).encode(), out, node.stderr, exec_plugin=broken)
    err = json.loads(out.getvalue())
    assert rc == 1 and err["code"] == 100 and "KeyError" in err["msg"]


# ---- DEL ---------------------------------------------------------------------------------------------------


def test_del_replays_the_saved_config_and_removes_it(node: Node) -> None:
    node.run("ADD")
    saved = (node.data_dir / "c1").read_bytes()
    # The runtime's DEL config may differ (no subnet.env needed, other delegate keys): the saved one is replayed.
    node.subnet_file.unlink()
    assert node.run("DEL", node.netconf(delegate={"hairpinMode": False}), CNI_NETNS="") == (0, "")
    path, _, env, raw = node.delegate.calls[-1]
    assert (path, raw, env["CNI_COMMAND"]) == (str(node.bin / "bridge"), saved, "DEL")
    assert not (node.data_dir / "c1").exists()


def test_del_without_saved_config_succeeds_and_calls_nothing(node: Node) -> None:
    assert node.run("DEL") == (0, "")
    assert node.run("DEL", cid="never-added") == (0, "")
    assert node.delegate.calls == []


def test_del_is_idempotent(node: Node) -> None:
    node.run("ADD")
    assert node.run("DEL") == (0, "")
    assert node.run("DEL") == (0, "")
    assert [c[2]["CNI_COMMAND"] for c in node.delegate.calls] == ["ADD", "DEL"]


def test_del_keeps_the_config_when_the_delegate_fails(node: Node) -> None:
    node.run("ADD")
    node.delegate.fail = CNIError(5, "bridge DEL failed: device busy")
    err = node.error("DEL")
    assert (err["code"], err["msg"]) == (5, "bridge DEL failed: device busy")
    assert (node.data_dir / "c1").exists()  # the runtime retries DEL; it must still know what to undo


def test_del_keeps_the_config_when_the_delegate_is_missing(node: Node) -> None:
    node.run("ADD")
    (node.bin / "bridge").unlink()
    assert node.error("DEL")["code"] == 4
    assert (node.data_dir / "c1").exists()


@pytest.mark.parametrize("content", [b"", b"{broken", b"[]", b"{}", b'{"type": 5}', b'{"type": ".."}',
                                     b'{"type": "../../bin/sh"}'])
def test_del_with_a_corrupt_saved_config_gives_up_cleanly(node: Node, content: bytes) -> None:
    node.data_dir.mkdir()
    (node.data_dir / "c1").write_bytes(content)
    assert node.run("DEL") == (0, "")
    assert node.delegate.calls == []
    assert not (node.data_dir / "c1").exists()
    assert "removing it" in node.stderr.getvalue()


def test_del_does_not_need_a_valid_delegate_section(node: Node) -> None:
    node.run("ADD")
    assert node.run("DEL", node.netconf(delegate={"name": "x", "ipam": {}}))[0] == 0


# ---- CHECK, VERSION, environment --------------------------------------------------------------------------


def test_check_after_add_passes_without_calling_the_delegate(node: Node) -> None:
    conf = node.netconf(cniVersion="1.0.0", prevResult={**RESULT, "cniVersion": "1.0.0"})
    assert node.run("ADD", node.netconf(cniVersion="1.0.0"))[0] == 0
    assert node.run("CHECK", conf) == (0, "")
    assert [c[2]["CNI_COMMAND"] for c in node.delegate.calls] == ["ADD"]


def test_check_for_an_unknown_container(node: Node) -> None:
    err = node.error("CHECK", node.netconf(cniVersion="1.0.0"))
    assert (err["code"], err["msg"]) == (3, "no saved delegate config for container c1")


def test_check_notices_a_subnet_change(node: Node) -> None:
    node.run("ADD", node.netconf(cniVersion="0.4.0"))
    node.subnet_file.write_text(SUBNET_ENV.replace("100.64.67.1/24", "100.64.9.1/24"))
    err = node.error("CHECK", node.netconf(cniVersion="0.4.0"))
    assert err["code"] == 7 and "100.64.9.0/24" in err["msg"]


def test_check_is_refused_for_0_3_1(node: Node) -> None:
    node.run("ADD")
    err = node.error("CHECK")
    assert (err["code"], err["msg"]) == (1, "config version does not allow CHECK")


def test_version_needs_no_stdin(node: Node) -> None:
    out = io.StringIO()
    assert run({"CNI_COMMAND": "VERSION"}, io.StringIO(""), out, node.stderr) == 0
    assert json.loads(out.getvalue()) == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}


def test_no_command_prints_about_to_stderr(node: Node) -> None:
    out = io.StringIO()
    assert run({}, b"", out, node.stderr) == 0
    assert out.getvalue() == ""
    assert node.stderr.getvalue().splitlines() == [
        "CNI Plugin flannel version 0.1.0 (pyflannel; flannel-io/cni-plugin compatible)",
        "CNI protocol versions supported: 0.3.1, 0.4.0, 1.0.0",
    ]


def test_unknown_command_and_missing_env(node: Node) -> None:
    err = node.error("GC")
    assert (err["code"], err["msg"], err["cniVersion"]) == (4, "unknown CNI_COMMAND: GC", "1.0.0")
    err = node.error("ADD", CNI_NETNS="", CNI_PATH="")
    assert (err["code"], err["msg"]) == (4, "required env variables [CNI_NETNS,CNI_PATH] missing")


def test_container_id_cannot_escape_the_data_dir(node: Node, tmp_path: Path) -> None:
    err = node.error("ADD", cid="../escape")
    assert (err["code"], err["msg"]) == (4, "invalid characters in containerID")
    assert not (tmp_path / "escape").exists() and node.delegate.calls == []


# ---- helpers -----------------------------------------------------------------------------------------------


def test_find_plugin_takes_the_first_match(tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "bridge").write_text("")
        (tmp_path / d / "bridge").chmod(0o755)
    (tmp_path / "a" / "host-local").mkdir()  # a directory is not a plugin
    assert find_plugin("bridge", [str(tmp_path / "a"), str(tmp_path / "b")]) == str(tmp_path / "a" / "bridge")
    with pytest.raises(CNIError) as ei:
        find_plugin("host-local", [str(tmp_path / "a")])
    assert ei.value.code == 4


def test_save_scratch_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "d" / "cid"
    save_scratch(str(target), b"one")
    save_scratch(str(target), b"two")
    assert target.read_bytes() == b"two" and os.listdir(target.parent) == ["cid"]
