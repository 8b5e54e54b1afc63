"""Meta-tests: a checker that cannot fail is worth nothing.

Each test plants one bug in the core (a small named patch, see ``_bugs.py``)
and shows that the suite's scenario properties (``_suite.py``) find a
counterexample that breaks the matching invariant, each property within the
``ci`` profile's example budget. The searches are seeded, so these tests
are deterministic.
"""

from __future__ import annotations

import random

import hypothesis
import pytest
from hypothesis import find, settings
from hypothesis.stateful import run_state_machine_as_test

from jobctl.testing import InvariantViolation, Schedule, run_scenario

from ._bugs import BUGS, Bug
from ._machine import STEPS, DomainMachine
from ._suite import PROPERTIES, Example

#: The number of examples the ``ci`` profile gives each property.
CI_BUDGET = settings.get_profile("ci").max_examples


def breaks(bug: Bug, example: Example) -> bool:
    """Whether the property fails on ``example`` by the bug's invariant."""
    try:
        run_scenario(*example)
    except InvariantViolation as exc:
        return bug.invariant in exc.invariants
    except Exception:
        # The bug made an actor fail in a way the checker did not explain.
        return False
    return False


def search(bug: Bug, *, shrink: bool = False, seed: int = 0) -> Example:
    """Run each property of the suite, as CI would, until one fails by the
    bug's invariant; return its counterexample."""
    phases = [hypothesis.Phase.generate]
    if shrink:
        phases.append(hypothesis.Phase.shrink)
    for examples in PROPERTIES.values():
        try:
            return find(
                examples,
                lambda example: breaks(bug, example),
                settings=settings(
                    max_examples=CI_BUDGET, deadline=None, database=None, phases=phases
                ),
                random=random.Random(seed),
            )
        except hypothesis.errors.NoSuchExample:
            continue
    raise AssertionError(f"no property of the suite found {bug.name} in {CI_BUDGET} examples")


def violates_any(example: Example) -> bool:
    try:
        run_scenario(*example)
    except InvariantViolation:
        return True
    return False


def test_the_correct_core_passes_the_same_search() -> None:
    """The same seeded search (the same examples) finds nothing on the real
    core, so the meta-tests below detect the planted bugs, not noise."""
    for examples in PROPERTIES.values():
        with pytest.raises(hypothesis.errors.NoSuchExample):
            find(
                examples,
                violates_any,
                settings=settings(
                    max_examples=CI_BUDGET,
                    deadline=None,
                    database=None,
                    phases=[hypothesis.Phase.generate],
                ),
                random=random.Random(0),
            )


@pytest.mark.parametrize("name", sorted(BUGS))
def test_the_suite_finds_the_planted_bug(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bug = BUGS[name]
    bug.plant(monkeypatch)
    scenario, schedule = search(bug)
    with pytest.raises(InvariantViolation) as info:
        run_scenario(scenario, schedule)
    assert bug.invariant in info.value.invariants


#: The bugs the rule-based machine can reach (``Bug.not_stateful`` says why
#: the others are out of its reach; the scenario suite finds every one).
STATEFUL_BUGS = sorted(name for name, bug in BUGS.items() if bug.not_stateful is None)


@pytest.mark.parametrize("name", STATEFUL_BUGS)
def test_the_stateful_suite_finds_the_planted_bug(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule-based machine of the stateful suite, with the ``ci``
    budget and a fixed seed (``derandomize``), catches each bug too."""
    bug = BUGS[name]
    bug.plant(monkeypatch)
    budget = settings(
        max_examples=CI_BUDGET,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.generate],
    )
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(DomainMachine, settings=budget)
    assert bug.invariant in info.value.invariants


def test_a_counterexample_shrinks_to_a_short_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrinking turns a drawn failure into a scenario a person can read."""
    bug = BUGS["barrier_skipped"]
    bug.plant(monkeypatch)
    scenario, schedule = search(bug, shrink=True)
    (domain,) = scenario.domains
    assert len(domain.jobs) + len(domain.async_jobs) + len(domain.aborts) <= 3
    assert schedule == Schedule()
    assert len(repr(scenario)) < 300, repr(scenario)
