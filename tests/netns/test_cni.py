"""The ``flannel`` CNI plugin on a real kernel: pods wired the Kubernetes way on 3 nodes running flanneld.

Every pod here is created through the plugin, never by hand: the real ``flannel`` console script (installed
into a per-test "/opt/cni/bin" as a symlink, as docs/cni.md says) runs inside the node's namespace and
delegates to Debian's ``bridge`` and ``host-local`` from /usr/lib/cni, chained with ``portmap`` the way
kube-flannel's ``10-flannel.conflist`` does.  There is no cnitool in Debian, so :class:`Runtime` below plays
the container runtime: for ADD it calls each plugin of the list in order, giving each the list's ``name``
and ``cniVersion`` and the previous plugin's result as ``prevResult``; for DEL it calls them in reverse.

host-local's ``dataDir`` and flannel's ``dataDir`` point into the test's temp directory (through the
conflist's ``ipam`` override), so nothing under /var/lib/cni is touched.  Only named namespaces
``{prefix}-*`` are created in the host; everything else happens inside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from support.checks import wait_for
from support.cluster import Cluster, Node, destroy_prefix

pytestmark = pytest.mark.root

FLANNEL = Path(sys.executable).parent / "flannel"  # the console script pyproject.toml declares
DEBIAN_CNI = Path("/usr/lib/cni")
CONFIG = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
#: kube-flannel v0.20.2's /etc/cni/net.d/10-flannel.conflist, verbatim.
KUBE_CONFLIST: dict[str, Any] = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def needs_netns() -> None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("etcd"):
        pytest.skip("needs root, iproute2 and etcd (creates network namespaces)")
    if not (DEBIAN_CNI / "bridge").exists():
        pytest.skip("needs Debian's containernetworking-plugins in /usr/lib/cni")




def start_cluster(prefix: str, workdir: Path, nodes: int = 3) -> Cluster:
    """etcd + flanneld on every node, as tests/netns/test_vxlan_cluster.py does; wait for all peer routes."""
    c = Cluster(prefix=prefix, nodes=nodes, workdir=workdir)
    try:
        c.up()
        c.start_etcd()
        c.put_config(CONFIG)
        for n in c.nodes:
            c.start_flanneld(n)
        for n in c.nodes:
            c.wait_subnet_env(n)
        wait_for(lambda: all(len(c.peer_routes(n) or []) == nodes - 1 for n in c.nodes), 20,
                 "every node to route to every other node's subnet")
    except BaseException:
        c.down()
        raise
    return c


class PluginError(AssertionError):
    def __init__(self, plugin: str, command: str, proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{plugin} {command} exited {proc.returncode}: stdout={proc.stdout!r} "
                         f"stderr={proc.stderr[-600:]!r}")
        self.proc = proc
        self.reply: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}


class Runtime:
    """A minimal CNI runtime for one node: runs a conflist's plugins inside the node's namespace.

    ``bin_dir`` plays /opt/cni/bin: ``flannel`` is a symlink to the venv's console script and CNI_PATH is
    ``bin_dir:/usr/lib/cni``, so the plugin finds Debian's bridge/host-local on CNI_PATH like on a node.
    """

    def __init__(self, c: Cluster, node: Node, bin_dir: Path, conflist: dict[str, Any] | None = None) -> None:
        self.c = c
        self.node = node
        self.bin_dir = bin_dir
        self.data_dir = node.dir / "cni-flannel"  # flannel's scratch files (default /var/lib/cni/flannel)
        self.ipam_dir = node.dir / "ipam"  # host-local's leases (default /var/lib/cni/networks)
        base = KUBE_CONFLIST if conflist is None else conflist
        self.conflist = json.loads(json.dumps(base))
        for p in self.conflist["plugins"]:
            if p["type"] == "flannel":
                p.setdefault("subnetFile", str(node.subnet_file))
                p.setdefault("dataDir", str(self.data_dir))
                p.setdefault("ipam", {})["dataDir"] = str(self.ipam_dir)
        self.results: dict[str, dict[str, Any]] = {}
        self._pods = 0

    # ---- plugin calls ------------------------------------------------------------------------------------

    def env(self, command: str, cid: str, netns: str, pod: str = "pod") -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": f"/run/netns/{netns}" if netns else "",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{self.bin_dir}:{DEBIAN_CNI}",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
                        f"K8S_POD_INFRA_CONTAINER_ID={cid}",
        }

    def plugin_path(self, kind: str) -> str:
        own = self.bin_dir / kind
        return str(own if own.exists() else DEBIAN_CNI / kind)

    def call(self, command: str, conf: dict[str, Any], cid: str, netns: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        e = self.env(command, cid, netns)
        e.update(env or {})
        return self.c.exec(self.node.ns, [self.plugin_path(conf["type"])], check=False, timeout=60, env=e,
                           input=json.dumps(conf))

    def plugin_conf(self, plugin: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        """What libcni gives one plugin of a list: list name/version, runtimeConfig for its capabilities."""
        conf = {**plugin, "name": self.conflist["name"], "cniVersion": self.conflist["cniVersion"]}
        conf.pop("capabilities", None)
        if plugin.get("capabilities", {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": []}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    # ---- the runtime's view ------------------------------------------------------------------------------

    def add(self, cid: str, netns: str) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.conflist["plugins"]:
            proc = self.call("ADD", self.plugin_conf(plugin, prev), cid, netns)
            if proc.returncode != 0:
                raise PluginError(plugin["type"], "ADD", proc)
            prev = json.loads(proc.stdout)
        assert prev is not None
        self.results[cid] = prev
        return prev

    def delete(self, cid: str, netns: str) -> None:
        cached = self.results.pop(cid, None)
        use_cache = self.conflist["cniVersion"] not in ("0.1.0", "0.2.0", "0.3.0", "0.3.1")
        for plugin in reversed(self.conflist["plugins"]):
            proc = self.call("DEL", self.plugin_conf(plugin, cached if use_cache else None), cid, netns)
            if proc.returncode != 0:
                raise PluginError(plugin["type"], "DEL", proc)

    def check(self, cid: str, netns: str) -> subprocess.CompletedProcess[str]:
        flannel = self.conflist["plugins"][0]
        return self.call("CHECK", self.plugin_conf(flannel, self.results[cid]), cid, netns)

    # ---- pods --------------------------------------------------------------------------------------------

    def new_netns(self) -> str:
        """A fresh, empty pod namespace ``{prefix}-{node}p{k}`` (IPv6 off, lo up), like a sandbox."""
        self._pods += 1
        name = f"{self.c.prefix}-{self.node.name}p{self._pods}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
        settings = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        self.c.exec(name, ["sysctl", "-q", "-w", *settings])
        self.c.exec(name, ["ip", "link", "set", "lo", "up"])
        return name

    def drop_netns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)

    # ---- what is left on the node ------------------------------------------------------------------------

    def leased_ips(self) -> set[str]:
        """host-local's lease files: one file per allocated IP, named after it."""
        d = self.ipam_dir / self.conflist["name"]
        if not d.exists():
            return set()
        return {f.name for f in d.iterdir() if f.name[:1].isdigit()}

    def scratch_files(self) -> list[str]:
        return sorted(os.listdir(self.data_dir)) if self.data_dir.exists() else []

    def pod_veths(self) -> list[str]:
        out = self.c.exec(self.node.ns, ["ip", "-o", "link", "show", "type", "veth"]).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n != "eth0"]  # eth0 is the node's own LAN veth


