"""``flannelctl doctor``: one line per check, each with a fix hint; exit 1 if any check fails.

Levels: ``ok``; ``warn`` for what breaks only some setups (strict rp_filter, no
br_netfilter without Kubernetes services, tx checksum offload on an old kernel); ``fail`` for
what breaks pod traffic on this node or to it; ``skip`` when a check cannot run (no etcd, not
root). Every check is a pure function of ``NodeFacts``, so each is unit-tested with made-up
facts, and the netns tests break real nodes the same ways.

The VXLAN checksum check is flannel issue #1279: with NAT in the path on kernels before 5.7
(netfilter fix ea64d8d6c675) the kernel corrupts the UDP checksum of VXLAN packets, the
receiver logs ``UDP: bad checksum`` and drops them (about 63 s stalls for Kubernetes services).
flannel never changes it; the usual workaround is ``ethtool -K flannel.1
tx-checksum-ip-generic off``.

Firewall mode: flanneld writes its rules either as iptables chains (FLANNEL-POSTRTG, FLANNEL-FWD) or
as the nftables tables flannel-ipv4/flannel-ipv6 (``EnableNFTables``, docs/firewall.md). Which one is
active is read from the kernel, not from the config: ``firewall_mode`` reports it (and fails when a
node holds both), and the forward and masquerade checks look for their rules in that mode.

Backends: the checks run are chosen by the backend type in the network config (``checks_for``).
A check that does not apply to the backend is not printed at all (no SKIP line): vxlan keeps its
17 checks and their output exactly; host-gw replaces the VXLAN device, drift, reachability and
checksum checks with ``hostgw_l2`` (every peer PublicIP inside one of the uplink's connected
prefixes, and ``route get`` answers the uplink with no gateway) and ``hostgw_routes``; wireguard
with ``wg_device``, ``wg_listen_port``, ``wg_public_key``, ``wg_key_file``, ``wg_peers`` and
``wg_handshake`` (180 s: WireGuard re-keys every 120 s while traffic flows, so an older handshake
means no traffic or a blocked port). An IPv6 config adds ``ipv6_forwarding`` and ``ipv6_rules``.
SKIP remains what it was: a check that applies but cannot run.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pyflannel.core import nft_rules
from pyflannel.core.backends import hostgw
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.rules import FWD_CHAIN, MASQ_CHAIN, chain_lines, forward_chain, has_jump, masq_chain, quote
from pyflannel.ctl import status
from pyflannel.ctl.node import NodeFacts
from pyflannel.ctl.output import duration

Level = Literal["ok", "warn", "fail", "skip"]
CHECKSUM_FIXED = (5, 7)
SUPPORTED = ("vxlan", hostgw.BACKEND_TYPE, wgcore.BACKEND_TYPE)
HANDSHAKE_MAX_AGE = 180


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    hint: str = ""


def _sysctl_hint(name: str, value: str) -> str:
    return f"sysctl -w {name}={value} (and persist it in /etc/sysctl.d/)"


def check_config(f: NodeFacts, opts: Any) -> Check:
    if f.etcd_error and f.config is None:
        return Check("config", "skip", f"etcd: {f.etcd_error}")
    if f.config is None:
        return Check("config", "fail", f.config_error or "no network config",
                     "flannelctl config set '{\"Network\": \"<cidr>\", \"Backend\": {\"Type\": \"vxlan\"}}'")
    if f.config.backend_type not in SUPPORTED:
        return Check("config", "warn", f"backend {f.config.backend_type!r}: pyflannel nodes run "
                     + ", ".join(SUPPORTED), "flannelctl config set with \"Backend\": {\"Type\": \"vxlan\"}")
    v6 = f", IPv6Network {f.config.ipv6_network}" if f.ipv6 else ""
    if f.config.ipv6_only:
        return Check("config", "ok", f"IPv6-only (EnableIPv4=false): IPv6Network {f.config.ipv6_network}, "
                     f"IPv6SubnetLen {f.config.ipv6_subnet_len}, backend {f.config.backend_type}")
    return Check("config", "ok", f"Network {f.config.network}, SubnetLen {f.config.subnet_len}{v6}, "
                 f"backend {f.config.backend_type}")


def check_ip_forward(f: NodeFacts, opts: Any) -> Check:
    v = f.sysctls.get("net.ipv4.ip_forward")
    if v is None:
        return Check("ip_forward", "skip", "net.ipv4.ip_forward is not readable")
    if v != "1":
        return Check("ip_forward", "fail", f"net.ipv4.ip_forward = {v}: the node does not route pod traffic",
                     _sysctl_hint("net.ipv4.ip_forward", "1"))
    return Check("ip_forward", "ok", "net.ipv4.ip_forward = 1")


def check_br_netfilter(f: NodeFacts, opts: Any) -> Check:
    v = f.sysctls.get("net.bridge.bridge-nf-call-iptables")
    if v is None:
        return Check("br_netfilter", "warn", "br_netfilter is not loaded: bridged pod traffic bypasses iptables "
                     "(Kubernetes services break)", "modprobe br_netfilter; echo br_netfilter > "
                     "/etc/modules-load.d/br_netfilter.conf")
    if v != "1":
        return Check("br_netfilter", "warn", f"net.bridge.bridge-nf-call-iptables = {v}: bridged pod traffic "
                     "bypasses iptables", _sysctl_hint("net.bridge.bridge-nf-call-iptables", "1"))
    return Check("br_netfilter", "ok", "br_netfilter loaded, bridge-nf-call-iptables = 1")


def check_rp_filter(f: NodeFacts, opts: Any) -> Check:
    all_v = f.sysctls.get("net.ipv4.conf.all.rp_filter")
    strict = []
    seen = []
    for dev in (f.device.name if f.device else None, f.uplink.name if f.uplink else None):
        if not dev:
            continue
        v = f.sysctls.get(f"net.ipv4.conf.{dev}.rp_filter")
        if v is None or all_v is None:
            continue
        eff = max(int(v), int(all_v))  # the kernel uses the larger of "all" and the device's value
        seen.append(f"{dev}={eff}")
        if eff == 1:
            strict.append(dev)
    if not seen:
        return Check("rp_filter", "skip", "no flannel device or uplink to check")
    if strict:
        return Check("rp_filter", "warn", f"strict reverse-path filtering on {', '.join(strict)} drops pod traffic "
                     "that returns on another interface (DirectRouting, multiple NICs)",
                     "; ".join(_sysctl_hint(f"net.ipv4.conf.{d}.rp_filter", "2") for d in strict))
    return Check("rp_filter", "ok", "rp_filter " + ", ".join(seen) + " (0 off, 2 loose)")


def check_mtu(f: NodeFacts, opts: Any) -> Check:
    m = status.mtu_report(f)
    if f.backend == hostgw.BACKEND_TYPE:
        if m["uplink_mtu"] is None or m["subnet_env_mtu"] is None:
            return Check("mtu", "skip", "need both the uplink and FLANNEL_MTU in the subnet file")
        if not m["consistent"]:
            return Check("mtu", "fail", "; ".join(m["problems"]), "restart flanneld (it writes the uplink's MTU), "
                         "then restart the containers so their veths get FLANNEL_MTU")
        return Check("mtu", "ok", f"uplink {m['uplink']} {m['uplink_mtu']}, subnet.env {m['subnet_env_mtu']}")
    if m["device_mtu"] is None or m["subnet_env_mtu"] is None:
        what = "VXLAN" if f.backend == "vxlan" else "WireGuard"
        return Check("mtu", "skip", f"need both the {what} device and FLANNEL_MTU in the subnet file")
    if not m["consistent"]:
        fix = f"ip link set {m['device']} mtu {m['expected']}" if m["expected"] else "restart flanneld"
        return Check("mtu", "fail", "; ".join(m["problems"]),
                     f"{fix}, then restart the containers so their veths get FLANNEL_MTU")
    return Check("mtu", "ok", f"uplink {m['uplink']} {m['uplink_mtu']}, {m['device']} {m['device_mtu']}, "
                 f"subnet.env {m['subnet_env_mtu']}")


def check_device(f: NodeFacts, opts: Any) -> Check:
    d = f.device
    if f.kernel_error:
        return Check("vxlan_device", "skip", f.kernel_error)
    if d is None:
        return Check("vxlan_device", "fail", f"{f.device_name} does not exist", "start flanneld (it creates the "
                     "device), and check its log")
    problems = []
    if not d.up:
        problems.append("is down")
    sub = f.own_subnet
    if sub is not None and f"{sub.network_address}/32" not in d.addresses:
        problems.append(f"lacks address {sub.network_address}/32 (has {', '.join(d.addresses) or 'none'})")
    if f.own is not None:
        try:  # an IPv6-only lease publishes only BackendV6Data (its device is flannel-v6.<VNI>)
            mac = (f.own.attrs.vxlan_v6_data() if f.own.subnet is None else f.own.attrs.vxlan_data()).vtep_mac
        except ValueError:
            mac = None
        if mac and mac != d.mac.lower():
            problems.append(f"has MAC {d.mac} but the lease publishes VtepMAC {mac}")
    d6, v6 = f.device6, ""
    # Dual stack: flannel-v6.<VNI> too. (On an IPv6-only network it is the one device, checked above.)
    if f.ipv6 and f.vopts is not None and f.own is not None and f.own.subnet is not None:
        if d6 is None:
            problems.append(f"(EnableIPv6) {f.vopts.device6} does not exist")
        else:
            try:
                mac6 = f.own.attrs.vxlan_v6_data().vtep_mac
            except ValueError:
                mac6 = None
            if not d6.up:
                problems.append(f"{d6.name} is down")
            if mac6 and mac6 != d6.mac.lower():
                problems.append(f"{d6.name} has MAC {d6.mac} but the lease publishes v6 VtepMAC {mac6}")
            v6 = f"; {d6.name} up, local {d6.local}, MAC {d6.mac}"
    if problems:
        return Check("vxlan_device", "fail", f"{d.name} " + ", ".join(problems),
                     "flanneld repairs the device on its next pass; if it does not, restart flanneld")
    return Check("vxlan_device", "ok", f"{d.name} up, VNI {d.vni}, local {d.local}, port {d.port or 8472}, "
                 f"MAC {d.mac}{v6}")


def check_lease(f: NodeFacts, opts: Any) -> Check:
    if f.etcd_error:
        return Check("lease", "skip", f"etcd: {f.etcd_error}")
    if f.own is None:
        where = f"{f.own_subnet} (from {f.subnet_file})" if f.own_subnet else f"no {f.subnet_file}"
        return Check("lease", "fail", f"no lease in etcd for this node: {where}",
                     "start flanneld; it acquires a lease and writes the subnet file")
    if f.own.reserved:
        return Check("lease", "ok", f"{f.own.name} reserved for {f.own.owner_ip} (no TTL)")
    if f.own_ttl is None or f.own_ttl < 0:
        return Check("lease", "fail", f"the etcd lease behind {f.own.name} is gone",
                     "flanneld re-acquires it; if it is not running, start it")
    margin = 60 * int(getattr(opts, "subnet_lease_renew_margin", 60))
    if f.own_ttl < margin:
        return Check("lease", "warn", f"{f.own.name} expires in {f.own_ttl}s, inside the renew margin",
                     "flanneld should have renewed it: is it running and can it reach etcd?")
    return Check("lease", "ok", f"{f.own.name} for {f.own.owner_ip}, expires in {f.own_ttl}s")


def check_peers_kernel(f: NodeFacts, opts: Any) -> Check:
    if f.desired is None or f.actual is None:
        return Check("kernel_peers", "skip", "needs the lease, the config and the VXLAN device")
    d = status.drift(f)
    if d:
        more = f" (+{len(d) - 3} more)" if len(d) > 3 else ""
        return Check("kernel_peers", "fail",
                     f"{len(d)} kernel entries differ from the leases: " + "; ".join(d[:3]) + more,
                     "flanneld fixes drift within -resync-period; if it persists, look for netlink errors in its log")
    return Check("kernel_peers", "ok", f"{len(f.peers)} peers, every route, neighbour and FDB entry in place")


def check_peers_reachable(f: NodeFacts, opts: Any) -> Check:
    if not f.peers:
        return Check("peer_reachability", "skip" if f.own is None else "ok", "no peers")
    up = f.uplink
    port = (f.device.port if f.device and f.device.port else 8472)
    bad = []
    for p in f.peers:
        ip = str(p.lease.owner_ip)
        oif, dev = f.peer_routes.get(ip, (None, None))
        if oif is None:
            bad.append(f"no route to {ip}")
        elif up is not None and oif != up.index:
            bad.append(f"route to {ip} leaves via {dev}, not the VXLAN underlay {up.name}")
    if bad:
        return Check("peer_reachability", "fail", "; ".join(bad),
                     f"add a route to the peers' PublicIPs via {up.name if up else 'the uplink'}, or start flanneld "
                     "with -iface set to the interface that reaches them")
    if f.udp_ports and port not in f.udp_ports:
        return Check("peer_reachability", "fail", f"no local UDP socket on the VXLAN port {port}",
                     "recreate the VXLAN device (restart flanneld)")
    return Check("peer_reachability", "ok", f"routes to all {len(f.peers)} peer PublicIPs via "
                 f"{up.name if up else '?'}, UDP {port} open locally (peers' firewalls not probed)")


def check_duplicate_ips(f: NodeFacts, opts: Any) -> Check:
    if f.etcd_error:
        return Check("duplicate_public_ip", "skip", f"etcd: {f.etcd_error}")
    by_ip: dict[str, list[str]] = defaultdict(list)
    for le in f.leases:
        by_ip[str(le.owner_ip)].append(le.name)  # PublicIPv6 on an IPv6-only network (PublicIP is 0.0.0.0)
    dups = {ip: subs for ip, subs in by_ip.items() if len(subs) > 1}
    if dups:
        text = "; ".join(f"{ip} holds {', '.join(sorted(s))}" for ip, s in sorted(dups.items()))
        return Check("duplicate_public_ip", "fail", text, "give each node its own -public-ip (NAT'd hosts such as "
                     "Vagrant's 10.0.2.15 need -iface/-public-ip), then delete the stale key with "
                     "ETCDCTL_API=3 etcdctl del <key>")
    return Check("duplicate_public_ip", "ok", f"{len(by_ip)} leases, every PublicIP distinct")


def _owned_route(f: NodeFacts, r: Any) -> bool:
    if r.oif is not None and r.oif in f.backend_indexes():  # the VXLAN or WireGuard device
        return True
    own = f.own_subnet
    if own is not None and r.dst == own:  # the pod bridge's own subnet (docker0/cni0)
        return True
    return any(r.dst == le.subnet and r.gateway == le.attrs.public_ip for le in f.leases)  # DirectRouting


def check_network_overlap(f: NodeFacts, opts: Any) -> Check:
    net = f.config.network if f.config else None
    if net is None:
        return Check("network_overlap", "skip", "no valid network config")
    clash = [r.text for r in f.routes if r.dst.prefixlen > 0 and r.dst.overlaps(net) and not _owned_route(f, r)]
    own = f.own_subnet
    for lk in f.links:
        for a in lk.addrs:
            if a.ip in net and (own is None or a.ip not in own) and (f.device is None or lk.index != f.device.index):
                clash.append(f"address {a} on {lk.name}")
    if clash:
        return Check("network_overlap", "fail", f"the Network {net} overlaps host networks: " + "; ".join(clash[:5]),
                     "choose a Network that no host route or address uses (flannelctl config set), or remove "
                     "the conflicting route")
    return Check("network_overlap", "ok", f"no host route or address overlaps the Network {net}")


FirewallMode = Literal["iptables", "nftables", "both", "none", "unknown"]


def active_firewall(f: NodeFacts) -> FirewallMode:
    """Which mode's rules the kernel holds: flannel's iptables chains, its nftables tables, both or none."""
    ipt = any(f":{MASQ_CHAIN} " in t.get("nat", "") or f":{FWD_CHAIN} " in t.get("filter", "")
              for t in (f.iptables, f.ip6tables))  # an IPv6-only network has only ip6tables chains
    nft = any(v is not None for v in f.nftables.values())
    if ipt and nft:
        return "both"
    if ipt:
        return "iptables"
    if nft:
        return "nftables"
    if (f.iptables_error or not f.iptables) and (f.nftables_error or not f.nftables):
        return "unknown"
    return "none"


def check_firewall_mode(f: NodeFacts, opts: Any) -> Check:
    mode = active_firewall(f)
    wanted = getattr(f.config, "enable_nftables", None) if f.config else None
    if mode == "unknown":
        return Check("firewall_mode", "skip", f"iptables: {f.iptables_error or 'not read'}; "
                     f"nftables: {f.nftables_error or 'not read'}")
    if mode == "both":
        return Check("firewall_mode", "fail", f"both iptables chains ({MASQ_CHAIN}/{FWD_CHAIN}) and nftables tables "
                     f"({'/'.join(n for n, v in f.nftables.items() if v is not None)}): a node must hold one mode",
                     "restart flanneld (it removes the other mode's rules at start), or remove the stale ones: "
                     "nft delete table ip flannel-ipv4 / iptables -t nat -F FLANNEL-POSTRTG (docs/firewall.md)")
    if mode == "none":
        expected = (f.env or {}).get("FLANNEL_IPMASQ") == "true" or bool(getattr(opts, "iptables_forward_rules", True))
        if not expected:
            return Check("firewall_mode", "ok", "no flannel rules, none expected (no ip-masq, no forward rules)")
        return Check("firewall_mode", "warn", "no flannel rules in either mode (no FLANNEL-* iptables chains, no "
                     "flannel-ipv4/flannel-ipv6 tables)", "start flanneld; it writes them before subnet.env")
    if wanted is not None and (mode == "nftables") != wanted:
        return Check("firewall_mode", "warn", f"{mode} rules, but the network config says EnableNFTables="
                     f"{str(wanted).lower()}", "restart flanneld so it switches modes (docs/firewall.md)")
    where = ("tables " + ", ".join(n for n, v in f.nftables.items() if v is not None)) if mode == "nftables" else (
        f"chains {MASQ_CHAIN}, {FWD_CHAIN}")
    return Check("firewall_mode", "ok", f"{mode} ({where})")


def _nft_chain_problems(f: NodeFacts, chain: nft_rules.NftChain) -> list[str]:
    table = nft_rules.NftTable("ip", nft_rules.TABLE4, (chain,))
    listing = f.nftables.get(nft_rules.TABLE4)
    if listing is None:
        return [f"table {table.label} is missing"]
    return nft_rules.chain_diff(table, chain, listing)


def _check_forward_nft(f: NodeFacts, opts: Any) -> Check:
    net = f.config.network if f.config else None
    if net is None:
        return Check("forward_rules", "skip", "no valid network config")
    if not bool(getattr(opts, "iptables_forward_rules", True)):
        return Check("forward_rules", "ok", "nftables: not expected (-iptables-forward-rules=false)")
    problems = _nft_chain_problems(f, nft_rules.forward_chain("ip", net))
    if problems:
        return Check("forward_rules", "fail", "nftables: " + "; ".join(problems[:3]),
                     "flanneld re-creates the table within -iptables-resync seconds; if not, check its log for nft "
                     "errors and restart it")
    return Check("forward_rules", "ok", f"nftables: {nft_rules.TABLE4}/{nft_rules.FORWARD} accepts {net}")


def _check_masquerade_nft(f: NodeFacts, net: Any, own: Any) -> Check:
    problems = _nft_chain_problems(f, nft_rules.postrtg_chain("ip", net, own, random_fully=True))
    if problems and not _nft_chain_problems(f, nft_rules.postrtg_chain("ip", net, own, random_fully=False)):
        problems = []  # -ip-masq-fully-random-disable, or a kernel without fully-random
    if problems:
        return Check("masquerade", "fail", "nftables: " + "; ".join(problems[:3]),
                     "flanneld re-creates the table within -iptables-resync seconds; if not, check its log for nft "
                     "errors and restart it")
    return Check("masquerade", "ok", f"nftables: {nft_rules.TABLE4}/{nft_rules.POSTRTG} in place for {net} "
                 f"(own subnet {own})")


def _missing_rules(save: str, spec: Any) -> list[str]:
    have = chain_lines(save, spec.table, spec.chain)
    missing = []
    for rule in spec.rules:
        line = " ".join(["-A", spec.chain, *map(quote, rule)])
        alt = line.replace(" --random-fully", "") if "--random-fully" in line else line + " --random-fully"
        if line not in have and not (rule[-1] in ("MASQUERADE", "--random-fully") and alt in have):
            missing.append(line)
    if not has_jump(save, spec):
        missing.insert(0, f"-A {spec.parent} ... -j {spec.chain}")
    return missing


def check_forward(f: NodeFacts, opts: Any) -> Check:
    if active_firewall(f) == "nftables":
        return _check_forward_nft(f, opts)
    if f.iptables_error or "filter" not in f.iptables:
        return Check("forward_rules", "skip", f.iptables_error or "iptables-save not available")
    net = f.config.network if f.config else None
    if net is None:
        return Check("forward_rules", "skip", "no valid network config")
    save = f.iptables["filter"]
    policy = re.search(r"^:FORWARD (\w+)", save, re.M)
    pol = policy.group(1) if policy else "?"
    want = bool(getattr(opts, "iptables_forward_rules", True))
    missing = _missing_rules(save, forward_chain(net)) if want else []
    if missing:
        return Check("forward_rules", "fail",
                     f"FORWARD policy {pol}; {FWD_CHAIN} is incomplete ({len(missing)} missing): {missing[0]}",
                     "flanneld re-creates them within -iptables-resync seconds; if not, check its log for iptables "
                     "errors and restart it")
    if pol == "DROP" and not want:
        return Check("forward_rules", "fail", "FORWARD policy DROP and flanneld runs with "
                     "-iptables-forward-rules=false: pod traffic between nodes is dropped",
                     f"iptables -A FORWARD -s {net} -j ACCEPT; iptables -A FORWARD -d {net} -j ACCEPT, or run "
                     "flanneld with -iptables-forward-rules=true")
    return Check("forward_rules", "ok", f"FORWARD policy {pol}" + (f", {FWD_CHAIN} accepts {net}" if want else ""))


def check_masquerade(f: NodeFacts, opts: Any) -> Check:
    env = f.env or {}
    if env.get("FLANNEL_IPMASQ") != "true":
        return Check("masquerade", "ok" if env else "skip", "not expected (FLANNEL_IPMASQ is not true)")
    if active_firewall(f) == "nftables":
        net, own = (f.config.network if f.config else None), f.own_subnet
        if net is None or own is None:
            return Check("masquerade", "skip", "needs the network config and this node's subnet")
        return _check_masquerade_nft(f, net, own)
    if f.iptables_error or "nat" not in f.iptables:
        return Check("masquerade", "skip", f.iptables_error or "iptables-save not available")
    net = f.config.network if f.config else None
    own = f.own_subnet
    if net is None or own is None:
        return Check("masquerade", "skip", "needs the network config and this node's subnet")
    missing = _missing_rules(f.iptables["nat"], masq_chain(net, own, random_fully=True))
    if missing:
        return Check("masquerade", "fail", f"{MASQ_CHAIN} is incomplete ({len(missing)} missing): {missing[0]}",
                     "flanneld re-creates them within -iptables-resync seconds; if not, check its log for "
                     "iptables errors and restart it")
    return Check("masquerade", "ok", f"{MASQ_CHAIN} in place for {net} (own subnet {own})")


def _kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_tx_checksum(f: NodeFacts, opts: Any) -> Check:
    dev = f.device_name
    hint = f"ethtool -K {dev} tx-checksum-ip-generic off (flannel #1279; a udev rule keeps it across restarts)"
    if f.device is None:
        return Check("tx_checksum", "skip", f"{dev} does not exist")
    if f.tx_checksum is None:
        return Check("tx_checksum", "skip", f.tx_checksum_error or "not readable", hint)
    if not f.tx_checksum:
        return Check("tx_checksum", "ok", f"tx checksum offload off on {dev}")
    if _kernel_version(f.kernel_release) < CHECKSUM_FIXED:
        return Check("tx_checksum", "warn", f"tx checksum offload on {dev} with kernel {f.kernel_release} (< 5.7): "
                     "NAT'd VXLAN packets may get bad UDP checksums ('UDP: bad checksum' in dmesg)", hint)
    return Check("tx_checksum", "ok", f"tx checksum offload on {dev}; kernel {f.kernel_release} has the netfilter "
                 "fix (if dmesg still shows 'UDP: bad checksum' on port 8472, turn it off)", hint)


def check_etcd(f: NodeFacts, opts: Any) -> Check:
    if not f.endpoints:
        return Check("etcd", "skip", "no endpoints")
    down = [e for e in f.endpoints if not e.ok]
    if len(down) == len(f.endpoints):
        return Check("etcd", "fail", "no etcd endpoint answers: " + "; ".join(f"{e.endpoint}: {e.error}" for e in down),
                     "check -etcd-endpoints, TLS files and credentials, and that etcd runs")
    if down:
        return Check("etcd", "warn", f"{len(down)} of {len(f.endpoints)} endpoints down: "
                     + ", ".join(e.endpoint for e in down), "fix or remove the dead endpoints in -etcd-endpoints")
    return Check("etcd", "ok", f"{len(f.endpoints)} endpoint(s) healthy")


def check_daemon(f: NodeFacts, opts: Any) -> Check:
    d = status.daemon_report(f)
    if d["status_error"]:
        return Check("flanneld", "warn", f"no status file: {d['status_error']}",
                     "start pyflannel's flanneld with the same -subnet-file (Go flanneld writes no status file)")
    if d["running"] is False:
        return Check("flanneld", "fail", f"flanneld (pid {d['pid']}) is not running", "systemctl start flanneld")
    period = float(getattr(opts, "resync_period", 10) or 10)
    age = d["last_sync_age"]
    if age is not None and age > 3 * period + 5:
        return Check("flanneld", "warn", f"last sync {age:.0f}s ago (resync period {period:.0f}s)",
                     "flanneld may be stuck: check its log")
    if not d["ready"]:
        return Check("flanneld", "fail", "not ready: " + "; ".join(d["not_ready"]), "see flanneld's log")
    return Check("flanneld", "ok", f"pid {d['pid']}, last sync {age:.0f}s ago, ready" if age is not None
                 else f"pid {d['pid']}, ready")


# --- host-gw ------------------------------------------------------------------------------


def _peer_name(le: Any) -> str:
    return f"{le.name} ({le.owner_ip})"


def check_hostgw_l2(f: NodeFacts, opts: Any) -> Check:
    """Every peer's gateway is a neighbour on the uplink: inside a connected prefix, route get = uplink, no via."""
    up = f.uplink
    if f.kernel_error:
        return Check("hostgw_l2", "skip", f.kernel_error)
    if up is None:
        return Check("hostgw_l2", "fail", "no uplink: no link holds this node's PublicIP and the status file names "
                     "none", "start flanneld with -iface set to the interface on the nodes' shared L2")
    if f.own is None:
        return Check("hostgw_l2", "skip", "needs this node's lease")
    bad = []
    n = 0
    for p in f.hostgw_peers:
        for rt in p.routes:
            n += 1
            gw = rt.via
            inside = [str(x) for x in f.uplink_prefixes if x.version == gw.version and gw in x]
            lk = f.lookups.get(str(gw))
            why = []
            if not inside:
                why.append(f"{gw} is in none of {up.name}'s prefixes ("
                           + (", ".join(map(str, f.uplink_prefixes)) or "none") + ")")
            if lk is None or lk.oif is None:
                why.append(f"route get {gw}: {lk.error if lk else 'not asked'}")
            elif lk.oif != up.index or lk.gateway:
                why.append(f"route get {gw} gives" + (f" via {lk.gateway}" if lk.gateway else "")
                           + f" dev {lk.dev or lk.oif}, not on-link on {up.name}")
            if why:
                bad.append(f"peer {p.lease.name} ({gw}): " + "; ".join(why))
    if bad:
        return Check("hostgw_l2", "fail", f"{len(bad)} peer(s) not on {up.name}'s L2: " + "; ".join(bad[:3]),
                     "host-gw needs every node on one L2 segment (no router between them); use vxlan or "
                     "wireguard across subnets, or fix -iface/-public-ip on that peer")
    return Check("hostgw_l2", "ok", f"{n} peer gateway(s) on-link on {up.name} ("
                 + ", ".join(map(str, f.uplink_prefixes)) + ")")


