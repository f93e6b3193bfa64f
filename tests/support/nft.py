"""nftables helpers for the root tests and the firewall benchmark: read tables as JSON, drive a Firewall in a netns.

The Firewall adapters run ``nft`` / ``iptables-restore`` in the caller's network namespace, and the test
process lives in the root namespace. So each operation runs in a short Python child started with
``ip netns exec``; it prints one JSON line back. Reading tables goes through ``nft -j`` only.

:func:`hidden_iptables` builds the command line for a child that sees a ``/usr/sbin`` without any
iptables binary (a private mount namespace with a filtered copy bind-mounted over it), to show what a
host without iptables looks like to the probe.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.cluster import child_env

REPO = Path(__file__).resolve().parents[2]
GO_FLANNELD = REPO / "build" / "testdeps" / "flanneld"
FLANNEL_TABLES = ("flannel-ipv4", "flannel-ipv6")
NFT_MISSING = "needs nft (Debian package nftables)"
IPTABLES_MISSING = "needs iptables-restore (Debian package iptables)"


def run_in(ns: str, argv: Sequence[str], *, input: str | None = None, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True,
                          timeout=timeout, env=child_env(), check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{ns}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc


def ruleset(ns: str) -> dict[str, Any]:
    """``nft -j list ruleset`` in ``ns``, parsed."""
    doc: dict[str, Any] = json.loads(run_in(ns, ["nft", "-j", "list", "ruleset"]).stdout)
    return doc


def tables_of(doc: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Group a ruleset's objects by (family, table), handles removed, in listing order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for obj in doc["nftables"]:
        ((kind, body),) = obj.items()
        if kind == "metainfo":
            continue
        key = (body["family"], body["name"] if kind == "table" else body["table"])
        out.setdefault(key, []).append({kind: {k: v for k, v in body.items() if k != "handle"}})
    return out


def flannel_tables(ns: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {k: v for k, v in tables_of(ruleset(ns)).items() if k[1] in FLANNEL_TABLES}


def spec_code(spec: dict[str, Any]) -> str:
    """Python source for a FirewallSpec from plain JSON-able fields (networks as strings)."""
    return (
        "from ipaddress import ip_network\n"
        "from pyflannel.ports import FirewallSpec\n"
        f"_raw = {spec!r}\n"
        "_nets = ('network', 'subnet', 'network6', 'subnet6')\n"
        "spec = FirewallSpec(**{k: (ip_network(v) if k in _nets and v else v) for k, v in _raw.items()})\n"
    )


def firewall(ns: str, mode: str, op: str, spec: dict[str, Any] | None = None,
             prefix: Sequence[str] = ()) -> Any:
    """Run ``op`` ("ensure", "missing", "cleanup", "available", "present") of the ``mode`` Firewall in ``ns``.

    Returns the operation's result (JSON-decoded). ``prefix`` wraps the child command (e.g.
    :func:`hidden_iptables`).
    """
    if mode != "nftables":
        raise ValueError(f"firewall mode {mode!r}: only 'nftables' is driven from here")
    code = (
        "import json, sys\n"
        "from pyflannel.adapters.nftables import NftablesFirewall\n"
        + spec_code(spec or {"network": None, "subnet": None})
        + "fw = NftablesFirewall()\n"
        f"op = {op!r}\n"
        "res = getattr(fw, op)(spec) if op in ('ensure', 'missing') else getattr(fw, op)()\n"
        "print(json.dumps(res))\n"
    )
    out = run_in(ns, [*prefix, sys.executable, "-c", code]).stdout
    return json.loads(out.strip().splitlines()[-1])


def python_in(ns: str, code: str, prefix: Sequence[str] = ()) -> Any:
    """Run Python ``code`` in ``ns``; its last stdout line is JSON-decoded and returned."""
    out = run_in(ns, [*prefix, sys.executable, "-c", code]).stdout
    return json.loads(out.strip().splitlines()[-1])


_HIDE = ("iptables", "ip6tables", "xtables", "arptables", "ebtables")


def hidden_iptables() -> list[str]:
    """argv prefix: run the rest in a private mount namespace whose /usr/sbin has no *tables binaries.

    ``unshare -m`` gives the child its own mount table (propagation private, so nothing leaks back).
    The real /usr/sbin is first bind-mounted aside (under a private tmpfs on /mnt), then a directory of
    symlinks to everything except the iptables family goes over /usr/sbin (on Debian 12 /sbin is a
    symlink into /usr, so it is covered too). ``nft`` stays.
    """
    script = (
        # A tmpfs over /mnt, private to this mount namespace: nothing is created on the host.
        "set -e; mount -t tmpfs pyflannel-sbin /mnt; mkdir /mnt/real /mnt/view; "
        "mount --bind /usr/sbin /mnt/real; "
        "for f in /mnt/real/*; do b=${f##*/}; case $b in "
        + "|".join(f"{h}*" for h in _HIDE)
        + ") ;; *) ln -s \"$f\" /mnt/view/$b;; esac; done; "
        "mount --bind /mnt/view /usr/sbin; exec \"$@\""
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "hidden-iptables"]


def iptables_restore(ns: str, payload: str, binary: str = "iptables-restore") -> None:
    run_in(ns, [binary, "-w", "5", "--noflush"], input=payload)


def iptables_save(ns: str, binary: str = "iptables-save") -> str:
    return run_in(ns, [binary]).stdout


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def shell_quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# --- traffic probes for the daemon-level tests (tests/netns/test_nftables_daemon.py) ----------------------

# A TCP server that answers every connection with the source address it saw (one line) and logs it.
_ECHO_SOURCE = """\
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print('ready', flush=True)
while True:
    c, a = s.accept()
    with c:
        c.sendall((a[0] + '\\n').encode())
    print(a[0], flush=True)