def ip_of(result: dict[str, Any]) -> IPv4Interface:
    (ip,) = result["ips"]
    return IPv4Interface(ip["address"])


def subnet_of(c: Cluster, node: Node) -> IPv4Network:
    return IPv4Interface(c.read_subnet_env(node)["FLANNEL_SUBNET"]).network


def assert_clean(rt: Runtime) -> None:
    assert rt.leased_ips() == set(), "host-local still holds IPs"
    assert rt.scratch_files() == [], "flannel's dataDir still holds configs"
    assert rt.pod_veths() == [], "veths left on the node"


# --------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    needs_netns()
    prefix = f"pfcni{secrets.token_hex(2)}"
    c = start_cluster(prefix, tmp_path_factory.mktemp("cni"))
    try:
        yield c
    finally:
        c.down()
        destroy_prefix(prefix)


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("opt-cni-bin")
    (d / "flannel").symlink_to(FLANNEL)
    return d


@pytest.fixture(scope="module")
def runtimes(cluster: Cluster, bin_dir: Path) -> dict[str, Runtime]:
    return {n.name: Runtime(cluster, n, bin_dir) for n in cluster.nodes}


@pytest.fixture
def pods(runtimes: dict[str, Runtime]) -> Iterator[Callable[[Runtime, str | None], tuple[str, str, dict[str, Any]]]]:
    """Factory ``pods(rt, cid)`` -> (cid, netns, result); every pod still alive at teardown is DELeted."""
    live: list[tuple[Runtime, str, str]] = []

    def make(rt: Runtime, cid: str | None = None) -> tuple[str, str, dict[str, Any]]:
        cid = cid or secrets.token_hex(16)
        ns = rt.new_netns()
        live.append((rt, cid, ns))
        return cid, ns, rt.add(cid, ns)

    yield make
    for rt, cid, ns in live:
        try:
            rt.delete(cid, ns)
        finally:
            rt.drop_netns(ns)


