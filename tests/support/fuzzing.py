"""Property-test settings: the same examples on every CI run, many more in `tox -e fuzz`.

CI must pass or fail for a reason, not by the draw: its profile derandomizes
hypothesis and prints the reproduction blob of any failure. `tox -e fuzz`
selects the `fuzz` profile (HYPOTHESIS_PROFILE=fuzz): random draws, fifty
times the examples, failures remembered in .hypothesis/ to replay. A failure
found there is pinned with @hypothesis.example in the test that found it.
"""

from __future__ import annotations

import os

import hypothesis

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

hypothesis.settings.register_profile(
    "ci", derandomize=True, print_blob=True, database=None, deadline=None
)
hypothesis.settings.register_profile("fuzz", print_blob=True, deadline=None)
hypothesis.settings.load_profile(PROFILE)


def examples(in_ci: int) -> int:
    """How many examples a property test draws: ``in_ci`` on CI, fifty times more when fuzzing."""
    return in_ci * 50 if PROFILE == "fuzz" else in_ci
