"""A VM's observed state (``vm.observed``): read at once, whatever QEMU does.

Reads never await and never enter the monitor: 10,000 of them, each in a
zero deadline, during a migration and while QEMU's main loop is stalled,
none times out. The values and their ages follow QEMU's events and the
answers the flows and domstats get. ``domstats(vm, max_age=...)`` runs a
QUERY job only when an observed value is older than ``max_age``.
"""

from __future__ import annotations

import datetime
from typing import Any

import anyio
import pytest

from jobctl import AsyncJob, Job, JobTimeoutError, TraceEvent, TraceKind
from jobctl.qemu import (
    VM,
    DomainStats,
    ObservedState,
    destroy,
    domstats,
    migrate,
)
from jobctl.testing import BACKENDS, FaultPlan, FaultRule, Stall, virtual_backend
from jobctl_simulators.qemu import MigrationModel

from ._hosts import LATENCY, OPTIONS, Hosts, hosts

pytestmark = pytest.mark.anyio

READS = 10_000
#: QEMU's main loop freezes this long on the second query-blockstats.
STALL = 5.0
#: Migrations whose switchover stalls QEMU for 0.2 s.
SWITCHOVER = MigrationModel(link_speed=float(256 << 20), device_state_time=0.2)


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Virtual time on trio and on asyncio."""
    return virtual_backend(request.param)


def read(vm: VM) -> tuple[ObservedState | None, bool]:
    """One read in a zero deadline: the state, and whether it timed out
    (it would, had it waited for anything)."""
    try:
        # A read that reached a checkpoint would be cancelled here at once.
        with anyio.fail_after(0):  # noqa: ASYNC100
            state = vm.observed
    except TimeoutError:
        return None, True
    assert isinstance(state, ObservedState)  # a value, nothing to await
    return state, False


def queries(h: Hosts, vm: VM) -> int:
    """QUERY jobs begun on the VM's domain so far."""
    return sum(
        1 for e in h.recorder.of(TraceKind.JOB_BEGIN, domain=vm.name) if e.job == Job.QUERY.name
    )


def phase_changes(h: Hosts, vm: VM) -> dict[str, float]:
    """When each phase of the VM's domain was last named."""
    return {e.detail["phase"]: e.time for e in h.recorder.of(TraceKind.ASYNC_PHASE, domain=vm.name)}


async def test_reads_during_a_migration_never_wait_and_follow_it() -> None:
    # The switchover stalls every command for 0.2 s: reads go on.
    async with hosts(migration=SWITCHOVER) as h:
        src, dst = await h.started()
        await domstats(src)
        seen: list[ObservedState] = []
        reads = timeouts = 0
        migrated = False

        async def reader() -> None:
            # At least READS reads, and on until the migration has ended, so
            # that the switchover is read whenever it comes.
            nonlocal reads, timeouts
            n = 0
            while n < READS or not migrated:
                state, timed_out = read(src)
                reads += 1
                timeouts += timed_out
                if state is not None and n % 25 == 0:
                    seen.append(state)
                if n % 25 == 24:
                    await anyio.sleep(0.001)  # spread the reads over the migration
                n += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            result = await migrate(src, dst, OPTIONS)
            migrated = True
        after, there = src.observed, dst.observed
        await destroy(dst)
    h.check()
    assert reads >= READS and timeouts == 0
    during = [s for s in seen if s.job is not None and s.job.kind is AsyncJob.MIGRATION_OUT]
    assert len(during) > 50, len(during)
    # The phase and when it was named, as the trace tells it.
    phases = phase_changes(h, src)
    for state in during:
        assert state.job is not None and state.job.phase_since == phases[state.job.phase]
    statuses = [s.migration.status for s in during if s.migration is not None]
    assert "active" in statuses
    switching = [s for s in during if s.run is not None and s.run.status == "finish-migrate"]
    assert len(switching) > 5 and all(s.run and s.run.via == "STOP" for s in switching)
    # Figures from the flow's own polls: bytes only grow, passes too.
    figures = [s.migration for s in during if s.migration is not None and s.migration.figures]
    sent = [m.transferred for m in figures if m.transferred is not None]
    assert len(sent) >= 2 and sent == sorted(sent)
    passes = [m.passes for m in figures if m.passes is not None]
    assert passes == sorted(passes) and passes[-1] >= 1
    # Every stamp is from before its snapshot. The migration's figures are
    # renewed by the flow's polls (every 0.05 s); the run state only by what
    # tells it (a query, an event), so it may grow old while the destination
    # starts (under virtual time that start's real work, the simulated
    # destination's unix listener, which anyio sets up in a worker thread,
    # lets the clock jump on by as much as the reader's sleeps allow: 1 to
    # 4.5 virtual seconds were seen, so no bound holds there).
    for state in seen:
        assert state.monotonic is not None
        if state.run is not None:
            assert 0 <= state.run.observed.monotonic <= state.monotonic
        if state.migration is not None:
            assert state.migration.observed.monotonic <= state.monotonic
            assert state.age(state.migration.observed) < 1.0
    # The end: the source's QEMU is gone, the migration's final figures stay.
    assert after.run is not None and (after.run.status, after.run.via) == ("shutoff", "detach")
    assert after.migration is not None and after.migration.status == "completed"
    assert after.migration.downtime == result.progress.downtime
    assert after.job is None
    assert there.run is not None and (there.run.status, there.run.via) == ("running", "RESUME")
    assert there.migration is not None and there.migration.status == "completed"