# --------------------------------------------------------------------------------------------------------
# No namespace needed
# --------------------------------------------------------------------------------------------------------


def test_plugin_imports_only_the_stdlib_and_its_own_modules() -> None:
    """The ADD path must not pay for httpx/pyroute2/dataclasses/subprocess/logging at every pod start.

    The child runs with ``-S`` (no site-packages, no .pth hooks) so that everything in ``sys.modules`` was
    imported by the interpreter itself or by the plugin.
    """
    import pyflannel

    root = str(Path(pyflannel.__file__).resolve().parents[1])
    code = "import sys; import pyflannel.cli.cni; print('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, timeout=30,
                          env={"PYTHONPATH": root})
    mods = set(proc.stdout.split())
    ours = {m for m in mods if m.split(".")[0] == "pyflannel"}
    assert ours == {"pyflannel", "pyflannel.cli", "pyflannel.cli.cni", "pyflannel.core", "pyflannel.core.cni_conf",
                    "pyflannel.core.errors"}
    assert {m for m in mods - ours if m.split(".")[0] not in sys.stdlib_module_names} == {"__main__"}
    heavy = {"httpx", "pyroute2", "dataclasses", "inspect", "subprocess", "logging", "typing", "asyncio", "pathlib"}
    assert mods & heavy == set()


