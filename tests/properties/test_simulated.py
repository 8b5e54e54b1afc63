"""The scenario properties over the simulated QEMU: jobctl's QMP client
talks to simulated VMs, and invariant 1 is also checked from the VM's side,
by the simulator's concurrency detector."""

from __future__ import annotations

import pytest
from hypothesis import given

from jobctl import AsyncJob, Job
from jobctl.testing import (
    AsyncJobPlan,
    Commands,
    Die,
    DomainPlan,
    ErrorReply,
    FaultRule,
    InvariantViolation,
    RegularJobPlan,
    Scenario,
    Window,
    run_scenario,
)

from ._bugs import BUGS
from ._suite import PROPERTIES, Example


@given(example=PROPERTIES["scenarios"])
def test_every_scenario_keeps_the_invariants_over_the_simulator(example: Example) -> None:
    run_scenario(*example, simulated=True)


def test_faults_reach_the_jobs_as_typed_errors() -> None:
    plan = DomainPlan(
        "vm",
        jobs=(
            RegularJobPlan("first", Job.QUERY, commands=1),
            RegularJobPlan("second", Job.QUERY, start=1.0, commands=1),
            RegularJobPlan("third", Job.QUERY, start=2.0, commands=1),
        ),
        faults=(FaultRule(ErrorReply(), nth=1), FaultRule(Die(), nth=2)),
    )
    result = run_scenario(Scenario((plan,)), simulated=True)
    got = {o.owner: o.result for o in result.outcomes}
    assert got == {"first": "monitor_error", "second": "monitor_closed", "third": "monitor_closed"}


def test_the_simulator_sees_a_monitor_released_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the monitor handed on before the reply, the QMP client pipelines
    two commands and the simulated VM's detector counts it."""
    BUGS["monitor_released_before_reply"].plant(monkeypatch)
    plan = DomainPlan(
        "vm",
        jobs=(
            RegularJobPlan("a", Job.QUERY, commands=1),
            RegularJobPlan("b", Job.QUERY, commands=1),
        ),
        async_jobs=(AsyncJobPlan("m", AsyncJob.SAVE, start=1.0, steps=(Commands(1), Window(1.0))),),
        latency=(0.5,),
    )
    with pytest.raises(InvariantViolation) as info:
        run_scenario(Scenario((plan,)), simulated=True)
    seen_by_vm = [v for v in info.value.violations if "simulated VM got" in v.message]
    assert seen_by_vm and {v.invariant for v in seen_by_vm} == {1}
