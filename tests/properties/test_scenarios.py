"""Whole-scenario properties: every drawn scenario, under every drawn
schedule, keeps the seven invariants; and the runner itself does what it says."""

from __future__ import annotations

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from jobctl import AsyncJob, Job
from jobctl.testing import (
    BACKENDS,
    AbortPlan,
    AsyncJobPlan,
    Backend,
    Commands,
    DomainPlan,
    Drop,
    Fail,
    FaultRule,
    InvariantViolation,
    Phase,
    RegularJobPlan,
    Scenario,
    Schedule,
    Stall,
    Window,
    run_scenario,
    scenarios,
    schedules,
)

from ._bugs import BUGS
from ._suite import PROPERTIES, normalized


@pytest.mark.parametrize("name", sorted(PROPERTIES))
@given(data=st.data())
def test_every_property_of_the_suite_holds(name: str, data: st.DataObject) -> None:
    """Each whole-scenario property (``_suite.py``) on trio: drawn scenarios
    (several domains; busy domains without async jobs; queue pressure;
    DESTROY races; aborts under faults) keep every invariant."""
    run_scenario(*data.draw(PROPERTIES[name], label="example"))


MIGRATION = AsyncJobPlan(
    "migrate",
    AsyncJob.MIGRATION_OUT,
    steps=(Phase("perform"), Commands(1), Window(3.0), Commands(1)),
)


def outcomes(scenario: Scenario, backend: Backend) -> dict[str, tuple[float | None, str]]:
    result = run_scenario(scenario, backend=backend)
    return {o.owner: (o.began, o.result) for o in result.outcomes}


