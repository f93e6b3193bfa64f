"""Shared settings for the pure unit tests (no network, no root, no subprocess).

Hypothesis runs without an example database (nothing is written outside the test tree) and without
a per-example deadline (a loaded CI machine must not turn a slow example into a failure). Each test
sets its own ``max_examples``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "pyflannel-unit",
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("pyflannel-unit")