def test_console_script_version_and_about() -> None:
    proc = subprocess.run([str(FLANNEL)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}
    proc = subprocess.run([str(FLANNEL)], env={}, capture_output=True, text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert "CNI protocol versions supported: 0.3.1, 0.4.0, 1.0.0" in proc.stderr


def _fake_plugin(tmp_path: Path, body: str) -> str:
    p = tmp_path / "fake"
    p.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    p.chmod(0o755)
    return str(p)


def test_spawned_plugin_gets_stdin_env_and_its_errors_are_decoded(tmp_path: Path) -> None:
    from pyflannel.cli.cni import _posix_spawn_plugin
    from pyflannel.core.cni_conf import CNIError

    echo = _fake_plugin(tmp_path, 'printf \'{"cmd":"%s",\' "$CNI_COMMAND"; printf \'"in":\'; cat; echo "}"\n')
    big = {"pad": "x" * 200_000}  # larger than a pipe buffer: stdin must not deadlock
    out = _posix_spawn_plugin(echo, json.dumps(big).encode(), {"CNI_COMMAND": "ADD"})
    assert json.loads(out) == {"cmd": "ADD", "in": big}

    fail = _fake_plugin(tmp_path, 'echo \'{"code": 11, "msg": "busy", "details": "later"}\'; exit 1\n')
    with pytest.raises(CNIError) as ei:
        _posix_spawn_plugin(fail, b"{}", {"CNI_COMMAND": "DEL"})
    assert (ei.value.code, ei.value.msg, ei.value.details) == (11, "fake DEL failed: busy", "later")

    garbage = _fake_plugin(tmp_path, "echo panic: runtime error; exit 2\n")
    with pytest.raises(CNIError) as ei:
        _posix_spawn_plugin(garbage, b"{}", {"CNI_COMMAND": "ADD"})
    assert (ei.value.code, ei.value.msg) == (5, "fake ADD exited with status 2 without a CNI error")
    assert "panic" in ei.value.details

    killed = _fake_plugin(tmp_path, "kill -9 $$\n")
    with pytest.raises(CNIError) as ei:
        _posix_spawn_plugin(killed, b"{}", {"CNI_COMMAND": "ADD"})
    assert ei.value.msg == "fake ADD was killed by signal 9 without a CNI error"


# --------------------------------------------------------------------------------------------------------
# On the cluster
# --------------------------------------------------------------------------------------------------------


def test_pods_on_three_nodes_ping_each_other_across_nodes(cluster: Cluster, runtimes: dict[str, Runtime],
                                                          pods: Any) -> None:
    made = []
    for n in cluster.nodes:
        rt = runtimes[n.name]
        for _ in range(2):
            cid, ns, result = pods(rt)
            made.append((n, ns, result))
    for n, ns, result in made:
        assert result["cniVersion"] == "0.3.1"
        sn = subnet_of(cluster, n)
        ip = ip_of(result)
        assert ip.network == sn and ip.ip != sn.network_address + 1
        assert result["ips"][0]["gateway"] == str(sn.network_address + 1)
        routes = cluster.exec(ns, ["ip", "-4", "route"]).stdout
        assert f"default via {sn.network_address + 1} dev eth0" in routes
        assert f"100.64.0.0/16 via {sn.network_address + 1} dev eth0" in routes
        assert cluster.exec(ns, ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip() == "1450"
    for n in cluster.nodes:
        sn = subnet_of(cluster, n)
        addr = cluster.exec(n.ns, ["ip", "-4", "-o", "addr", "show", "dev", "cni0"]).stdout
        assert f"inet {sn.network_address + 1}/24" in addr
        assert cluster.exec(n.ns, ["cat", "/sys/class/net/cni0/mtu"]).stdout.strip() == "1450"
        veths = runtimes[n.name].pod_veths()
        assert len(veths) == 2
        for v in veths:  # hairpinMode from the kube-flannel delegate section
            assert cluster.exec(n.ns, ["cat", f"/sys/class/net/{v}/brport/hairpin_mode"]).stdout.strip() == "1"
    failures = [
        (a_ns, str(ip_of(b_res).ip))
        for a_node, a_ns, _ in made
        for b_node, _, b_res in made
        if a_node is not b_node and not cluster.ping(a_ns, str(ip_of(b_res).ip), count=1, timeout=2)
    ]
    assert failures == []


def test_del_frees_the_ip_and_is_idempotent(cluster: Cluster, runtimes: dict[str, Runtime]) -> None:
    rt = runtimes["n3"]
    ns = rt.new_netns()
    try:
        cid = "del-test-0001"
        ip = str(ip_of(rt.add(cid, ns)).ip)
        assert rt.leased_ips() == {ip}
        assert (rt.ipam_dir / "cbr0" / ip).read_text().startswith(cid)
        assert rt.scratch_files() == [cid]
        rt.delete(cid, ns)
        assert_clean(rt)
        assert cluster.exec(ns, ["ip", "-o", "link"]).stdout.count(": eth0") == 0
        rt.delete(cid, ns)  # again: still success
        rt.delete("never-added", ns)
        rt.delete(cid, "")  # the runtime lost the netns (CNI_NETNS empty on DEL)
    finally:
        rt.drop_netns(ns)
    assert_clean(rt)


def test_hundred_add_del_cycles_leak_nothing(cluster: Cluster, runtimes: dict[str, Runtime]) -> None:
    rt = runtimes["n1"]
    sn = subnet_of(cluster, cluster.node("n1"))
    seen = []
    for i in range(100):
        ns = rt.new_netns()
        try:
            cid = f"cycle-{i:03d}"
            ip = ip_of(rt.add(cid, ns))
            assert ip.network == sn
            seen.append(str(ip.ip))
            assert rt.leased_ips() == {str(ip.ip)} and rt.scratch_files() == [cid]
            rt.delete(cid, ns)
        finally:
            rt.drop_netns(ns)
    assert len(set(seen)) == 100  # host-local hands out the next address each time, so no reuse yet
    assert_clean(rt)
    left = [n for n in cluster.namespaces() if n.startswith(f"{cluster.prefix}-n1p")]
    assert left == []


def test_twenty_concurrent_adds_get_distinct_ips(cluster: Cluster, runtimes: dict[str, Runtime]) -> None:
    rt = runtimes["n2"]
    sn = subnet_of(cluster, cluster.node("n2"))
    names = [rt.new_netns() for _ in range(20)]
    cids = [f"conc-{i:02d}" for i in range(20)]
    try:
        with ThreadPoolExecutor(max_workers=20) as ex:
            results = list(ex.map(rt.add, cids, names))
        ips = [ip_of(r) for r in results]
        assert len({str(i.ip) for i in ips}) == 20
        assert all(i.network == sn for i in ips)
        assert rt.leased_ips() == {str(i.ip) for i in ips}
        assert rt.scratch_files() == sorted(cids)
        assert len(rt.pod_veths()) == 20
        # Every one of them is reachable from a pod on another node.
        probe = runtimes["n1"]
        probe_ns = probe.new_netns()
        try:
            probe.add("probe-0001", probe_ns)
            unreachable = [str(i.ip) for i in ips if not cluster.ping(probe_ns, str(i.ip), count=1, timeout=2)]
            assert unreachable == []
        finally:
            probe.delete("probe-0001", probe_ns)
            probe.drop_netns(probe_ns)
        with ThreadPoolExecutor(max_workers=20) as ex:
            list(ex.map(rt.delete, cids, names))
        assert_clean(rt)
    except BaseException:
        for cid, ns in zip(cids, names, strict=True):
            with contextlib.suppress(PluginError):
                rt.delete(cid, ns)
        raise
    finally:
        for ns in names:
            rt.drop_netns(ns)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_every_spec_version_with_debians_plugins(cluster: Cluster, bin_dir: Path, version: str) -> None:
    rt = Runtime(cluster, cluster.node("n3"), bin_dir, {**KUBE_CONFLIST, "cniVersion": version})
    ns = rt.new_netns()
    cid = f"ver-{version}"
    try:
        result = rt.add(cid, ns)
        assert result["cniVersion"] == version
        assert ip_of(result).network == subnet_of(cluster, cluster.node("n3"))
        if version != "0.3.1":
            proc = rt.check(cid, ns)
            assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
        rt.delete(cid, ns)
    finally:
        rt.drop_netns(ns)
    assert_clean(rt)


def test_errors_from_the_real_executable(cluster: Cluster, runtimes: dict[str, Runtime], tmp_path: Path) -> None:
    rt = runtimes["n3"]
    ns = rt.new_netns()
    flannel = rt.conflist["plugins"][0]
    try:
        conf = rt.plugin_conf({**flannel, "subnetFile": str(tmp_path / "missing.env")}, None)
        proc = rt.call("ADD", conf, "err-1", ns)
        assert proc.returncode == 1
        err = json.loads(proc.stdout)
        assert err["code"] == 11
        assert err["msg"] == f"loadFlannelSubnetEnv failed: open {tmp_path}/missing.env: no such file or directory"

        proc = rt.call("ADD", rt.plugin_conf(flannel, None), "err-2", ns, env={"CNI_PATH": str(rt.bin_dir)})
        err = json.loads(proc.stdout)
        assert proc.returncode == 1 and err["code"] == 4
        assert err["msg"] == f'failed to find plugin "bridge" in path [{rt.bin_dir}]'

        proc = rt.c.exec(rt.node.ns, [rt.plugin_path("flannel")], check=False, env=rt.env("ADD", "err-3", ns),
                         input='{"name": "cbr0", "cniVersion": "0.3.1", "delegate": ')
        assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6

        # A delegate failure keeps its code; the saved config lets the runtime's DEL undo the partial ADD.
        bad = {**flannel, "delegate": {"bridge": "eth0"}}  # eth0 exists in the node and is not a bridge
        proc = rt.call("ADD", rt.plugin_conf(bad, None), "err-4", ns)
        err = json.loads(proc.stdout)
        assert proc.returncode == 1 and err["msg"].startswith("bridge ADD failed: ") and "eth0" in err["msg"]
        assert "err-4" in rt.scratch_files()
        proc = rt.call("DEL", rt.plugin_conf(bad, None), "err-4", ns)
        assert proc.returncode == 0, proc.stdout
    finally:
        rt.drop_netns(ns)
    assert_clean(rt)