def _on_prefixes(f: NodeFacts, ip: Any) -> bool:
    return any(x.version == ip.version and ip in x for x in f.uplink_prefixes)


def hostgw_drift(f: NodeFacts) -> tuple[list[str], list[str]]:
    """(missing, stale) host-gw routes, as ``<subnet> via <gw> dev <uplink>`` lines."""
    up = f.uplink
    if up is None or f.config is None:
        return [], []
    # A gateway outside the uplink's prefixes is refused by the daemon (and reported by hostgw_l2), not missing.
    want = {(str(rt.dst), str(rt.via)) for p in f.hostgw_peers for rt in p.routes
            if not f.uplink_prefixes or _on_prefixes(f, rt.via)}
    nets = [n for n in (f.config.network if f.config.enable_ipv4 else None, f.config.ipv6_network if f.ipv6
                        else None) if n is not None]
    have = {(str(r.dst), str(r.gateway)) for r in (*f.routes, *f.routes6)
            if r.oif == up.index and r.gateway is not None and any(r.dst.version == n.version
                                                                   and r.dst.subnet_of(n) for n in nets)}
    missing = [f"{d} via {g} dev {up.name}" for d, g in sorted(want - have)]
    stale = [f"{d} via {g} dev {up.name}" for d, g in sorted(have - want)]
    return missing, stale


