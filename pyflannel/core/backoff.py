"""Retry delays with jitter, and the log lines of an outage.

Why: during an etcd outage every node used to retry every second in lockstep and, when etcd
came back, all of them reconnected and relisted at the same instant. Exponential backoff
spreads the retries out over time and jitter spreads them over the nodes. Two kinds, both
capped at ``cap``:

* ``full``: a delay drawn uniformly from [0, min(cap, base * 2**attempt)]; the best spread,
  but a retry can come at once;
* ``decorrelated``: the next delay drawn from [base, previous * 3], capped; never below
  ``base``, and as spread out as full jitter after a few attempts.

The random source is passed in (``random.Random(seed)``), so tests are repeatable and the
module stays pure.

``OutageLog`` keeps an outage to three kinds of line: one WARNING when it starts, DEBUG for
each failure while it lasts, one INFO with its length when it ends. It takes a clock
function, so the length is testable without sleeping.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["full", "decorrelated", "none"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How delays grow: ``base`` s first, doubling (or decorrelated), never above ``cap`` s."""

    base: float = 1.0
    cap: float = 30.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError(f"backoff base: must be > 0, got {self.base!r}")
        if self.cap < self.base:
            raise ValueError(f"backoff cap: must be >= base {self.base!r}, got {self.cap!r}")
        if self.jitter not in ("full", "decorrelated", "none"):
            raise ValueError(f"backoff jitter: must be full, decorrelated or none, got {self.jitter!r}")


@dataclass(slots=True)
class Backoff:
    """The state of one retry loop: ``next_delay()`` after each failure, ``reset()`` after a success."""

    policy: BackoffPolicy
    rng: random.Random
    attempt: int = 0
    _prev: float = field(default=0.0, repr=False)

    def next_delay(self) -> float:
        p = self.policy
        if p.jitter == "decorrelated":
            prev = self._prev or p.base
            delay = min(p.cap, self.rng.uniform(p.base, prev * 3))
        else:
            ceiling = min(p.cap, p.base * 2.0 ** min(self.attempt, 62))
            delay = self.rng.uniform(0.0, ceiling) if p.jitter == "full" else ceiling
        self.attempt += 1
        self._prev = delay
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self._prev = 0.0


def jittered(value: float, rng: random.Random, spread: float = 0.5) -> float:
    """``value`` scaled by a factor drawn from [1 - spread, 1 + spread] (a fixed pause made unsynchronised)."""
    if not 0 <= spread <= 1:
        raise ValueError(f"jitter spread: must be within [0, 1], got {spread!r}")
    return value * rng.uniform(1.0 - spread, 1.0 + spread)


class OutageLog:
    """One WARNING when an outage starts, DEBUG while it lasts, one INFO with its length when it ends.

    ``failure(reason)`` after every failed attempt, ``success()`` after every good one.
    ``what`` names the thing, e.g. ``"etcd watch"``.
    """

    def __init__(self, logger: logging.Logger, what: str, clock: Callable[[], float]) -> None:
        self.log = logger
        self.what = what
        self.clock = clock
        self.started: float | None = None
        self.failures = 0

    @property
    def in_outage(self) -> bool:
        return self.started is not None

    def failure(self, reason: object, retry_in: float | None = None) -> None:
        retry = f" (retrying in {retry_in:.1f}s)" if retry_in is not None else ""
        self.failures += 1
        if self.started is None:
            self.started = self.clock()
            self.log.warning("%s failing: %s%s", self.what, reason, retry)
        else:
            self.log.debug("%s still failing after %.1fs: %s%s", self.what, self.clock() - self.started, reason,
                           retry)

    def success(self) -> float | None:
        """Ends an outage if one is on; returns its length in seconds (None if there was none)."""
        if self.started is None:
            return None
        length = self.clock() - self.started
        self.log.info("%s recovered after %.1fs (%d failed attempts)", self.what, length, self.failures)
        self.started = None
        self.failures = 0
        return length
