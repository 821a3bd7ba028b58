"""Hypothesis profiles, defined once. Pick one with SUNRISE_HYPOTHESIS_PROFILE or hypothesis' own
--hypothesis-profile; CI (CI=true) defaults to the derandomised 'ci' profile so a run is repeatable."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Verbosity, settings

# Model-facing property tests pay one generation per example, so they draw fewer (generated in one
# batch), and shrinking a failure, one generation per attempt, stays within a budget in seconds
# (harness.property_search). 30 s on 2 CPU cores: as many attempts as 60 s took before drafted tokens
# made one note at a time 2.1x as fast (harness.decoding); 60 s then held 2 to 13 attempts of 5 to 25 s.
MODEL_EXAMPLES = {"dev": 6, "ci": 8, "nightly": 100, "debug": 3}
SHRINK_SECONDS = {"dev": 30.0, "ci": 30.0, "nightly": 600.0, "debug": 30.0}

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("debug", max_examples=10, deadline=None, verbosity=Verbosity.verbose)


def load(name: str | None = None) -> str:
    """Load the named profile (default: 'ci' under CI, else 'dev'); returns its name."""
    name = name or ("ci" if os.environ.get("CI") else "dev")
    if name not in MODEL_EXAMPLES:
        raise ValueError(f"unknown hypothesis profile {name!r}; choose one of {', '.join(MODEL_EXAMPLES)}")
    settings.load_profile(name)
    return name


def model_examples() -> int:
    return MODEL_EXAMPLES.get(settings._current_profile, MODEL_EXAMPLES["dev"])


def shrink_budget() -> float:
    return SHRINK_SECONDS.get(settings._current_profile, SHRINK_SECONDS["dev"])
