"""Hypothesis profiles for the fuzz suites: a bounded, derandomized one for CI and a deep one.

``HYPOTHESIS_PROFILE=deep`` (or ``--hypothesis-profile=deep``) runs many more, random examples
and keeps failing ones in ``~/.cache/slm-operator/hypothesis`` so a rerun replays them first.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "deep",
    max_examples=5000,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(Path.home() / ".cache" / "slm-operator" / "hypothesis"),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
DEEP = PROFILE == "deep"
settings.load_profile(PROFILE)
EXAMPLES = settings.get_profile(PROFILE).max_examples
"""Examples per property in the loaded profile; the slower properties take a fraction of it."""