def check_hostgw_routes(f: NodeFacts, opts: Any) -> Check:
    if f.kernel_error:
        return Check("hostgw_routes", "skip", f.kernel_error)
    if f.own is None or f.uplink is None or f.config is None:
        return Check("hostgw_routes", "skip", "needs the lease, the config and the uplink")
    missing, stale = hostgw_drift(f)
    rejected = [f"{p.lease.name}: {p.rejected}" for p in f.hostgw_peers if p.rejected]
    if missing or stale:
        d = [f"missing {x}" for x in missing] + [f"stale {x}" for x in stale]
        more = f" (+{len(d) - 3} more)" if len(d) > 3 else ""
        return Check("hostgw_routes", "fail", f"{len(d)} route(s) differ from the leases: " + "; ".join(d[:3]) + more,
                     "flanneld puts host-gw routes back from the kernel's notification; if one stays missing, "
                     "look for netlink errors in its log (a route via an off-L2 gateway fails: see hostgw_l2)")
    n = sum(len(p.routes) for p in f.hostgw_peers)
    extra = f"; ignored {len(rejected)}: " + "; ".join(rejected[:2]) if rejected else ""
    return Check("hostgw_routes", "ok", f"{n} route(s) <subnet> via <PublicIP> dev {f.uplink.name}, all present"
                 + extra)


