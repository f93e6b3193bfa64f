"""KubeSubnetManager against a real kube-apiserver (v1.34, etcd 3.6) with the manifest's RBAC.

The manager always runs with the kubeconfig of ServiceAccount kube-flannel/flannel bound to the
ClusterRole of deploy/kube-flannel.yml, so every call it makes is proven allowed by those rules. The
tests create the Node objects themselves (no controller-manager or kubelet runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from support import kube as ks

from pyflannel.adapters.kube_subnet import KubeSubnetManager
from pyflannel.core.errors import FlannelError
from pyflannel.core.lease import LeaseAttrs
from pyflannel.ports import LeaseAdded, LeaseEvent, LeaseRemoved, LeaseResync, PreviousSubnets

pytestmark = pytest.mark.skipif(ks.missing_reason() is not None, reason=ks.missing_reason() or "")

P = "flannel.alpha.coreos.com/"
NET_CONF = '{"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}'
MAC = "0a:58:64:40:01:01"


def attrs(ip: str = "198.18.0.1", mac: str = MAC) -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address(ip), backend_type="vxlan",
                      backend_data=json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ks.KubeApiServer]:
    with ks.running_apiserver(tmp_path_factory.mktemp("apiserver")) as server:
        yield server


@pytest.fixture(scope="module")
def kubeconfig(api: ks.KubeApiServer) -> Path:
    return ks.flannel_kubeconfig(api, api.workdir / "flannel.kubeconfig")


@pytest.fixture
def net_conf(tmp_path: Path) -> Path:
    p = tmp_path / "net-conf.json"
    p.write_text(NET_CONF)
    return p


@pytest.fixture
def nodes(api: ks.KubeApiServer) -> Iterator[list[str]]:
    """Names the test creates; deleted afterwards so the next test's list starts clean."""
    made: list[str] = []
    yield made
    for name in made:
        api.raw("DELETE", f"/api/v1/nodes/{name}")


def manager(kubeconfig: Path, net_conf: Path, node: str, **kw: Any) -> KubeSubnetManager:
    return KubeSubnetManager(kubeconfig=str(kubeconfig), net_config_path=str(net_conf), env={"NODE_NAME": node}, **kw)


async def acquire(m: KubeSubnetManager, a: LeaseAttrs | None = None) -> Any:
    try:
        await m.get_network_config()
        return await m.acquire_lease(a or attrs(), PreviousSubnets())
    finally:
        await m.close()


def test_lease_from_pod_cidr_and_annotations_exactly_as_flannel(api: ks.KubeApiServer, kubeconfig: Path,
                                                                net_conf: Path, nodes: list[str]) -> None:
    api.create_node("acq1", "100.64.1.0/24")
    nodes.append("acq1")
    lease = asyncio.run(acquire(manager(kubeconfig, net_conf, "acq1")))
    assert lease.subnet == IPv4Network("100.64.1.0/24")
    assert lease.attrs == attrs()
    node = api.get_node("acq1")
    ann = {k: v for k, v in node["metadata"]["annotations"].items() if k.startswith(P)}
    assert ann == {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": '{"VNI":1,"VtepMAC":"0a:58:64:40:01:01"}',
        P + "public-ip": "198.18.0.1",
    }
    cond = next(c for c in node["status"]["conditions"] if c["type"] == "NetworkUnavailable")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "FlannelIsUp",
                                                                 "Flannel is running on this node")
    assert cond["lastTransitionTime"].endswith("Z") and cond["lastHeartbeatTime"].endswith("Z")
    # Nothing differs: a second start does not patch the annotations.
    rv = node["metadata"]["resourceVersion"]
    asyncio.run(acquire(manager(kubeconfig, net_conf, "acq1", set_node_network_unavailable=False)))
    assert api.get_node("acq1")["metadata"]["resourceVersion"] == rv


def test_restart_keeps_vtep_mac_and_honours_overwrite(api: ks.KubeApiServer, kubeconfig: Path, net_conf: Path,
                                                      nodes: list[str]) -> None:
    api.create_node("acq2", "100.64.2.0/24", annotations={P + "public-ip-overwrite": "198.18.9.9"})
    nodes.append("acq2")
    asyncio.run(acquire(manager(kubeconfig, net_conf, "acq2")))
    assert api.get_node("acq2")["metadata"]["annotations"][P + "public-ip"] == "198.18.9.9"

    async def stored() -> tuple[str, str]:
        m = manager(kubeconfig, net_conf, "acq2")
        try:
            await m.get_network_config()
            return m.stored_vtep_macs()
        finally:
            await m.close()

    assert asyncio.run(stored()) == (MAC, "")


