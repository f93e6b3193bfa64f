"""Drive a WireguardBackend inside one node namespace, one JSON request per line on stdin.

Why a helper process: WireGuard state is per network namespace, and wireguard-go's UAPI socket lives at a
fixed path (/var/run/wireguard/<dev>.sock) that is shared by every namespace of the host, so three nodes'
``flannel-wg`` sockets would collide. Started with ``ip netns exec <node> python -m support.wgagent``, this
process already has a mount namespace of its own (``ip netns exec`` unshares one); it mounts a tmpfs on
/run/wireguard there, and the wireguard-go processes it starts inherit that private directory. The test
talks to the backend exactly as the daemon would: setup, lease attrs, own lease, peer entries diffed and
applied, key check, status, close.

Requests: ``{"call": "<name>", ...args}``; replies: ``{"ok": <result>}`` or ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import traceback
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.adapters.wireguard import link_index
from pyflannel.adapters.wireguard_backend import WireguardBackend
from pyflannel.core.config import parse_config
from pyflannel.core.lease import Lease, parse_lease_attrs
from pyflannel.core.plan import diff
from pyflannel.ports import Uplink

#: argv prefix for ``Cluster.start_flanneld(wrapper=...)``: a private mount namespace (``unshare -m``, no
#: propagation back to the host) with a tmpfs on /run/wireguard, so each node's wireguard-go puts its UAPI
#: socket in a directory of its own. ``unshare`` and ``sh`` both exec, so the pid stays flanneld's.
PRIVATE_WG_DIR = (
    "unshare", "-m", "--propagation", "private", "sh", "-c",
    'mkdir -p /run/wireguard && mount -t tmpfs -o mode=0700 pyflannel-wg /run/wireguard && exec "$@"',
    "pyflannel-wg",
)  # fmt: skip


def wg_dump(pid: int, dev: str = "flannel-wg") -> list[list[str]]:
    """``wg show <dev> dump`` as seen by process ``pid`` (its network and mount namespace, hence its socket).

    Rows are wg's tab-separated fields: the first is the device (private key, public key, port, fwmark),
    each further row a peer (public key, psk, endpoint, allowed ips, last handshake, rx, tx, keepalive).
    [] if the device or its socket is not there.
    """
    proc = subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "wg", "show", dev, "dump"],
                          capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        return []
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


#: Go flanneld v0.28.9's error (and the skip reason) on a kernel without the wireguard module.
NO_KERNEL_WG = "could not create wireguard interface: operation not supported"


def kernel_wireguard_missing() -> str | None:
    """None if this kernel can create a ``wireguard`` link, else :data:`NO_KERNEL_WG`.

    Probed the way Go flanneld fails: an rtnetlink ``add`` of kind wireguard, here in a scratch network
    namespace (created and removed with pyroute2) so nothing of the host's is touched.
    """
    import errno
    import secrets

    from pyroute2 import IPRoute, NetlinkError, netns

    name = f"pfwgprobe{secrets.token_hex(3)}"
    netns.create(name)
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            try:
                ipr.link("add", ifname="wgprobe", kind="wireguard")
            except NetlinkError as e:
                if e.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    return NO_KERNEL_WG
                raise
        return None
    finally:
        netns.remove(name)


def _lease(d: dict[str, Any]) -> Lease:
    return Lease(
        IPv4Network(d["subnet"]),
        parse_lease_attrs(d["attrs"]),
        subnet6=IPv6Network(d["subnet6"]) if d.get("subnet6") else None,
    )


class Agent:
    def __init__(self) -> None:
        self.be: WireguardBackend | None = None
        self.key_changes = 0

    def _be(self) -> WireguardBackend:
        assert self.be is not None, "setup first"
        return self.be

    async def call(self, req: dict[str, Any]) -> Any:
        name = req["call"]
        if name == "setup":
            cfg = parse_config(req["config"])

            def bump() -> None:
                self.key_changes += 1

            self.be = WireguardBackend(cfg, key_file=req["key_file"], driver=req.get("driver", "auto"),
                                       on_key_change=bump)
            up = Uplink(
                name=req["uplink"],
                index=req.get("uplink_index") or await asyncio.to_thread(link_index, req["uplink"]) or 0,
                mtu=req["mtu"],
                iface_addr=IPv4Address(req["ip"]),
                public_ip=IPv4Address(req["ip"]),
                iface_addr6=IPv6Address(req["ip6"]) if req.get("ip6") else None,
                public_ipv6=IPv6Address(req["ip6"]) if req.get("ip6") else None,
            )
            await self.be.setup(up)
            self.uplink = up
            return {"attrs": self.be.lease_attrs(up).to_json(), "public_key": self.be.public_key,
                    "mtu": self.be.mtu, "driver": self.be.driver.kind if self.be.driver else ""}
        be = self._be()
        if name == "on_lease":
            await be.on_lease(_lease(req["lease"]))
            return True
        if name == "attrs":
            return be.lease_attrs(self.uplink).to_json()
        if name == "peers":
            desired = []
            rejected = []
            for d in req["leases"]:
                pe = be.peer_entries(_lease(d))
                desired.extend(pe.entries)
                if pe.rejected:
                    rejected.append(pe.rejected)
            actual = await be.observe_peers()
            ops = diff(desired, actual)
            failed = await be.apply_peers(ops)
            return {"ops": [str(o) for o in ops], "failed": [f"{o}: {why}" for o, why in failed],
                    "rejected": rejected}
        if name == "check_key":
            return {"changed": await be.check_key(), "public_key": be.public_key, "calls": self.key_changes}
        if name == "check_devices":
            return await be.check_devices(_lease(req["lease"]))
        if name == "status":
            return [
                {"name": s.name, "listen_port": s.listen_port, "public_key": s.public_key,
                 "peers": [p.__dict__ if hasattr(p, "__dict__") else {f: getattr(p, f) for f in p.__slots__}
                           for p in s.peers]}
                for s in await be.status()
            ]
        if name == "close":
            await be.close()
            return True
        raise ValueError(f"unknown call {name}")


def main() -> None:
    os.makedirs("/run/wireguard", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "wgagent", "/run/wireguard"], check=True)
    agent = Agent()
    loop = asyncio.new_event_loop()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out: dict[str, Any] = {"ok": loop.run_until_complete(agent.call(json.loads(line)))}
        except Exception as e:  # reported to the test, which fails with it; the traceback goes to the log
            traceback.print_exc()
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