# --- wireguard ----------------------------------------------------------------------------


def check_wg_device(f: NodeFacts, opts: Any) -> Check:
    if f.kernel_error:
        return Check("wg_device", "skip", f.kernel_error)
    if not f.wg_devices:
        return Check("wg_device", "skip", "needs the wireguard network config")
    missing = [d.name for d in f.wg_devices if d.index is None]
    if missing:
        return Check("wg_device", "fail", f"{', '.join(missing)} does not exist",
                     "start flanneld (it creates the device; without the wireguard module it needs wireguard-go "
                     "in PATH), and check its log")
    problems, parts = [], []
    own = f.own_subnet
    for d in f.wg_devices:
        if d.kind not in ("kernel", "wireguard-go"):
            problems.append(f"{d.name} is a {d.kind or 'plain'} link, not WireGuard")
        if not d.up:
            problems.append(f"{d.name} is down")
        if own is not None and d.name == wgcore.DEVICE and f.config is not None and f.config.enable_ipv4 \
                and f"{own.network_address}/32" not in d.addresses:
            problems.append(f"{d.name} lacks address {own.network_address}/32 (has {', '.join(d.addresses) or 'none'})")
        how = "kernel module" if d.kind == "kernel" else f"wireguard-go, UAPI {d.socket}" if d.socket else d.kind
        parts.append(f"{d.name} {'up' if d.up else 'down'} ({how}), MTU {d.mtu}")
    if problems:
        return Check("wg_device", "fail", "; ".join(problems),
                     "flanneld repairs the device on its next full resync (-resync-period); if not, restart it")
    return Check("wg_device", "ok", "; ".join(parts))