async def test_reads_while_qemu_is_stalled_never_wait() -> None:
    stall = FaultPlan((FaultRule(Stall(STALL), "query-blockstats", nth=2),))
    async with hosts(faults_a=lambda name, incoming: stall) as h:
        vm, _ = await h.started()
        fresh = await domstats(vm)  # the first query-blockstats
        before = queries(h, vm)
        stuck: list[Any] = []

        async def stalled() -> None:
            stuck.append(await domstats(vm))  # the second: QEMU stalls

        async with anyio.create_task_group() as tg:
            tg.start_soon(stalled)
            await anyio.sleep(1.0)
            assert not stuck  # QEMU is stalled, the query waits
            timeouts = 0
            for _ in range(READS):
                state, timed_out = read(vm)
                timeouts += timed_out
                assert state is None or (state.run is not None and state.run.running)
            assert timeouts == 0
            # domstats with max_age answers from the observed state: with
            # timeout=0, a QUERY job would time out at once.
            for _ in range(READS):
                try:
                    stats = await domstats(vm, max_age=60.0, timeout=0)
                except JobTimeoutError:
                    timeouts += 1
            assert timeouts == 0 and stats.observed
            # Young enough: domstats answers from the observed state, with no
            # job, no monitor and no await (a cancelled scope would show one).
            with anyio.CancelScope() as scope:
                scope.cancel()
                stats = await domstats(vm, max_age=60.0, timeout=0.01)
            assert not scope.cancelled_caught
            assert stats.observed and stats.state == "running" and stats.block == fresh.block
            assert queries(h, vm) == before + 1  # the stalled one only
            # Too old: a QUERY job, which waits for the stalled monitor.
            with pytest.raises(JobTimeoutError, match="monitor was not free"):
                await domstats(vm, max_age=0.5, timeout=0.2)
            assert queries(h, vm) == before + 2
        assert stuck[0].state == "running" and not stuck[0].observed
        await destroy(vm)
    h.check()


