"""jobctl.testing: check that job flows keep jobctl's isolation invariants.

jobctl's promise is isolation: an async job (a migration, a backup) and the
regular jobs that run beside it never trip over each other on the VM's
monitor. This package is how jobctl proves it in its own test suite, and how
a manager built on jobctl checks its own flows. It needs the ``testing``
extra (``pip install 'virt-jobctl[testing]'``: Hypothesis and pytest).

The invariants
==============

Checked on the trace (:class:`~jobctl.TraceHub`), every event of every run:

1. The monitor has one holder and never two commands in flight.
2. While an async job runs outside an interruptible section, no regular job
   is active; the async job never uses the monitor inside a section.
3. A regular job that begins while an async job runs begins inside a section
   and is of an allowed kind.
4. Leaving a section, the async job does nothing until every regular job
   that began in it has ended (the barrier); no command of another job lands
   between two commands of one non-interruptible stretch.
5. QUERY jobs share with QUERY jobs; every other kind is exclusive.
6. Every request begins or fails with its typed error within bounded time;
   nothing deadlocks; waiters are served first come, first served.
7. Whatever was cancelled, aborted, destroyed or faulted, the domain ends
   idle and consistent.

The pieces
==========

* :class:`TraceRecorder` records a hub's events; :func:`check_invariants`
  (or :class:`InvariantChecker`, online) raises :class:`InvariantViolation`,
  whose message names the invariant and shows the events involved (seq,
  time, domain, job) and the domain's events just before.
* :class:`ScriptedMonitor` is an in-memory monitor with replies, latency,
  faults, a gate that holds commands (:meth:`~ScriptedMonitor.hold`) and a
  detector of overlapping commands. :func:`open_simulated_vm` starts a
  simulated QEMU (:mod:`jobctl_simulators.qemu`) with jobctl's QMP client and a
  domain over it. :func:`open_host_pair` opens two hosts that migrate to each
  other, simulated or (``qemu=True``) real QEMU: what the examples run on.
* Faults are the simulator's, re-exported here: :class:`Latency`,
  :class:`Stall`, :class:`ErrorReply`, :class:`Drop`, :class:`Garbage`,
  :class:`Die`, scripted by a :class:`FaultRule` (this command, its n-th
  time) in a :class:`FaultPlan`. The scripted monitor, a plan's monitor
  (:class:`DomainPlan`), the simulated VM and the simulated host
  (:data:`FaultPolicy`) all take them.
* Plans (:class:`Scenario`, :class:`DomainPlan`, :class:`RegularJobPlan`,
  :class:`AsyncJobPlan` with steps :class:`Phase`, :class:`Commands`,
  :class:`Window`, :class:`Allow`, :class:`Fail`, :class:`AbortPlan`) are
  frozen values that print as Python; :func:`play_plan` plays one on a
  domain, :func:`run_scenario` plays a whole scenario in virtual time and
  checks it.
* Hypothesis strategies: :func:`scenarios`, :func:`domain_plans`,
  :func:`regular_job_plans`, :func:`async_job_plans`, :func:`abort_plans`,
  :func:`monitor_faults`, and :func:`schedules`. Under Hypothesis trio's
  scheduler is seeded the same for every example, so the interleaving is
  drawn instead: a :class:`Schedule` says how often each actor yields at
  each decision point.
* :func:`run_virtual` runs one trio run on virtual time with a seeded
  scheduler: one run per Hypothesis example, reproducible.
  :class:`SteppedRun` keeps one run alive across the rules of a Hypothesis
  ``RuleBasedStateMachine`` (trio's guest mode).
* :mod:`jobctl.testing.pytest_plugin`: fixtures ``jobctl_trace``,
  ``simulated_host`` and ``simulated_vm``.

Testing your own flow
=====================

A property that runs your migration under any background load and schedule
(the complete, runnable example is ``tests/properties/test_user_example.py``
in jobctl's repository)::

    from hypothesis import given
    from jobctl_simulators.qemu import SimulatedHost
    from jobctl.testing import (TraceRecorder, check_invariants, domain_plans,
                                open_simulated_vm, play_plan, run_virtual, schedules)

    @given(load=domain_plans("src", max_async_jobs=0, faults=False), schedule=schedules())
    def test_migration_under_any_load(load, schedule):
        async def main():
            with TraceRecorder() as recorder:
                host = SimulatedHost()
                # load=: the drawn load's latency, faults and wait timeout
                async with open_simulated_vm("src", host=host, load=load,
                                             trace=recorder.hub) as src, \\
                           open_simulated_vm("dst", host=host, incoming=URI):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(play_plan, src.domain, load, schedule.cursor())
                        try:
                            await my_migrate(src.domain, URI)       # your flow
                        except JobAbortedError:
                            pass                                    # the load aborted it
                assert host.detector.violation_count == 0
            check_invariants(recorder.events, max_wait=load.max_wait())

        run_virtual(main)

And an example test with the fixtures (``@pytest.mark.anyio``)::

    async def test_migrate(simulated_vm, simulated_host, jobctl_trace):
        async with open_simulated_vm("dst", host=simulated_host, incoming=URI):
            assert await my_migrate(simulated_vm.domain, URI) == "completed"
        # at teardown: the trace keeps the invariants, QEMU saw one command at a time

Replaying a failure
===================

A failing example shrinks to a short scenario, printed as Python. Hypothesis
also prints ``@reproduce_failure("<version>", b"...")``: add it to the test
to replay exactly that example; or rerun with the printed
``--hypothesis-seed``. Runs are deterministic (virtual time, seeded
scheduler), so the printed scenario and schedule replay on their own too:
``run_scenario(Scenario(...), Schedule(...))``.
"""