def check_wg_listen_port(f: NodeFacts, opts: Any) -> Check:
    devs = [d for d in f.wg_devices if d.index is not None]
    if not devs:
        return Check("wg_listen_port", "skip", "no WireGuard device")
    bad, ok = [], []
    for d in devs:
        via = "genetlink" if d.kind == "kernel" else "UAPI"
        if d.status is None:
            bad.append(f"{d.name} does not answer over {via}: {d.error}")
        elif d.status.listen_port != d.listen_port:
            bad.append(f"{d.name} listens on UDP {d.status.listen_port or 'no port'}, the config says {d.listen_port}")
        elif f.udp_ports and d.listen_port not in f.udp_ports:
            bad.append(f"{d.name}: no local UDP socket on port {d.listen_port}")
        else:
            ok.append(f"{d.name} UDP {d.listen_port} ({via} answers)")
    if bad:
        return Check("wg_listen_port", "fail", "; ".join(bad),
                     "restart flanneld; for wireguard-go check that its UAPI socket directory "
                     "(/var/run/wireguard) is the one flanneld sees")
    return Check("wg_listen_port", "ok", ", ".join(ok) + " (peers' firewalls not probed)")


def _published_keys(f: NodeFacts) -> list[str]:
    out = []
    if f.own is not None:
        for data in (f.own.attrs.backend_data, f.own.attrs.backend_v6_data):
            if data:
                try:
                    out.append(wgcore.parse_data(data).public_key)
                except ValueError:
                    out.append("")
    return out


