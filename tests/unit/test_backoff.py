"""Backoff delays (bounds, growth, repeatability from a seed) and the outage log's three kinds of line."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core.backoff import Backoff, BackoffPolicy, OutageLog, jittered


@settings(max_examples=200)
@given(seed=st.integers(0, 2**32), base=st.floats(0.01, 5), factor=st.floats(1, 100), n=st.integers(1, 80),
       jitter=st.sampled_from(["full", "decorrelated", "none"]))
def test_delays_stay_within_bounds(seed: int, base: float, factor: float, n: int, jitter: str) -> None:
    policy = BackoffPolicy(base, base * factor, jitter)  # type: ignore[arg-type]
    b = Backoff(policy, random.Random(seed))
    for _ in range(n):
        d = b.next_delay()
        assert 0 <= d <= policy.cap
        if jitter == "decorrelated":
            assert d >= min(policy.base, policy.cap)


def test_no_jitter_doubles_up_to_the_cap() -> None:
    b = Backoff(BackoffPolicy(1, 10, "none"), random.Random(0))
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    b.reset()
    assert b.next_delay() == 1


def test_same_seed_same_delays_other_seed_other_delays() -> None:
    p = BackoffPolicy(1, 30, "full")
    a = [Backoff(p, random.Random(7)).next_delay() for _ in range(1)]
    one, two, three = (Backoff(p, random.Random(s)) for s in (7, 7, 8))
    seq = [[x.next_delay() for _ in range(10)] for x in (one, two, three)]
    assert seq[0] == seq[1] != seq[2]
    assert a[0] == seq[0][0]


def test_full_jitter_spreads_nodes_apart() -> None:
    """100 nodes retrying their 5th attempt do not all pick the same instant (the lockstep of issue 15)."""
    p = BackoffPolicy(1, 30, "full")
    fifth = []
    for seed in range(100):
        b = Backoff(p, random.Random(seed))
        fifth.append([b.next_delay() for _ in range(5)][-1])
    assert len({round(d, 1) for d in fifth}) > 50
    assert max(fifth) - min(fifth) > 10


def test_decorrelated_grows_on_average() -> None:
    firsts, tenths = [], []
    for seed in range(50):
        b = Backoff(BackoffPolicy(1, 1000, "decorrelated"), random.Random(seed))
        ds = [b.next_delay() for _ in range(10)]
        firsts.append(ds[0])
        tenths.append(ds[-1])
    assert sum(tenths) > 5 * sum(firsts)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"base": 0}, "backoff base: must be > 0, got 0"),
    ({"base": 2, "cap": 1}, "backoff cap: must be >= base 2, got 1"),
    ({"jitter": "some"}, "backoff jitter: must be full, decorrelated or none, got 'some'"),
])
def test_bad_policy_is_one_line_naming_the_value(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError) as e:
        BackoffPolicy(**kw)  # type: ignore[arg-type]
    assert str(e.value) == msg


def test_jittered_scales_within_spread() -> None:
    rng = random.Random(3)
    vals = [jittered(2.0, rng, 0.25) for _ in range(200)]
    assert all(1.5 <= v <= 2.5 for v in vals) and len(set(vals)) > 100
    with pytest.raises(ValueError, match="jitter spread: must be within"):
        jittered(1.0, rng, 2)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_outage_log_one_warning_debug_while_it_lasts_one_info_with_length(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    out = OutageLog(logging.getLogger("test.outage"), "etcd watch", clock)
    caplog.set_level(logging.DEBUG, "test.outage")
    assert out.success() is None  # no outage: nothing logged
    for i in range(5):
        out.failure(f"connection refused #{i}", retry_in=1.5)
        clock.t += 2
    assert out.in_outage
    assert out.success() == pytest.approx(10.0)
    out.success()  # a second success logs nothing more
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lv for lv, _ in levels] == ["WARNING", "DEBUG", "DEBUG", "DEBUG", "DEBUG", "INFO"]
    assert levels[0][1] == "etcd watch failing: connection refused #0 (retrying in 1.5s)"
    assert levels[1][1] == "etcd watch still failing after 2.0s: connection refused #1 (retrying in 1.5s)"
    assert levels[-1][1] == "etcd watch recovered after 10.0s (5 failed attempts)"
    caplog.clear()
    out.failure("again")
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # a new outage warns again