from typing import TYPE_CHECKING, Any

from jobctl._public import publish
from jobctl.testing._decisions import INSTANT, REAL_TIME_INSTANT
from jobctl.testing._format import format_event, format_events
from jobctl.testing._host_pair import HostPair, open_host_pair
from jobctl.testing._invariants import (
    INVARIANTS,
    DomainModel,
    InvariantChecker,
    InvariantViolation,
    Violation,
    check_invariants,
)
from jobctl.testing._monitor import (
    MonitorOverlap,
    ScriptedMonitor,
    ScriptedMonitorClosedError,
    ScriptedMonitorStatistics,
    ScriptedReplyError,
)
from jobctl.testing._plans import (
    AbortPlan,
    Allow,
    AsyncJobPlan,
    Commands,
    DomainPlan,
    Fail,
    Phase,
    RegularJobPlan,
    Scenario,
    Step,
    Window,
)
from jobctl.testing._postgres import (
    PostgresNotFoundError,
    PostgresStartError,
    ThrowawayPostgres,
    throwaway_postgres,
)
from jobctl.testing._recorder import TraceRecorder
from jobctl.testing._runner import (
    BACKENDS,
    ActorOutcome,
    Backend,
    PlannedFailure,
    ScenarioResult,
    play_plan,
    run_scenario,
    run_virtual,
    virtual_backend,
)
from jobctl.testing._schedule import Schedule, ScheduleCursor
from jobctl.testing._sim_host import FaultPolicy, SimulatedBackend, open_simulated_host
from jobctl.testing._simulated import (
    SimulatedVM,
    drawn_monitor_faults,
    fault_plan,
    open_simulated_vm,
)
from jobctl.testing._stepped import SteppedRun, SteppedRunError
from jobctl.testing._virtual import VirtualEventLoop
from jobctl_simulators.qemu import (
    Die,
    Drop,
    ErrorReply,
    Fault,
    FaultPlan,
    FaultRule,
    Garbage,
    Latency,
    Stall,
)

if TYPE_CHECKING:
    from jobctl.testing._strategies import (
        abort_plans,
        async_job_plans,
        domain_plans,
        monitor_faults,
        regular_job_plans,
        scenarios,
        schedules,
    )

# The Hypothesis strategies load on first use, so that the recorder, the
# checker and the monitors work without Hypothesis installed.
_STRATEGIES = frozenset(
    {
        "abort_plans",
        "async_job_plans",
        "domain_plans",
        "monitor_faults",
        "regular_job_plans",
        "scenarios",
        "schedules",
    }
)


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        from jobctl.testing import _strategies

        value = getattr(_strategies, name)
        value.__module__ = __name__  # its public path, as the eager names'
        return value
    raise AttributeError(f"module 'jobctl.testing' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "INSTANT",
    "INVARIANTS",
    "REAL_TIME_INSTANT",
    "AbortPlan",
    "ActorOutcome",
    "Allow",
    "AsyncJobPlan",
    "Backend",
    "Commands",
    "Die",
    "DomainModel",
    "DomainPlan",
    "Drop",
    "ErrorReply",
    "Fail",
    "Fault",
    "FaultPlan",
    "FaultPolicy",
    "FaultRule",
    "Garbage",
    "HostPair",
    "InvariantChecker",
    "InvariantViolation",
    "Latency",
    "MonitorOverlap",
    "Phase",
    "PlannedFailure",
    "PostgresNotFoundError",
    "PostgresStartError",
    "RegularJobPlan",
    "Scenario",
    "ScenarioResult",
    "Schedule",
    "ScheduleCursor",
    "ScriptedMonitor",
    "ScriptedMonitorClosedError",
    "ScriptedMonitorStatistics",
    "ScriptedReplyError",
    "SimulatedBackend",
    "SimulatedVM",
    "Stall",
    "Step",
    "SteppedRun",
    "SteppedRunError",
    "ThrowawayPostgres",
    "TraceRecorder",
    "Violation",
    "VirtualEventLoop",
    "Window",
    "abort_plans",
    "async_job_plans",
    "check_invariants",
    "domain_plans",
    "drawn_monitor_faults",
    "fault_plan",
    "format_event",
    "format_events",
    "monitor_faults",
    "open_host_pair",
    "open_simulated_host",
    "open_simulated_vm",
    "play_plan",
    "regular_job_plans",
    "run_scenario",
    "run_virtual",
    "scenarios",
    "schedules",
    "throwaway_postgres",
    "virtual_backend",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