def check_wg_public_key(f: NodeFacts, opts: Any) -> Check:
    if f.own is None:
        return Check("wg_public_key", "skip", "needs this node's lease")
    k = f.wg_key
    if k is None or not k.public_key:
        return Check("wg_public_key", "skip", f"key file: {k.error if k else 'not read'}")
    published = _published_keys(f)
    dev_keys = {d.name: d.status.public_key for d in f.wg_devices if d.status is not None}
    problems = []
    if not published:
        problems.append(f"the lease {f.own.name} publishes no PublicKey")
    for p in sorted(set(published)):
        if p != k.public_key:
            problems.append(f"the lease publishes PublicKey {p or '(invalid)'} but key file {k.path} holds the key "
                            f"of {k.public_key}")
    for name, key in sorted(dev_keys.items()):
        if key != k.public_key:
            problems.append(f"{name} runs with PublicKey {key}, not the key file's")
    if problems:
        return Check("wg_public_key", "fail", "; ".join(problems),
                     "flanneld re-reads the key file on its next full resync (-resync-period) and republishes; "
                     "to apply it now, restart flanneld")
    return Check("wg_public_key", "ok", f"PublicKey {k.public_key}: key file, lease and device(s) agree")


def check_wg_key_file(f: NodeFacts, opts: Any) -> Check:
    k = f.wg_key
    if k is None:
        return Check("wg_key_file", "skip", "not read")
    if k.mode is None:
        return Check("wg_key_file", "fail", k.error or f"{k.path} is unreadable",
                     f"flanneld creates {k.path} at start (set WIREGUARD_KEY_FILE as for flanneld)")
    if k.mode & 0o077:
        return Check("wg_key_file", "fail", f"{k.path} has mode {k.mode:04o}: the private key is readable by others",
                     f"chmod 0400 {k.path}, and consider the key compromised (replace it)")
    if k.mode != 0o400:
        return Check("wg_key_file", "warn", f"{k.path} has mode {k.mode:04o}, flanneld writes 0400",
                     f"chmod 0400 {k.path}")
    return Check("wg_key_file", "ok", f"{k.path} mode 0400")


