"""The Hypothesis budget of the fuzz tests: small enough for CI, scaled up for a deliberate hunt.

`FORGECREW_TEST_FUZZ_SCALE=20` multiplies every test's example count (e.g. before a release);
the default keeps each file of tests/fuzz under a minute.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = "forgecrew-fuzz"
settings.register_profile(
    PROFILE,
    deadline=None,  # a request to a real database has no stable duration; hangs are bounded separately
    database=None,  # no example database kept between runs: failures print their seed and blob instead
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)


def scale() -> int:
    """The multiplier from FORGECREW_TEST_FUZZ_SCALE (1 when unset)."""
    value = os.environ.get("FORGECREW_TEST_FUZZ_SCALE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"FORGECREW_TEST_FUZZ_SCALE must be a positive integer, got {value!r}")
    return int(value)


def fuzz(examples: int) -> settings:
    """The profile with `examples` (times the scale) examples per test."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * scale())
