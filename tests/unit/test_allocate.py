"""choose_subnet: flanneld's AcquireLease decision (flannel-spec.md section 1.5 steps 2-4, 1.6)."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pyflannel.core.allocate import CANDIDATES, Choice, choose_subnet
from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import OutOfSubnets
from pyflannel.core.ipnet import subnets_between
from pyflannel.core.lease import Lease, LeaseAttrs

ME = IPv4Address("198.18.0.11")
OTHER = IPv4Address("198.18.0.12")
THIRD = IPv4Address("198.18.0.13")
REF = parse_config('{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}')


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def lease(subnet: str, ip: IPv4Address, reserved: bool = False) -> Lease:
    return Lease(
        subnet=net(subnet),
        attrs=LeaseAttrs(public_ip=ip, backend_type="vxlan", backend_data='{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}'),
        reserved=reserved,
        expiration=None if reserved else 1e9,
    )


def choose(
    leases: list[Lease],
    previous: str | None = None,
    config: NetworkConfig = REF,
    seed: int = 1,
    exclude: tuple[str, ...] = (),
    public_ip: IPv4Address = ME,
) -> Choice:
    return choose_subnet(
        config,
        leases,
        public_ip,
        net(previous) if previous else None,
        random.Random(seed),
        exclude=[net(e) for e in exclude],
    )


# --------------------------------------------------------------------------------------------
# step 2: reuse by PublicIP, reservations, stale leases
# --------------------------------------------------------------------------------------------
def test_reuse_own_lease_by_public_ip() -> None:
    mine = lease("100.64.67.0/24", ME)
    others = [lease("100.64.81.0/24", THIRD), lease("100.64.85.0/24", OTHER)]
    c = choose([*others, mine], previous="100.64.85.0/24")
    assert c.subnet == net("100.64.67.0/24")
    assert c.existing == mine
    assert c.stale == ()
    assert "reusing" in c.reason


def test_reuse_wins_over_previous_subnet() -> None:
    mine = lease("100.64.67.0/24", ME)
    c = choose([mine], previous="100.64.90.0/24")
    assert c.subnet == mine.subnet and c.existing == mine


def test_reservation_for_our_ip_wins_over_dynamic_lease() -> None:
    dynamic = lease("100.64.67.0/24", ME)
    reserved = lease("100.64.90.0/24", ME, reserved=True)
    for order in ([dynamic, reserved], [reserved, dynamic]):
        c = choose(order)
        assert c.subnet == reserved.subnet
        assert c.existing == reserved
        assert c.existing is not None and c.existing.reserved


@pytest.mark.parametrize(
    "subnet",
    [
        pytest.param("100.64.0.0/24", id="below-SubnetMin"),
        pytest.param("100.64.67.0/25", id="other-length"),
        pytest.param("100.64.66.0/23", id="shorter-length"),
    ],
)
def test_reservation_inside_network_is_reused_even_if_it_does_not_fit(subnet: str) -> None:
    reserved = lease(subnet, ME, reserved=True)
    c = choose([reserved])
    assert c.subnet == net(subnet) and c.existing == reserved and c.stale == ()


def test_reservation_outside_network_is_neither_reused_nor_stale() -> None:
    reserved = lease("10.9.0.0/24", ME, reserved=True)
    c = choose([reserved])
    assert c.existing is None
    assert c.stale == ()
    assert REF.subnet_fits(c.subnet)


@pytest.mark.parametrize(
    "subnet",
    [
        pytest.param("100.64.0.0/24", id="below-SubnetMin"),
        pytest.param("100.64.67.0/25", id="other-length"),
        pytest.param("100.64.66.0/23", id="shorter-length"),
        pytest.param("10.1.2.0/24", id="outside-network"),
    ],
)
def test_own_lease_that_does_not_fit_is_stale(subnet: str) -> None:
    old = lease(subnet, ME)
    c = choose([old, lease("100.64.81.0/24", OTHER)])
    assert c.stale == (old,)
    assert c.existing is None
    assert REF.subnet_fits(c.subnet)
    assert c.subnet != net("100.64.81.0/24")


def test_stale_lease_with_fitting_lease_is_reported_and_fitting_one_reused() -> None:
    old = lease("100.64.67.0/25", ME)
    good = lease("100.64.70.0/24", ME)
    c = choose([old, good])
    assert c.subnet == good.subnet and c.existing == good


def test_stale_lease_does_not_block_its_own_space() -> None:
    # Our stale /25 will be deleted; the previous /24 that contains it is free for us.
    old = lease("100.64.67.0/25", ME)
    c = choose([old], previous="100.64.67.0/24")
    assert c.subnet == net("100.64.67.0/24")
    assert c.existing is None
    assert c.stale == (old,)


def test_lease_of_another_ip_is_never_reused() -> None:
    theirs = lease("100.64.67.0/24", OTHER)
    c = choose([theirs], previous="100.64.67.0/24")
    assert c.subnet != theirs.subnet and c.existing is None


# --------------------------------------------------------------------------------------------
# step 3: previous subnet from subnet.env
# --------------------------------------------------------------------------------------------
def test_previous_subnet_reused_when_free_and_fitting() -> None:
    c = choose([lease("100.64.81.0/24", OTHER)], previous="100.64.67.0/24")
    assert c.subnet == net("100.64.67.0/24")
    assert c.existing is None
    assert "previous" in c.reason


@pytest.mark.parametrize(
    ("leases", "previous"),
    [
        pytest.param([lease("100.64.67.0/24", OTHER)], "100.64.67.0/24", id="taken-by-other"),
        pytest.param([lease("100.64.67.0/24", OTHER, reserved=True)], "100.64.67.0/24", id="reserved-by-other"),
        pytest.param([lease("100.64.66.0/23", OTHER, reserved=True)], "100.64.67.0/24", id="covered-by-larger"),
        pytest.param([lease("100.64.67.128/25", OTHER)], "100.64.67.0/24", id="contains-smaller"),
        pytest.param([], "100.64.0.0/24", id="below-SubnetMin"),
        pytest.param([], "100.64.67.0/25", id="wrong-length"),
        pytest.param([], "10.5.72.0/24", id="other-network"),
    ],
)
def test_previous_subnet_ignored(leases: list[Lease], previous: str) -> None:
    c = choose(leases, previous=previous)
    assert c.subnet != net(previous)
    assert c.existing is None
    assert REF.subnet_fits(c.subnet)
    assert not any(c.subnet.overlaps(le.subnet) for le in leases)


def test_previous_subnet_ignored_when_excluded() -> None:
    c = choose([], previous="100.64.67.0/24", exclude=("100.64.67.0/24",))
    assert c.subnet != net("100.64.67.0/24")


# --------------------------------------------------------------------------------------------
# step 4: random choice among the first 100 free subnets
# --------------------------------------------------------------------------------------------
def test_random_choice_among_first_100_free() -> None:
    assert CANDIDATES == 100
    first100 = {net(f"100.64.{i}.0/24") for i in range(1, 101)}
    picks = {choose([], seed=s).subnet for s in range(300)}
    assert picks <= first100
    assert len(picks) > 50  # uniform over 100: 300 draws hit far more than half


def test_random_choice_skips_taken() -> None:
    taken = [lease(f"100.64.{i}.0/24", OTHER) for i in range(1, 51)]
    allowed = {net(f"100.64.{i}.0/24") for i in range(51, 151)}
    picks = {choose(taken, seed=s).subnet for s in range(300)}
    assert picks <= allowed
    assert len(picks) > 50


def test_random_choice_is_driven_by_rng() -> None:
    assert choose([], seed=42).subnet == choose([], seed=42).subnet
    c = choose([], seed=7)
    assert c.reason.startswith("allocated new subnet")
    assert c.existing is None and c.stale == ()


def test_exclude_leaves_the_only_free_subnet() -> None:
    small = parse_config('{"Network":"10.0.0.0/28"}')  # SubnetLen 30: 10.0.0.4, .8, .12
    for seed in range(20):
        c = choose([], config=small, seed=seed, exclude=("10.0.0.4/30", "10.0.0.12/30"))
        assert c.subnet == net("10.0.0.8/30")


def test_subnet_min_max_respected() -> None:
    cfg = parse_config(
        json.dumps(
            {"Network": "100.64.0.0/16", "SubnetLen": 24, "SubnetMin": "100.64.200.0", "SubnetMax": "100.64.202.0"}
        )
    )
    picks = {choose([], config=cfg, seed=s).subnet for s in range(50)}
    assert picks == {net("100.64.200.0/24"), net("100.64.201.0/24"), net("100.64.202.0/24")}


@pytest.mark.parametrize(
    ("leases", "exclude"),
    [
        pytest.param(
            [lease("10.0.0.4/30", OTHER), lease("10.0.0.8/30", THIRD), lease("10.0.0.12/30", OTHER, reserved=True)],
            (), id="all-taken",
        ),
        pytest.param([lease("10.0.0.0/28", OTHER, reserved=True)], (), id="covered-by-one-reservation"),
        pytest.param([lease("10.0.0.4/30", OTHER)], ("10.0.0.8/30", "10.0.0.12/30"), id="taken-plus-excluded"),
        pytest.param([lease("10.0.0.4/31", OTHER), lease("10.0.0.8/29", THIRD)], (), id="mixed-lengths"),
    ],
)
def test_out_of_subnets(leases: list[Lease], exclude: tuple[str, ...]) -> None:
    small = parse_config('{"Network":"10.0.0.0/28"}')
    with pytest.raises(OutOfSubnets) as ei:
        choose(leases, config=small, exclude=exclude)
    assert str(ei.value) == "out of subnets"


def test_out_of_subnets_when_min_above_max() -> None:
    cfg = parse_config('{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}')
    with pytest.raises(OutOfSubnets, match="^out of subnets$"):
        choose([], config=cfg)


# --------------------------------------------------------------------------------------------
# Properties over random lease sets on small networks
# --------------------------------------------------------------------------------------------
PUBLIC_IPS = [ME, OTHER, THIRD, IPv4Address("198.18.0.14")]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["24", "20"]))
    if kind == "24":
        network, subnet_len = IPv4Network("10.10.10.0/24"), draw(st.integers(26, 30))
    else:
        network, subnet_len = IPv4Network("100.64.0.0/20"), 24
    fields: dict[str, Any] = {"Network": str(network), "SubnetLen": subnet_len}
    size = 1 << (32 - subnet_len)
    n_sub = network.num_addresses // size
    if draw(st.booleans()):
        lo = draw(st.integers(0, n_sub - 1))
        hi = draw(st.integers(0, n_sub - 1))
        fields["SubnetMin"] = str(network.network_address + lo * size)
        fields["SubnetMax"] = str(network.network_address + hi * size)
    config = parse_config(json.dumps(fields))

    # Leases: random subnets in (mostly) or around the network, lengths around SubnetLen.
    around = network.supernet(new_prefix=network.prefixlen - 1)

    def subnet() -> IPv4Network:
        base = around if draw(st.integers(0, 9)) == 0 else network
        plen = draw(st.integers(max(base.prefixlen, subnet_len - 2), min(32, subnet_len + 2)))
        count = 1 << (plen - base.prefixlen)
        idx = draw(st.integers(0, count - 1))
        return IPv4Network((int(base.network_address) + idx * (1 << (32 - plen)), plen))

    leases: dict[IPv4Network, Lease] = {}
    for _ in range(draw(st.integers(0, 24))):
        sn = subnet()
        # Our own IP on roughly one lease in ten, so most examples exercise allocation.
        ip = ME if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(PUBLIC_IPS[1:]))
        reserved = draw(st.integers(0, 3)) == 0
        leases.setdefault(
            sn, Lease(sn, LeaseAttrs(ip, backend_type="vxlan"), reserved=reserved, expiration=None)
        )
    def aligned() -> IPv4Network:
        return IPv4Network((int(network.network_address) + draw(st.integers(0, n_sub - 1)) * size, subnet_len))

    prev_kind = draw(st.sampled_from(["none", "aligned", "any"]))
    previous = None if prev_kind == "none" else aligned() if prev_kind == "aligned" else subnet()
    exclude = [subnet() for _ in range(draw(st.integers(0, 3)))]
    return {
        "config": config,
        "leases": draw(st.permutations(list(leases.values()))),
        "previous": previous,
        "exclude": exclude,
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=500)
@given(scenarios())
def test_choose_subnet_properties(sc: dict[str, Any]) -> None:
    config: NetworkConfig = sc["config"]
    leases: list[Lease] = sc["leases"]
    previous: IPv4Network | None = sc["previous"]
    exclude: list[IPv4Network] = sc["exclude"]
    assert config.network is not None and config.subnet_min is not None and config.subnet_max is not None

    mine = [le for le in leases if le.attrs.public_ip == ME]
    reusable = [
        le for le in mine if config.subnet_fits(le.subnet) or (le.reserved and le.subnet.subnet_of(config.network))
    ]
    stale = tuple(le for le in mine if not le.reserved and le not in reusable)
    blocking = [le.subnet for le in leases if le not in stale] + exclude

    def is_free(sn: IPv4Network) -> bool:
        return not any(sn.overlaps(b) for b in blocking)

    free = [sn for sn in subnets_between(config.subnet_min, config.subnet_max, config.subnet_len) if is_free(sn)]

    try:
        c = choose_subnet(config, leases, ME, previous, random.Random(sc["seed"]), exclude=exclude)
    except OutOfSubnets:
        event("out of subnets")
        assert not reusable, "a lease of ours could have been reused"
        assert not free, f"OutOfSubnets although {free[0]} is free"
        return

    if reusable:
        event("reuse own lease")
        # Reuse of our own lease: a reservation of ours wins, then the lease we held before.
        expected = sorted(reusable, key=lambda le: (not le.reserved, le.subnet != previous))[0]
        assert c.existing == expected
        assert c.subnet == expected.subnet
        return

    assert c.existing is None
    assert set(c.stale) == set(stale) and len(c.stale) == len(stale)  # order carries no meaning
    sn = c.subnet
    size = 1 << (32 - config.subnet_len)
    assert sn.prefixlen == config.subnet_len
    assert int(sn.network_address) % size == 0
    assert config.subnet_min <= sn.network_address <= config.subnet_max
    assert sn.subnet_of(config.network)
    for le in leases:
        if le in stale:
            continue
        assert not sn.overlaps(le.subnet), f"{sn} overlaps lease {le.subnet} of {le.attrs.public_ip}"
    for ex in exclude:
        assert not sn.overlaps(ex)
    prev_ok = previous is not None and config.subnet_fits(previous) and is_free(previous)
    event(f"previous reused={prev_ok}, stale={bool(stale)}")
    if prev_ok:
        assert sn == previous
    else:
        assert sn in free[:CANDIDATES]


@settings(max_examples=200)
@given(seed=st.integers(0, 2**32 - 1), n_taken=st.integers(0, 16), subnet_len=st.integers(26, 30))
def test_fill_network_until_out_of_subnets(seed: int, n_taken: int, subnet_len: int) -> None:
    """Nodes with distinct IPs allocate one after another: all distinct, then OutOfSubnets exactly when full."""
    config = parse_config(json.dumps({"Network": "10.10.10.0/24", "SubnetLen": subnet_len}))
    assert config.subnet_min is not None and config.subnet_max is not None
    total = len(list(subnets_between(config.subnet_min, config.subnet_max, subnet_len)))
    rng = random.Random(seed)
    leases: list[Lease] = []
    for i in range(total):
        ip = IPv4Address(int(IPv4Address("198.18.1.0")) + i)
        c = choose_subnet(config, leases, ip, None, rng)
        assert all(not c.subnet.overlaps(le.subnet) for le in leases)
        leases.append(Lease(c.subnet, LeaseAttrs(ip)))
    with pytest.raises(OutOfSubnets):
        choose_subnet(config, leases, IPv4Address("198.18.2.1"), None, rng)
    # A node that already holds a lease still gets it back when the network is full.
    back = choose_subnet(config, leases, leases[n_taken % total].attrs.public_ip, None, rng)
    assert back.existing == leases[n_taken % total]


def test_previous_subnet_wins_among_leases_claiming_our_ip() -> None:
    """Another key claiming our PublicIP must not make a restarting node move to its subnet."""
    import random
    from ipaddress import IPv4Address, IPv4Network

    from pyflannel.core.allocate import choose_subnet
    from pyflannel.core.config import parse_config
    from pyflannel.core.lease import Lease, LeaseAttrs

    cfg = parse_config('{"Network":"100.64.0.0/16","Backend":{"Type":"vxlan"}}')
    ip = IPv4Address("198.18.0.11")
    impostor = Lease(IPv4Network("100.64.3.0/24"), LeaseAttrs(ip))
    ours = Lease(IPv4Network("100.64.9.0/24"), LeaseAttrs(ip))
    choice = choose_subnet(cfg, [impostor, ours], ip, IPv4Network("100.64.9.0/24"), random.Random(1))
    assert choice.subnet == IPv4Network("100.64.9.0/24") and choice.existing == ours