def wg_drift(f: NodeFacts) -> list[str]:
    """Each WireGuard peer that differs from the leases: ``missing ...`` or ``stale ...``."""
    # Two leases can carry one public key; the daemon gives the peer to the newest, so any of them matches.
    wanted: dict[tuple[str, str], list[Any]] = {}
    for p in f.wg_desired:
        wanted.setdefault((p.dev, p.public_key), []).append(p)
    want = {k: ps[-1] for k, ps in wanted.items()}
    have = {(d.name, p.public_key): p.entry(d.name) for d in f.wg_devices if d.status is not None
            for p in d.status.peers}
    out = []
    for key, p in sorted(want.items()):
        h = have.get(key)
        if h is None:
            out.append(f"missing peer {p.public_key} on {p.dev} ({p.endpoint}, {','.join(p.allowed_ips)})")
        elif all((h.endpoint, h.allowed_ips, h.keepalive, h.psk) != (q.endpoint, q.allowed_ips, q.keepalive, q.psk)
                 for q in wanted[key]):
            out.append(f"peer {p.public_key} on {p.dev}: endpoint {h.endpoint}, AllowedIPs {','.join(h.allowed_ips)} "
                       f"(leases: {p.endpoint}, {','.join(p.allowed_ips)})")
    out += [f"stale peer {p.public_key} on {p.dev} ({p.endpoint}, {','.join(p.allowed_ips)})"
            for key, p in sorted(have.items()) if key not in want]
    return out


def check_wg_peers(f: NodeFacts, opts: Any) -> Check:
    if f.own is None or not any(d.status is not None for d in f.wg_devices):
        return Check("wg_peers", "skip", "needs the lease and a WireGuard device that answers")
    d = wg_drift(f)
    if d:
        more = f" (+{len(d) - 3} more)" if len(d) > 3 else ""
        return Check("wg_peers", "fail", f"{len(d)} WireGuard peer(s) differ from the leases: " + "; ".join(d[:3])
                     + more, "flanneld fixes peers within -resync-period; if it persists, look for UAPI/genetlink "
                     "errors in its log")
    rej = f"; ignored {len(f.wg_rejected)}: " + "; ".join(f"{s}: {r}" for s, r in f.wg_rejected[:2]) \
        if f.wg_rejected else ""
    return Check("wg_peers", "ok", f"{len(f.wg_desired)} peer(s), every endpoint and AllowedIPs as the leases say"
                 + rej)


def _peer_by_key(f: NodeFacts) -> dict[str, Any]:
    out = {}
    for le in f.leases:
        for data in (le.attrs.backend_data, le.attrs.backend_v6_data):
            if data and le.attrs.backend_type == wgcore.BACKEND_TYPE:
                try:
                    out[wgcore.parse_data(data).public_key] = le
                except ValueError:
                    continue
    return out


def check_wg_handshake(f: NodeFacts, opts: Any) -> Check:
    devs = [d for d in f.wg_devices if d.status is not None]
    if not devs or f.own is None:
        return Check("wg_handshake", "skip", "needs the lease and a WireGuard device that answers")
    leases = _peer_by_key(f)
    us = str(f.own.owner_ip)  # PublicIPv6 on an IPv6-only network
    never, old, fresh = [], [], 0
    for d in devs:
        for p in d.status.peers:
            le = leases.get(p.public_key)
            who = _peer_name(le) if le is not None else p.endpoint
            if p.last_handshake_sec == 0:
                never.append(f"no handshake ever with {who}: UDP port {d.listen_port} may be blocked between {us} "
                             f"and {p.endpoint.rsplit(':', 1)[0].strip('[]')}")
            elif f.now - p.last_handshake_sec > HANDSHAKE_MAX_AGE:
                old.append(f"last handshake with {who} {duration(f.now - p.last_handshake_sec)} ago")
            else:
                fresh += 1
    if never or old:
        return Check("wg_handshake", "warn", "; ".join([*never, *old][:4]),
                     "WireGuard only shakes hands while traffic flows (set PersistentKeepaliveInterval for a steady "
                     "one); if pods cannot reach that peer, open UDP to its ListenPort in both directions")
    return Check("wg_handshake", "ok", f"{fresh} peer(s) with a handshake in the last {HANDSHAKE_MAX_AGE}s")


# --- IPv6 ---------------------------------------------------------------------------------


def check_ipv6_forwarding(f: NodeFacts, opts: Any) -> Check:
    v = f.sysctls.get("net.ipv6.conf.all.forwarding")
    if v is None:
        return Check("ipv6_forwarding", "skip", "net.ipv6.conf.all.forwarding is not readable")
    if v != "1":
        return Check("ipv6_forwarding", "fail", f"net.ipv6.conf.all.forwarding = {v}: the node does not route IPv6 "
                     "pod traffic", _sysctl_hint("net.ipv6.conf.all.forwarding", "1"))
    return Check("ipv6_forwarding", "ok", "net.ipv6.conf.all.forwarding = 1")