def test_node_public_ip_annotation_acts_as_public_ip(api: ks.KubeApiServer, kubeconfig: Path, net_conf: Path,
                                                     nodes: list[str]) -> None:
    api.create_node("acq3", "100.64.3.0/24", annotations={P + "node-public-ip": "198.18.7.7"})
    nodes.append("acq3")
    lease = asyncio.run(acquire(manager(kubeconfig, net_conf, "acq3")))
    assert lease.attrs.public_ip == IPv4Address("198.18.7.7")
    assert api.get_node("acq3")["metadata"]["annotations"][P + "public-ip"] == "198.18.7.7"


def test_pod_cidr_outside_network_is_flannels_message(api: ks.KubeApiServer, kubeconfig: Path, net_conf: Path,
                                                      nodes: list[str]) -> None:
    api.create_node("acq4", "100.65.4.0/24")
    nodes.append("acq4")
    with pytest.raises(FlannelError) as e:
        asyncio.run(acquire(manager(kubeconfig, net_conf, "acq4")))
    assert str(e.value) == ('subnet "100.64.0.0/16" specified in the flannel net config doesn\'t contain '
                            '"100.65.4.0/24" PodCIDR of the "acq4" node')


def test_pod_cidr_missing_waits_with_one_line_then_goes_on(api: ks.KubeApiServer, kubeconfig: Path,
                                                           net_conf: Path, nodes: list[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    api.create_node("acq5")
    nodes.append("acq5")
    caplog.set_level(logging.INFO, logger="pyflannel")

    async def run() -> Any:
        m = manager(kubeconfig, net_conf, "acq5")
        await m.get_network_config()
        task = asyncio.create_task(m.acquire_lease(attrs(), PreviousSubnets()))
        while not any("pod cidr not assigned" in r.getMessage() for r in caplog.records):
            assert not task.done(), task
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # still waiting, still one line
        assert not task.done()
        await asyncio.to_thread(api.set_pod_cidr, "acq5", "100.64.5.0/24")
        try:
            return await asyncio.wait_for(task, 30)
        finally:
            await m.close()

    lease = asyncio.run(run())
    assert lease.subnet == IPv4Network("100.64.5.0/24")
    waits = [r for r in caplog.records if "pod cidr not assigned" in r.getMessage()]
    assert len(waits) == 1 and waits[0].levelno == logging.WARNING
    assert "--allocate-node-cidrs" in waits[0].getMessage() and "--pod-network-cidr" in waits[0].getMessage()
    assert 'node "acq5" pod cidr not assigned' in waits[0].getMessage()


def test_node_name_from_pod_spec_and_flannels_messages(api: ks.KubeApiServer, kubeconfig: Path,
                                                       net_conf: Path, nodes: list[str]) -> None:
    api.create_node("acq6", "100.64.6.0/24")
    nodes.append("acq6")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kube-flannel-ds-abc", "namespace": "kube-flannel"},
           "spec": {"nodeName": "acq6", "containers": [{"name": "c", "image": "pause"}]}}
    api.admin("POST", "/api/v1/namespaces/kube-flannel/pods", pod)
    try:
        def mk(env: dict[str, str]) -> KubeSubnetManager:
            return KubeSubnetManager(kubeconfig=str(kubeconfig), net_config_path=str(net_conf), env=env)

        async def name_of(env: dict[str, str]) -> str:
            m = mk(env)
            try:
                await m.get_network_config()
                return m.node_name
            finally:
                await m.close()

        assert asyncio.run(name_of({"POD_NAME": "kube-flannel-ds-abc", "POD_NAMESPACE": "kube-flannel"})) == "acq6"
        with pytest.raises(FlannelError, match="^env variables POD_NAME and POD_NAMESPACE must be set$"):
            asyncio.run(name_of({"POD_NAME": "x"}))
        with pytest.raises(FlannelError, match="^error retrieving pod spec for 'kube-flannel/nope'"):
            asyncio.run(name_of({"POD_NAME": "nope", "POD_NAMESPACE": "kube-flannel"}))
    finally:
        api.raw("DELETE", "/api/v1/namespaces/kube-flannel/pods/kube-flannel-ds-abc?gracePeriodSeconds=0")


def test_missing_net_conf_is_one_line(api: ks.KubeApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    m = manager(kubeconfig, tmp_path / "nope.json", "x")
    with pytest.raises(FlannelError) as e:
        asyncio.run(acquire(m))
    assert str(e.value) == f"failed to read net conf '{tmp_path / 'nope.json'}': No such file or directory"


def test_rbac_allows_nothing_beyond_flannels_rules(api: ks.KubeApiServer, kubeconfig: Path,
                                                   nodes: list[str]) -> None:
    token = kubeconfig.read_text().split("token: ")[1].split()[0]
    api.create_node("rbac1", "100.64.7.0/24")
    nodes.append("rbac1")
    assert api.raw("GET", "/api/v1/nodes/rbac1", token=token)[0] == 200
    assert api.raw("DELETE", "/api/v1/nodes/rbac1", token=token)[0] == 403
    assert api.raw("PATCH", "/api/v1/nodes/rbac1", {"metadata": {"labels": {"a": "b"}}},
                   "application/strategic-merge-patch+json", token=token)[0] == 403
    assert api.raw("GET", "/api/v1/namespaces/kube-system/secrets", token=token)[0] == 403


# --- peers ----------------------------------------------------------------------------------------


class Events:
    """Pulls batches from lease_events and keeps the resulting lease set (by node subnet key)."""

    def __init__(self, m: KubeSubnetManager) -> None:
        self.m = m
        self.it: AsyncIterator[list[LeaseEvent]] = m.lease_events()
        self.state: dict[str, Any] = {}
        self.batches: list[list[LeaseEvent]] = []

    async def next(self, timeout: float = 60) -> list[LeaseEvent]:
        batch = await asyncio.wait_for(anext(self.it), timeout)
        self.batches.append(batch)
        for ev in batch:
            if isinstance(ev, LeaseResync):
                self.state = {le.key_name: le for le in ev.leases}
            elif isinstance(ev, LeaseAdded):
                self.state[ev.key] = ev.lease
            elif isinstance(ev, LeaseRemoved):
                self.state.pop(ev.key, None)
        return batch

    async def until(self, pred: Any, timeout: float = 60) -> None:
        async def loop() -> None:
            while not pred(self.state):
                await self.next(timeout)
        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        await self.it.aclose()  # type: ignore[attr-defined]
        await self.m.close()


def keys(state: dict[str, Any]) -> set[str]:
    return set(state)


def test_watch_adds_updates_ignores_and_removes(api: ks.KubeApiServer, kubeconfig: Path, net_conf: Path,
                                                nodes: list[str]) -> None:
    api.create_flannel_node("peer1", "100.64.11.0/24", "198.18.0.11", "0a:00:00:00:00:11")
    api.create_node("plain1", "100.64.12.0/24")  # no flannel on it: ignored
    nodes += ["peer1", "plain1"]

    async def run() -> None:
        m = manager(kubeconfig, net_conf, "peer1")
        await m.get_network_config()
        ev = Events(m)
        try:
            first = await ev.next()
            assert isinstance(first[0], LeaseResync)
            assert "100.64.11.0-24" in ev.state and "100.64.12.0-24" not in ev.state
            assert m.in_sync
            # An annotation flannel does not read: no event. Then a new VtepMAC: one LeaseAdded.
            await asyncio.to_thread(api.annotate, "peer1", {"example.com/unrelated": "x"})
            await asyncio.to_thread(api.annotate, "peer1",
                                    {P + "backend-data": '{"VNI":1,"VtepMAC":"0a:00:00:00:00:99"}'})
            batch = await ev.next()
            assert len(batch) == 1 and isinstance(batch[0], LeaseAdded)
            assert batch[0].lease.attrs.vxlan_data().vtep_mac == "0a:00:00:00:00:99"
            # plain1 gets flannel: added. peer1 is deleted: removed.
            await asyncio.to_thread(api.annotate, "plain1", {
                P + "kube-subnet-manager": "true", P + "backend-type": "vxlan", P + "public-ip": "198.18.0.12",
                P + "backend-data": '{"VNI":1,"VtepMAC":"0a:00:00:00:00:12"}'})
            await ev.until(lambda s: "100.64.12.0-24" in s)
            await asyncio.to_thread(api.delete_node, "peer1")
            batch = await ev.next()
            assert batch == [LeaseRemoved("100.64.11.0-24")]
        finally:
            await ev.close()

    asyncio.run(run())


def test_410_relists_and_loses_no_event(tmp_path: Path, net_conf: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A watch resumed from a compacted version gets 410 Gone; the relist (one LeaseResync) carries
    every change made since that version. The consumer not pulling keeps the manager from watching
    (lease_events is a generator), so the changes land while no watch is open."""
    caplog.set_level(logging.INFO, logger="pyflannel")
    with ks.running_apiserver(tmp_path / "api", watch_cache=False) as api:
        kc = ks.flannel_kubeconfig(api, tmp_path / "kc")
        for i in (1, 2, 3):
            api.create_flannel_node(f"g{i}", f"100.64.{20 + i}.0/24", f"198.18.0.{20 + i}", f"0a:00:00:00:00:2{i}")

        async def run() -> None:
            m = manager(kc, net_conf, "g1")
            await m.get_network_config()
            ev = Events(m)
            try:
                await ev.next()
                assert keys(ev.state) == {"100.64.21.0-24", "100.64.22.0-24", "100.64.23.0-24"}
                await asyncio.to_thread(api.annotate, "g1", {P + "public-ip": "198.18.1.21"})
                await asyncio.to_thread(api.delete_node, "g2")
                await asyncio.to_thread(api.create_flannel_node, "g4", "100.64.24.0/24", "198.18.0.24",
                                        "0a:00:00:00:00:24")
                await asyncio.to_thread(api.annotate, "g3",
                                        {P + "backend-data": '{"VNI":1,"VtepMAC":"0a:00:00:00:00:33"}'})
                for i in range(3):  # move etcd's revision past the last node event, then compact
                    await asyncio.to_thread(api.admin, "POST", "/api/v1/namespaces/default/configmaps",
                                            {"metadata": {"name": f"bump{i}"}, "data": {}})
                await asyncio.to_thread(api.compact_etcd)
                resync = await ev.next()
                assert isinstance(resync[0], LeaseResync), resync
                assert m.relists == 2
                assert keys(ev.state) == {"100.64.21.0-24", "100.64.23.0-24", "100.64.24.0-24"}
                assert ev.state["100.64.23.0-24"].attrs.vxlan_data().vtep_mac == "0a:00:00:00:00:33"
                assert str(ev.state["100.64.21.0-24"].attrs.public_ip) == "198.18.1.21"
                # and the watch after the relist goes on delivering
                await asyncio.to_thread(api.delete_node, "g4")
                await ev.until(lambda s: "100.64.24.0-24" not in s)
            finally:
                await ev.close()

        asyncio.run(run())
    gone = [r.getMessage() for r in caplog.records if "listing the nodes again" in r.getMessage()]
    assert len(gone) == 1 and "410 Gone" in gone[0] and "too old" in gone[0], gone
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_apiserver_down_30s_loses_nothing_and_catches_up(tmp_path: Path, net_conf: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyflannel")
    with ks.running_apiserver(tmp_path / "api") as api:
        kc = ks.flannel_kubeconfig(api, tmp_path / "kc")
        api.create_flannel_node("o1", "100.64.31.0/24", "198.18.0.31", "0a:00:00:00:00:31")
        api.create_flannel_node("o2", "100.64.32.0/24", "198.18.0.32", "0a:00:00:00:00:32")

        async def run() -> None:
            m = manager(kc, net_conf, "o1")
            await m.get_network_config()
            ev = Events(m)
            try:
                await ev.next()
                assert keys(ev.state) == {"100.64.31.0-24", "100.64.32.0-24"}
                await asyncio.to_thread(api.stop)
                pull = asyncio.create_task(ev.next(120))
                await asyncio.sleep(30)
                assert not m.in_sync
                assert not pull.done()  # nothing was delivered: in particular no removal
                await asyncio.to_thread(api.start)
                await asyncio.to_thread(api.create_flannel_node, "o3", "100.64.33.0/24", "198.18.0.33",
                                        "0a:00:00:00:00:33")
                await pull
                await ev.until(lambda s: "100.64.33.0-24" in s, 60)
                assert keys(ev.state) == {"100.64.31.0-24", "100.64.32.0-24", "100.64.33.0-24"}
                assert m.in_sync
                assert not any(isinstance(e, LeaseRemoved) for b in ev.batches for e in b)
            finally:
                await ev.close()

        asyncio.run(run())
    warn = [r for r in caplog.records if r.levelno == logging.WARNING and "node watch" in r.getMessage()]
    info = [r for r in caplog.records if "node watch" in r.getMessage() and "recovered after" in r.getMessage()]
    assert len(warn) == 1 and len(info) == 1
