"""WireGuard backend at adapter level on a real kernel: wireguard-go devices in 3 node namespaces.

No daemon: each node runs ``support.wgagent``, which drives ``WireguardBackend`` as the daemon would
(setup, own lease, peers diffed against what the device reports and applied through the UAPI socket).
Shown here: pods ping across nodes; a capture on the LAN bridge sees only UDP to the ListenPort between
the nodes (no plaintext ICMP); the key file is created 0400 and ``wg pubkey`` agrees with our PublicKey;
a replaced key file is picked up, published and followed by the peers; a restart keeps the key; close()
deletes the devices and wireguard-go exits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster, netns_pids

from pyflannel.core.backends.wireguard import generate_private_key, public_key

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs Debian's wireguard-go"),
]

TESTS_DIR = Path(__file__).resolve().parents[1]
CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 0}}'
PORT = 51820


class AgentProc:
    """One support.wgagent process in a node namespace."""

    def __init__(self, cluster: Cluster, ns: str, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
        self.ns = ns
        self.err = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "support.wgagent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            env=env,
            text=True,
            start_new_session=True,
        )

    def __call__(self, call: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"call": call, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"wgagent in {self.ns} died (rc={self.proc.poll()})"
        reply = json.loads(line)
        assert "error" not in reply, f"{self.ns} {call}: {reply['error']}"
        return reply["ok"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


@pytest.fixture
def agents(make_cluster: Callable[..., Cluster]) -> Iterator[tuple[Cluster, list[AgentProc]]]:
    c = make_cluster(nodes=3)
    started: list[AgentProc] = []
    try:
        for node in c.nodes:
            started.append(AgentProc(c, node.ns, node.dir / "wgagent.log"))
        yield c, started
    finally:
        for a in started:
            a.stop()
        # The cluster's teardown also kills any wireguard-go left in the namespaces (by namespace pid list).


def subnet_of(i: int) -> str:
    return f"100.64.{i}.0/24"


def setup_nodes(c: Cluster, agents: list[AgentProc]) -> list[dict[str, Any]]:
    """setup + own lease + subnet.env (for the pods) on every node; returns the leases as the agents take them."""
    leases = []
    for node, a in zip(c.nodes, agents, strict=True):
        out = a("setup", config=CONFIG, key_file=str(node.dir / "wgkey"), uplink="eth0", mtu=1500, ip=node.lan_ip)
        assert out["driver"] == "wireguard-go" and out["mtu"] == 1420
        le = {"subnet": subnet_of(node.index), "attrs": out["attrs"]}
        a("on_lease", lease=le)
        node.subnet_file.write_text(
            f"FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.{node.index}.1/24\nFLANNEL_MTU=1420\n"
            "FLANNEL_IPMASQ=false\n"
        )
        leases.append(le)
    return leases


def sync_peers(agents: list[AgentProc], leases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outs = []
    for i, a in enumerate(agents):
        out = a("peers", leases=[le for j, le in enumerate(leases) if j != i])
        assert out["failed"] == [] and out["rejected"] == [], out
        outs.append(out)
    return outs


def ping_all(c: Cluster) -> list[str]:
    bad = []
    for src in c.pods:
        for dst in c.pods:
            if src.node is not dst.node and not c.ping(src, dst.ip, count=1, timeout=3):
                bad.append(f"{src.name}->{dst.name}")
    return bad


def test_three_nodes_ping_encrypted_only(agents: tuple[Cluster, list[AgentProc]]) -> None:
    c, ags = agents
    leases = setup_nodes(c, ags)
    # Key file: created 0400, and the published key is what `wg pubkey` derives from it.
    key_file = c.nodes[0].dir / "wgkey"
    assert key_file.stat().st_mode & 0o777 == 0o400
    attrs = json.loads(leases[0]["attrs"])
    wg_pub = subprocess.run(["wg", "pubkey"], input=key_file.read_text(), capture_output=True, text=True, check=True)
    assert attrs["BackendData"] == {"PublicKey": wg_pub.stdout.strip(), "Port": PORT}
    assert attrs["BackendType"] == "wireguard"

    first = sync_peers(ags, leases)
    assert all(len(o["ops"]) == 2 for o in first)
    assert all(o["ops"] == [] for o in sync_peers(ags, leases)), "second pass must be a no-op"
    for node in c.nodes:
        c.add_pods(node, 1)

    pcap = c.workdir / "lan.pcap"
    dump = subprocess.Popen(
        # -i any: the LAN bridge itself does not see unicast forwarded between its ports; the ports do.
        ["ip", "netns", "exec", c.lan_ns, "tcpdump", "-Z", "root", "-i", "any", "-n", "--immediate-mode", "-U",
         "-w", str(pcap), "not arp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        while "listening on" not in (line := dump.stderr.readline()):
            assert line, "tcpdump exited before it listened"
        assert ping_all(c) == []
        # Packets still in the capture ring when tcpdump is stopped are lost: wait for the file to have them.
        deadline = time.monotonic() + 10
        while pcap.stat().st_size < 24 + 12 * 100 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    text = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True).stdout
    lines = [x for x in text.splitlines() if " IP " in x]
    assert len(lines) >= 12, text  # 6 pings each way, plus handshakes
    assert not [x for x in lines if "ICMP" in x], text
    assert not [x for x in lines if ".51820 > " not in x or ": UDP" not in x], text

    st = ags[0]("status")
    (dev,) = st
    assert dev["name"] == "flannel-wg" and dev["listen_port"] == PORT
    assert {tuple(p["allowed_ips"]) for p in dev["peers"]} == {(subnet_of(2),), (subnet_of(3),)}
    assert all(p["last_handshake_sec"] > 0 for p in dev["peers"])


def test_key_rotation_and_restart(agents: tuple[Cluster, list[AgentProc]]) -> None:
    c, ags = agents
    leases = setup_nodes(c, ags)
    sync_peers(ags, leases)
    for node in c.nodes:
        c.add_pods(node, 1)
    assert ping_all(c) == []

    n1 = c.nodes[0]
    old_pub = json.loads(leases[0]["attrs"])["BackendData"]["PublicKey"]
    assert ags[0]("check_key")["changed"] is False
    # Replace the key file as an operator would (new file, renamed over the old one).
    new_key = generate_private_key()
    tmp = n1.dir / "wgkey.new"
    tmp.write_text(new_key + "\n")
    tmp.chmod(0o400)
    tmp.rename(n1.dir / "wgkey")
    out = ags[0]("check_key")
    assert out == {"changed": True, "public_key": public_key(new_key), "calls": 1}
    leases[0] = {"subnet": subnet_of(1), "attrs": ags[0]("attrs")}
    assert json.loads(leases[0]["attrs"])["BackendData"]["PublicKey"] == public_key(new_key)
    # The peers follow the new lease: the old key is replaced, nothing else changes.
    outs = sync_peers(ags, leases)
    assert outs[0]["ops"] == []
    for o in outs[1:]:
        assert len(o["ops"]) == 2 and any(old_pub in op and op.startswith("delete") for op in o["ops"])
    assert ping_all(c) == []
    for a in ags[1:]:
        keys = {p["public_key"] for p in a("status")[0]["peers"]}
        assert public_key(new_key) in keys and old_pub not in keys

    # Restart of n1's backend: close() deletes the device and wireguard-go exits; setup again keeps the key.
    assert ags[0]("close") is True
    assert c.exec(n1.ns, ["ip", "link", "show", "flannel-wg"], check=False).returncode != 0
    deadline = time.monotonic() + 10
    while any(_comm(p) == "wireguard-go" for p in netns_pids(n1.ns)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_comm(p) == "wireguard-go" for p in netns_pids(n1.ns))
    out = ags[0]("setup", config=CONFIG, key_file=str(n1.dir / "wgkey"), uplink="eth0", mtu=1500, ip=n1.lan_ip)
    assert json.loads(out["attrs"])["BackendData"]["PublicKey"] == public_key(new_key)
    ags[0]("on_lease", lease=leases[0])
    sync_peers(ags, leases)
    assert ping_all(c) == []


def test_deleted_device_is_recreated(agents: tuple[Cluster, list[AgentProc]]) -> None:
    c, ags = agents
    leases = setup_nodes(c, ags)
    sync_peers(ags, leases)
    for node in c.nodes:
        c.add_pods(node, 1)
    n2 = c.nodes[1]
    c.exec(n2.ns, ["ip", "link", "del", "flannel-wg"])
    changed = ags[1]("check_devices", lease=leases[1])
    assert "re-created flannel-wg" in changed
    # The device came back empty; the next peer pass puts the peers back.
    assert len(sync_peers(ags, leases)[1]["ops"]) == 2
    assert ping_all(c) == []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