"""

# A client that opens a new TCP connection (new source port, so a new conntrack entry and a fresh NAT
# decision) every ``interval`` s until SIGTERM, then prints a JSON summary: how many connections were tried,
# and the source address the server saw (or the error) for every one that did not see ``expect``.
_FLOWS = """\
import json, signal, socket, sys, time
dst, port, expect, interval = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
print('ready', flush=True)
tried, seen, bad = 0, {}, []
while not stop:
    t0 = time.monotonic()
    tried += 1
    try:
        with socket.create_connection((dst, port), timeout=3) as c:
            c.settimeout(3)
            src = c.makefile().readline().strip()
    except OSError as e:
        src = 'error: ' + str(e)
    seen[src] = seen.get(src, 0) + 1
    if src != expect:
        bad.append([round(time.time(), 3), src])
    time.sleep(max(0.0, interval - (time.monotonic() - t0)))
print(json.dumps({'tried': tried, 'seen': seen, 'bad': bad}), flush=True)
"""


def _popen_ready(ns: str, code: str, args: Sequence[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"{ns}: helper did not start: {line!r} {err.strip()[-400:]}")
    return proc


class SourceEcho:
    """A TCP server in ``ns`` on ``ip:port`` telling each client the source address it saw (NAT or not)."""

    def __init__(self, ns: str, ip: str, port: int = 18080) -> None:
        self.ns, self.ip, self.port = ns, ip, port
        self.proc = _popen_ready(ns, _ECHO_SOURCE, [ip, str(port)])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)


def seen_source(ns: str, dst: str, port: int = 18080, attempts: int = 5) -> str:
    """Connect from ``ns`` to a :class:`SourceEcho` at ``dst``; the source address the server saw."""
    from support.cluster import check_destination

    if ":" in dst:
        from ipaddress import IPv6Address, IPv6Network

        if not any(IPv6Address(dst) in IPv6Network(n) for n in ("fd18::/16", "fd64::/16")):
            raise ValueError(f"refusing to connect to {dst}: outside fd18::/16 and fd64::/16")
    else:
        check_destination(dst)
    code = ("import socket, sys, time\n"
            "for i in range(int(sys.argv[3])):\n"
            "    try:\n"
            "        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:\n"
            "            c.settimeout(3); print(c.makefile().readline().strip()); break\n"
            "    except OSError as e:\n"
            "        err = e; time.sleep(0.5)\n"
            "else:\n"
            "    sys.exit(f'no answer from {sys.argv[1]}: {err}')\n")
    return run_in(ns, [sys.executable, "-c", code, dst, str(port), str(attempts)]).stdout.strip()


class FlowProbe:
    """New TCP connections from ``ns`` to a :class:`SourceEcho` every ``interval`` s, until :meth:`stop`.

    ``stop()`` returns ``{"tried": n, "seen": {source-or-error: count}, "bad": [[time, source], ...]}``,
    ``bad`` listing every connection whose server did not see ``expect`` as the source.
    """

    def __init__(self, ns: str, dst: str, expect: str, port: int = 18080, interval: float = 0.1) -> None:
        from support.cluster import check_destination

        check_destination(dst)
        self.proc = _popen_ready(ns, _FLOWS, [dst, str(port), expect, str(interval)])

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=15)
        lines = out.strip().splitlines()
        if not lines:
            raise AssertionError(f"flow probe printed nothing: {err.strip()[-400:]}")
        res: dict[str, Any] = json.loads(lines[-1])
        return res


def iptables_flannel_chains(ns: str) -> list[str]:
    """The FLANNEL-* chains iptables(-nft) shows in ``ns``, IPv4 and IPv6 (``iptables-save`` per family)."""
    found: list[str] = []
    for binary in ("iptables-save", "ip6tables-save"):
        if not have(binary):
            continue
        for line in run_in(ns, [binary]).stdout.splitlines():
            if line.startswith(":FLANNEL-"):
                found.append(f"{binary}: {line.split()[0][1:]}")
    return found


class TimedPing:
    """``ping -D -O -i interval`` from ``ns`` in the background; :meth:`stop` says which sequence numbers got
    no reply and when they were sent (``ping -D`` wall-clock times, comparable with flanneld's log)."""

    def __init__(self, ns: str, dst: str, interval: float = 0.2) -> None:
        from support.cluster import check_destination

        check_destination(dst)
        self.interval = interval
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-D", "-O", "-i", f"{interval:g}",
                                      "-W", "1", dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=child_env())

    def stop(self) -> dict[str, Any]:
        """``{"sent": n, "lost": [[seq, sent-at], ...]}``; the last 2 s of probes are not judged (still in flight)."""
        import re
        import signal
        import time

        time.sleep(1.5)  # let the replies to the last judged probes arrive before the summary
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        sent_at: dict[int, float] = {}
        replied: set[int] = set()
        for line in out.splitlines():
            m = re.match(r"\[(\d+\.\d+)\] (?:\d+ bytes from .*icmp_seq=(\d+)|no answer yet for icmp_seq=(\d+))", line)
            if not m:
                continue
            ts = float(m.group(1))
            if m.group(2):
                seq = int(m.group(2))
                replied.add(seq)
                sent_at.setdefault(seq, ts)
            else:
                seq = int(m.group(3))
                sent_at.setdefault(seq, ts - self.interval)  # -O prints it when the next probe goes out
        m = re.search(r"(\d+) packets transmitted", out)
        if not m:
            raise AssertionError(f"ping printed no summary: {out[-300:]}")
        transmitted = int(m.group(1))
        judged = range(1, max(1, transmitted - int(2 / self.interval)) + 1)
        lost = [[seq, round(sent_at.get(seq, 0.0), 3)] for seq in judged if seq not in replied]
        return {"sent": len(judged), "lost": lost}


def wallclock(ts: float) -> str:
    """``HH:MM:SS.mmm`` local time, as flanneld's log prints it."""
    import time

    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
