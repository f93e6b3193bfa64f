"""A node leaves the cluster (its daemon stops and its lease is deleted): the nodes of the other
implementation remove its route, neighbour and FDB entry, and keep everything else.

Go flanneld node leaving -> the pyflannel nodes clean up; pyflannel node leaving -> the Go node (and the
other pyflannel node) clean up.
"""

from __future__ import annotations

import json

import pytest
from support import checks

from .conftest import Mixed, complaints
from .pings import format_matrix, ping_matrix


@pytest.mark.parametrize("side", ["go", "py"])
def test_leaving_node_entries_removed_by_the_other_side(mixed, side: str) -> None:
    m: Mixed = mixed(pods=1)
    c = m.c
    leaver = (m.go if side == "go" else m.py)[0]
    stay = [n for n in c.nodes if n is not leaver]
    ls = checks.leases(c)
    (key,) = [k for k, v in ls.items() if json.loads(v)["PublicIP"] == leaver.lan_ip]
    mac = json.loads(ls[key])["BackendData"]["VtepMAC"]
    vtep = key.rsplit("/", 1)[-1].split("-")[0]

    assert m.stop(leaver) == 0
    c.etcdctl("del", key)

    def cleaned(n) -> bool:
        k = checks.kernel(n.ns)
        return (
            k == checks.expected(c, n)  # exactly the remaining leases: nothing of the leaver, nothing else lost
            and not any(e[0] == mac for e in k["fdb"])
            and not any(e[0] == vtep for e in k["neigh"])
        )

    for n in stay:
        checks.wait_for(lambda n=n: cleaned(n), 30, f"{m.label(n)} to remove {m.label(leaver)}'s entries")
    # The nodes that stay still reach each other.
    leaver.pods.clear()
    matrix = ping_matrix(c)
    text = format_matrix(m, matrix)
    assert all(matrix.values()), f"after {m.label(leaver)} left:\n{text}"
    for n in stay:  # a departure is routine: no error lines on either implementation
        assert not complaints(n), f"{m.label(n)}: {complaints(n)}"
