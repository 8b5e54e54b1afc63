"""Suite-wide settings: Hypothesis profiles.

``ci`` (selected when ``CI=true``) keeps the whole suite within CI's budget;
``deep`` explores far more (``HYPOTHESIS_PROFILE=deep``); ``dev`` is the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# Under mutation testing (mutmut sets MUTANT_UNDER_TEST): a small, fixed
# search per mutant, the same examples for every mutant.
settings.register_profile(
    "mutation",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_default = "ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else "dev"
if os.environ.get("MUTANT_UNDER_TEST"):
    _default = "mutation"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))


@pytest.fixture(autouse=True, scope="session")
def _planted_bug() -> Iterator[None]:
    """``JOBCTL_PLANT_BUG=<name>`` plants one of the named bugs of
    ``tests/properties/_bugs.py`` for the whole run: the suite must fail."""
    name = os.environ.get("JOBCTL_PLANT_BUG")
    if not name:
        yield
        return
    from tests.properties._bugs import BUGS

    patch = pytest.MonkeyPatch()
    BUGS[name].plant(patch)
    try:
        yield
    finally:
        patch.undo()