@pytest.mark.parametrize("backend", BACKENDS)
def test_jobs_meet_the_migration_only_in_its_window(backend: Backend) -> None:
    plan = DomainPlan(
        "vm",
        jobs=(
            RegularJobPlan("stats", Job.QUERY, start=0.5, hold=1.0, commands=1),
            RegularJobPlan("resize", Job.MODIFY, start=0.5, timeout=2.0),
        ),
        async_jobs=(MIGRATION,),
        latency=(1.0,),
    )
    got = outcomes(Scenario((plan,)), backend)
    assert got["migrate"] == (0.0, "ok")
    assert got["stats"] == (1.0, "ok")  # waited for the window, which opened at 1.0
    assert got["resize"] == (None, "timeout")  # not allowed: parked until it gave up


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abort_ends_the_migration(backend: Backend) -> None:
    plan = DomainPlan("vm", async_jobs=(MIGRATION,), aborts=(AbortPlan(1.0),))
    result = run_scenario(Scenario((plan,)), backend=backend)
    got = {o.owner: o.result for o in result.outcomes}
    assert got == {"migrate": "aborted", "aborter0": "ok"}
    assert "migrate_cancel" in [
        e.detail["command"] for e in result.events if e.kind.value == "command.sent"
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_destroy_preempts_the_migration(backend: Backend) -> None:
    plan = DomainPlan(
        "vm",
        jobs=(RegularJobPlan("kill", Job.DESTROY, start=0.5, commands=1),),
        async_jobs=(MIGRATION,),
    )
    got = outcomes(Scenario((plan,)), backend)
    assert got["migrate"] == (0.0, "destroyed")
    assert got["kill"][1] == "ok"


@pytest.mark.parametrize("backend", BACKENDS)
def test_faults_end_in_typed_errors(backend: Backend) -> None:
    plan = DomainPlan(
        "vm",
        jobs=(RegularJobPlan("q", Job.QUERY, commands=2),),
        async_jobs=(AsyncJobPlan("m", AsyncJob.SAVE, start=1.0, steps=(Commands(1), Fail())),),
        faults=(FaultRule(Drop(), nth=2),),
    )
    got = outcomes(Scenario((plan,)), backend)
    assert got["q"][1] == "monitor_closed"
    assert got["m"][1] == "monitor_closed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_domains_are_independent(backend: Backend) -> None:
    def busy(name: str) -> DomainPlan:
        return DomainPlan(name, jobs=(RegularJobPlan("m", Job.MODIFY, hold=2.0),))

    result = run_scenario(Scenario((busy("a"), busy("b"))), backend=backend)
    assert sorted((o.domain, o.began) for o in result.outcomes) == [("a", 0.0), ("b", 0.0)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deadlock_is_reported_as_invariant_6(
    monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    BUGS["barrier_never_released"].plant(monkeypatch)
    plan = DomainPlan(
        "vm",
        jobs=(RegularJobPlan("q", Job.QUERY, start=0.5, hold=5.0),),
        async_jobs=(AsyncJobPlan("m", AsyncJob.SAVE, steps=(Window(1.0), Commands(1))),),
    )
    with pytest.raises(InvariantViolation, match="deadlock") as info:
        run_scenario(Scenario((plan,)), backend=backend)
    assert 6 in info.value.invariants


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_surprising_error_propagates_with_the_actor_named(
    monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    async def broken(self: object, phase: str) -> None:
        raise RuntimeError("persister exploded")

    monkeypatch.setattr("jobctl.ActiveAsyncJob.set_phase", broken)
    plan = DomainPlan("vm", async_jobs=(MIGRATION,))
    with pytest.raises(RuntimeError, match="persister exploded") as info:
        run_scenario(Scenario((plan,)), backend=backend)
    assert "raised by actor 'migrate' on domain 'vm'" in info.value.__notes__


def test_plans_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="hold"):
        RegularJobPlan("q", Job.QUERY, hold=-1)
    with pytest.raises(ValueError, match="owners must be unique"):
        DomainPlan("vm", jobs=(RegularJobPlan("q", Job.QUERY), RegularJobPlan("q", Job.QUERY)))
    with pytest.raises(ValueError, match="domain names"):
        Scenario((DomainPlan("vm"), DomainPlan("vm")))
    with pytest.raises(TypeError, match=r"jobctl\.Job"):
        AsyncJobPlan("m", AsyncJob.SAVE, allowed={"QUERY"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="yield counts"):
        Schedule((1, -1))


def test_plans_print_as_python() -> None:
    plan = DomainPlan(
        "vm",
        jobs=(RegularJobPlan("q", Job.QUERY, start=1.0, commands=2),),
        async_jobs=(AsyncJobPlan("m", AsyncJob.SAVE, steps=(Window(1.0),), allowed={Job.QUERY}),),
        faults=(FaultRule(Stall(1.0), nth=3),),
    )
    text = repr(Scenario((plan,)))
    assert text == (
        "Scenario((DomainPlan('vm', jobs=(RegularJobPlan('q', Job.QUERY, start=1.0, commands=2),), "
        "async_jobs=(AsyncJobPlan('m', AsyncJob.SAVE, steps=(Window(1.0),), "
        "allowed=frozenset({Job.QUERY})),), "
        "faults=(FaultRule(Stall(1.0), nth=3),)),))"
    )
    namespace: dict[str, object] = {}
    exec("from jobctl import *\nfrom jobctl.testing import *", namespace)
    assert eval(text, namespace) == Scenario((plan,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_printed_scenario_replays_on_its_own(backend: Backend) -> None:
    """Outside Hypothesis too: virtual time and a seeded scheduler (on
    asyncio, its first-in first-out ready queue) make a scenario pasted
    from a failure report run the same way every time, on each backend."""
    jobs = [RegularJobPlan(f"q{i}", Job.QUERY, hold=1.0, commands=2) for i in range(4)]
    jobs += [RegularJobPlan("m", Job.MODIFY, commands=1), RegularJobPlan("d", Job.DESTROY)]
    scenario = Scenario((DomainPlan("vm", jobs=jobs, async_jobs=(MIGRATION,), latency=(0.1,)),))
    schedule = Schedule((1, 0, 2, 3, 0, 1))
    runs = [normalized(run_scenario(scenario, schedule, backend=backend).events) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_drawn_example_replays_identically(backend: Backend) -> None:
    """The same Hypothesis seed gives the same scenario, schedule and trace:
    what ``@reproduce_failure`` and ``--hypothesis-seed`` rely on."""

    def record(seed_value: int) -> list[list[str]]:
        traces: list[list[str]] = []

        @seed(seed_value)
        @settings(max_examples=5, database=None, derandomize=False)
        @given(st.tuples(scenarios(), schedules()))
        def run(args: tuple[Scenario, Schedule]) -> None:
            traces.append(normalized(run_scenario(*args, backend=backend).events))

        run()
        return traces

    first, second = record(4), record(4)
    for one, other in zip(first, second, strict=True):
        assert one == other
    assert len({str(t) for t in first}) > 1  # and the examples differ from each other