async def test_ages_and_values_follow_events_and_answers() -> None:
    async with hosts() as h:
        vm, _ = await h.started()
        assert vm.observed.run is None  # nothing observed yet
        began = anyio.current_time()
        stats = await domstats(vm)
        state = vm.observed
        assert state.run is not None and state.block is not None
        assert (state.run.status, state.run.running, state.run.via) == (
            "running",
            True,
            "query-status",
        )
        assert state.block.devices == stats.block and stats.block[0].node == "disk0"
        assert began < state.run.observed.monotonic <= state.block.observed.monotonic
        assert state.run.observed.utc.tzinfo is datetime.UTC
        await anyio.sleep(2.0)
        older = vm.observed
        assert older.age(older.run and older.run.observed) == pytest.approx(
            2.0 + state.age(state.run.observed)
        )

        async def command(name: str) -> TraceEvent:
            async with vm.domain.job(Job.SUSPEND) as job, job.monitor() as mon:
                await mon.execute(name)
            return h.recorder.of(TraceKind.COMMAND_SENT, domain=vm.name)[-1]

        sent = await command("stop")
        stopped = vm.observed
        assert stopped.run is not None
        assert (stopped.run.status, stopped.run.running, stopped.run.via) == (
            "paused",
            False,
            "STOP",
        )
        # QEMU sends the event as the command runs, before it answers.
        assert stopped.run.observed.monotonic == sent.time
        await anyio.sleep(1.0)
        await command("cont")
        resumed = vm.observed
        assert resumed.run is not None and (resumed.run.status, resumed.run.via) == (
            "running",
            "RESUME",
        )
        # Read once the answer came: the event is one command's latency old.
        assert resumed.age(resumed.run.observed) == pytest.approx(LATENCY)
        assert resumed.block == state.block  # nothing told anything new of the disks
        await destroy(vm)
        gone = vm.observed
        assert gone.run is not None and (gone.run.status, gone.run.via) == ("shutoff", "detach")
        assert gone.block is not None and gone.block.devices == ()
    h.check()


async def test_max_age_runs_a_query_only_when_stale() -> None:
    async with hosts() as h:
        src, dst = await h.started()
        with pytest.raises(TypeError, match="pass the VM"):
            await domstats(src.domain, max_age=1.0)
        with pytest.raises(ValueError, match="max_age"):
            await domstats(src, max_age=-1.0)
        first = await domstats(src, max_age=1.0)  # nothing observed: a query
        assert not first.observed and queries(h, src) == 1
        again = await domstats(src, max_age=1.0)
        assert again.observed and queries(h, src) == 1
        assert (again.state, again.running, again.block) == (first.state, True, first.block)
        assert again.time < first.time  # when its oldest value was observed
        await anyio.sleep(1.5)
        stale = await domstats(src, max_age=1.0)
        assert not stale.observed and queries(h, src) == 2
        assert (await domstats(src, max_age=1.0)).observed and queries(h, src) == 2

        # During a migration: the flow's own polls keep the figures young.
        during: list[Any] = []

        async def poll() -> None:
            while True:
                stats = await domstats(src, max_age=0.2)
                during.append(stats)
                if stats.state == "shutoff":
                    return
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await migrate(src, dst, OPTIONS)
        migrating = [s for s in during if s.migration is not None]
        assert any(s.observed for s in migrating) and any(not s.observed for s in during)
        assert all(s.migration.active for s in migrating)
        assert during[-1].state == "shutoff"
        # Once the VM left: shutoff, from the observed state.
        count = queries(h, src)
        gone = await domstats(src, max_age=10.0)
        assert gone.observed and gone.state == "shutoff" and queries(h, src) == count
        await destroy(dst)
    h.check()


async def test_a_fresh_domstats_tells_the_observer_what_it_read() -> None:
    """Each answer of a fresh domstats is the observed state's at once: the
    run state, the block counters and, in a migration's section, its
    figures, each stamped when domstats read it (within the call)."""
    async with hosts() as h:
        src, dst = await h.started()
        checked = 0

        def within(stamp: float, began: float, stats: DomainStats) -> bool:
            return began <= stamp <= stats.time

        async def poll() -> None:
            nonlocal checked
            while True:
                began = anyio.current_time()
                stats = await domstats(src)
                if stats.state == "shutoff":
                    return
                state = src.observed
                assert state.run is not None and state.block is not None
                # (An event read during the call, after query-status, may be newer.)
                assert within(state.run.observed.monotonic, began, stats)
                assert state.run.status == stats.state or state.run.via != "query-status"
                assert within(state.block.observed.monotonic, began, stats)
                assert state.block.devices == stats.block and stats.block
                if stats.migration is not None:
                    figures = state.migration
                    assert figures is not None and figures.figures is not None
                    assert within(figures.figures.monotonic, began, stats)
                    assert figures.transferred == stats.migration.transferred
                    checked += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await migrate(src, dst, OPTIONS)
        await destroy(dst)
    h.check()
    assert checked > 3, checked
