"""Python scripts the netns tests run inside a node's namespace, where netlink sockets see that node's kernel.

Several tests need the same start: a ``flannel.1`` vxlan device on the node's ``eth0``, as flanneld makes it
(no learning). ``run_with_vxlan`` runs a script after that start, with ``eth0``, ``dev`` (flannel.1's index)
and ``idx`` (name -> index) defined, and returns the JSON the script printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

VXLAN_DEVICE = r'''
from pyroute2 import IPRoute
with IPRoute() as ipr:
    eth0 = ipr.link_lookup(ifname="eth0")[0]
    ipr.link("add", ifname="flannel.1", kind="vxlan", vxlan_id=1, vxlan_link=eth0,
             vxlan_local="198.18.0.11", vxlan_learning=0)
    dev = ipr.link_lookup(ifname="flannel.1")[0]
    ipr.link("set", index=dev, state="up")
idx = {"flannel.1": dev, "eth0": eth0}
'''


def run_with_vxlan(ns: str, script: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``script`` after ``VXLAN_DEVICE`` in ``ns``, ``args`` as sys.argv[1:]; its stdout is one JSON object."""
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", VXLAN_DEVICE + script, *args],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)  # type: ignore[no-any-return]
