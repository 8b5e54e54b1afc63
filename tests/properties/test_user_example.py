"""A user testing their own migration flow with ``jobctl.testing``.

This is the example the ``jobctl.testing`` docs point to. The "user" wrote
``migrate()``, a manager's outgoing migration built on jobctl's job core,
and checks it two ways:

1. An example test with the pytest fixtures: a simulated source VM (the
   ``simulated_vm`` fixture, whose monitor answers after drawn latencies),
   a destination VM, a statistics poller running beside the migration; at
   teardown ``jobctl_trace`` checks the invariants and ``simulated_host``
   checks that QEMU never saw two commands in flight.
2. A Hypothesis property: the same flow under a drawn background load
   (queries, modifications, aborts, destroys, cancellations, the monitor's
   latency and faults) and a drawn schedule; whatever happens, the flow ends
   as it should, QEMU never saw two commands in flight and the trace keeps
   every invariant. A failure shrinks to a small load and replays from the
   ``@reproduce_failure`` line Hypothesis prints.

Both run on trio and on asyncio, in virtual time. Copy this file, put your
flow in place of ``migrate`` and enable the fixtures with
``pytest_plugins = ["jobctl.testing.pytest_plugin"]`` in your top-level
``conftest.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import example, given, settings

from jobctl import AsyncJob, Domain, Job, JobAbortedError, JobTimeoutError
from jobctl.qmp import QMPError
from jobctl.testing import (
    BACKENDS,
    AbortPlan,
    Backend,
    DomainPlan,
    RegularJobPlan,
    Schedule,
    SimulatedVM,
    TraceRecorder,
    check_invariants,
    domain_plans,
    open_simulated_vm,
    play_plan,
    run_virtual,
    schedules,
    virtual_backend,
)
from jobctl_simulators.qemu import SimulatedHost

URI = "tcp:127.0.0.1:4444"

# -- the user's code ---------------------------------------------------------


class MigrationFailed(Exception):
    pass


async def migrate(dom: Domain, uri: str, *, poll: float = 0.1) -> str:
    """The flow under test: start the migration, then poll it from
    interruptible sections, so that queries and an abort may run meanwhile."""
    async with dom.async_job(
        AsyncJob.MIGRATION_OUT, allowed={Job.QUERY, Job.ABORT}, owner="migrate"
    ) as ajob:
        ajob.set_abort_hook(lambda mon: mon.execute("migrate_cancel"))
        await ajob.set_phase("perform")
        async with ajob.monitor() as mon:
            await mon.execute("migrate", {"uri": uri})
        while True:
            async with ajob.interruptible():
                await anyio.sleep(poll)
            async with ajob.monitor() as mon:
                info = await mon.execute("query-migrate")
            ajob.set_progress(info.get("ram", {}))
            if info["status"] == "completed":
                await ajob.set_phase("finish")
                return "completed"
            if info["status"] in ("failed", "cancelled"):
                raise MigrationFailed(info["status"])
    raise AssertionError("unreachable: the loop returns or raises")


async def poll_stats(dom: Domain, rounds: int) -> int:
    """A statistics poller, as a manager runs beside everything."""
    done = 0
    for _ in range(rounds):
        try:
            async with dom.job(Job.QUERY, owner="stats", timeout=1.0) as job:
                async with job.monitor() as mon:
                    await mon.execute("query-status")
                done += 1
        except JobTimeoutError:
            pass
        await anyio.sleep(0.05)
    return done


# -- 1. an example test with the fixtures --------------------------------------


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Each ``@pytest.mark.anyio`` test on trio and on asyncio, in virtual time."""
    return virtual_backend(request.param)


@pytest.mark.anyio
async def test_migration_with_a_stats_poller(
    simulated_vm: SimulatedVM, simulated_host: SimulatedHost, jobctl_trace: TraceRecorder
) -> None:
    async with open_simulated_vm("dst", host=simulated_host, incoming=URI):
        polled: list[int] = []

        async def stats() -> None:
            polled.append(await poll_stats(simulated_vm.domain, 10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(stats)
            assert await migrate(simulated_vm.domain, URI) == "completed"
    assert polled[0] > 0  # the poller got in during the sections
    assert simulated_vm.qemu.run_state == "postmigrate"
    # jobctl_trace and simulated_host check the invariants at teardown.


# -- 2. a property: the flow under any drawn load and schedule -----------------


@pytest.mark.parametrize("backend", BACKENDS)
@given(load=domain_plans("src", max_async_jobs=0), schedule=schedules())
@example(load=DomainPlan("src", aborts=(AbortPlan(0.15),)), schedule=Schedule())
@example(
    load=DomainPlan("src", jobs=(RegularJobPlan("kill", Job.DESTROY, start=0.15),)),
    schedule=Schedule(),
)
@settings(deadline=None)  # virtual time: an example's real time says nothing
def test_migration_under_any_load(backend: Backend, load: DomainPlan, schedule: Schedule) -> None:
    outcome: list[str] = []

    async def main() -> None:
        with TraceRecorder() as recorder:
            host = SimulatedHost()
            async with (
                # load=: the VM's monitor answers with the load's latency and
                # faults; the domain gets its wait_timeout and max_queued.
                open_simulated_vm("src", host=host, load=load, trace=recorder.hub) as src,
                open_simulated_vm("dst", host=host, incoming=URI),
            ):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(play_plan, src.domain, load, schedule.cursor())
                    try:
                        outcome.append(await migrate(src.domain, URI))
                    except JobAbortedError as exc:
                        outcome.append(exc.reason)  # an abort or a destroy in the load
                    except (MigrationFailed, QMPError):
                        outcome.append("failed")  # a monitor fault in the load
            assert host.detector.violation_count == 0, host.detector.violations()
        check_invariants(recorder.events, max_wait=load.max_wait())

    run_virtual(main, backend=backend)
    assert outcome[0] in ("completed", "aborted", "destroyed", "failed"), outcome
    assert outcome[0] != "failed" or load.faults, f"failed without a monitor fault: {outcome}"