def check_ipv6_rules(f: NodeFacts, opts: Any) -> Check:
    net6 = f.config.ipv6_network if f.config else None
    if net6 is None:
        return Check("ipv6_rules", "skip", "no IPv6Network in the config")
    want_fwd = bool(getattr(opts, "iptables_forward_rules", True))
    masq = (f.env or {}).get("FLANNEL_IPMASQ") == "true"
    own6 = f.own_subnet6
    hint = ("flanneld re-creates them within -iptables-resync seconds; if not, check its log for ip6tables/nft "
            "errors and restart it")
    problems: list[str] = []
    if active_firewall(f) == "nftables":
        listing = f.nftables.get(nft_rules.TABLE6)
        if listing is None:
            return Check("ipv6_rules", "fail", f"nftables: table ip6 {nft_rules.TABLE6} is missing", hint)
        chains = [nft_rules.forward_chain("ip6", net6)] if want_fwd else []
        table = nft_rules.NftTable("ip6", nft_rules.TABLE6, tuple(chains))
        for ch in chains:
            problems += nft_rules.chain_diff(table, ch, listing)
        if masq and own6 is not None:
            full = nft_rules.postrtg_chain("ip6", net6, own6, random_fully=True)
            plain = nft_rules.postrtg_chain("ip6", net6, own6, random_fully=False)
            t2 = nft_rules.NftTable("ip6", nft_rules.TABLE6, (full,))
            if nft_rules.chain_diff(t2, full, listing) and nft_rules.chain_diff(
                    nft_rules.NftTable("ip6", nft_rules.TABLE6, (plain,)), plain, listing):
                problems += nft_rules.chain_diff(t2, full, listing)
        where = f"nftables {nft_rules.TABLE6}"
    else:
        if f.ip6tables_error or not f.ip6tables:
            return Check("ipv6_rules", "skip", f.ip6tables_error or "ip6tables-save not available")
        if want_fwd:
            problems += _missing_rules(f.ip6tables.get("filter", ""), forward_chain(net6))
        if masq and own6 is not None:
            problems += _missing_rules(f.ip6tables.get("nat", ""), masq_chain(net6, own6, random_fully=True))
        where = f"ip6tables {FWD_CHAIN}" + (f", {MASQ_CHAIN}" if masq else "")
    if problems:
        return Check("ipv6_rules", "fail", f"{where}: {len(problems)} missing: " + "; ".join(problems[:2]), hint)
    return Check("ipv6_rules", "ok", f"{where} in place for {net6}" + (f" (own subnet {own6})" if own6 else ""))


VXLAN_CHECKS: tuple[Callable[[NodeFacts, Any], Check], ...] = (
    check_config, check_ip_forward, check_br_netfilter, check_rp_filter, check_mtu, check_device, check_lease,
    check_peers_kernel, check_peers_reachable, check_duplicate_ips, check_network_overlap, check_firewall_mode,
    check_forward, check_masquerade, check_tx_checksum, check_etcd, check_daemon,
)
CHECKS = VXLAN_CHECKS  # the vxlan list, as before backends were data
HOSTGW_CHECKS: tuple[Callable[[NodeFacts, Any], Check], ...] = (
    check_config, check_ip_forward, check_br_netfilter, check_rp_filter, check_mtu, check_lease, check_hostgw_l2,
    check_hostgw_routes, check_duplicate_ips, check_network_overlap, check_firewall_mode, check_forward,
    check_masquerade, check_etcd, check_daemon,
)
WIREGUARD_CHECKS: tuple[Callable[[NodeFacts, Any], Check], ...] = (
    check_config, check_ip_forward, check_br_netfilter, check_rp_filter, check_mtu, check_wg_device, check_lease,
    check_wg_key_file, check_wg_public_key, check_wg_listen_port, check_wg_peers, check_wg_handshake,
    check_duplicate_ips, check_network_overlap, check_firewall_mode, check_forward, check_masquerade, check_etcd,
    check_daemon,
)
IPV6_CHECKS: dict[Callable[[NodeFacts, Any], Check], Callable[[NodeFacts, Any], Check]] = {
    check_ip_forward: check_ipv6_forwarding, check_masquerade: check_ipv6_rules,
}  # each runs right after its key
# Not run on an IPv6-only network (EnableIPv4=false): there is no IPv4 Network, subnet or rule to check.
IPV4_ONLY_CHECKS = frozenset({check_ip_forward, check_network_overlap, check_forward, check_masquerade})


def checks_for(f: NodeFacts) -> list[Callable[[NodeFacts, Any], Check]]:
    """The checks that apply to this node's backend (and IPv6 config); the others are not run or printed."""
    base = {hostgw.BACKEND_TYPE: HOSTGW_CHECKS, wgcore.BACKEND_TYPE: WIREGUARD_CHECKS}.get(f.backend, VXLAN_CHECKS)
    out = []
    v6_only = f.config is not None and f.config.ipv6_only
    for c in base:
        if not (v6_only and c in IPV4_ONLY_CHECKS):
            out.append(c)
        if f.ipv6 and c in IPV6_CHECKS:
            out.append(IPV6_CHECKS[c])
    return out


def run_checks(f: NodeFacts, opts: Any) -> list[Check]:
    return [c(f, opts) for c in checks_for(f)]


LABEL = {"ok": "[ OK ]", "warn": "[WARN]", "fail": "[FAIL]", "skip": "[SKIP]"}


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        line = f"{LABEL[c.level]} {c.name.ljust(width)}  {c.detail}"
        if c.level in ("warn", "fail") and c.hint:
            line += f" -- fix: {c.hint}"
        lines.append(line)
    fails = sum(c.level == "fail" for c in checks)
    warns = sum(c.level == "warn" for c in checks)
    lines.append(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines) + "\n"


def to_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not any(c.level == "fail" for c in checks), "checks": [asdict(c) for c in checks]}

