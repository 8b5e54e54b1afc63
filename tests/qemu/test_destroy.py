"""destroy gets through a QEMU that does not answer, and a flow's ``timeout``
bounds its monitor commands (simulated QEMU, on trio's MockClock and asyncio).

A :class:`~jobctl_simulators.qemu.Stall` fault freezes the simulated QEMU's main
loop: every command of every monitor waits, as on a SIGSTOPped QEMU. The same
cases on real QEMU (SIGSTOP) are in ``test_real_qemu.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio
import trio
import trio.testing

from jobctl import Job, JobAbortedError, JobTimeoutError, TraceEvent, TraceKind
from jobctl.qemu import (
    VM,
    BackupTarget,
    MigrationError,
    MigrationOptions,
    RestoreError,
    backup,
    destroy,
    domstats,
    migrate,
    restore,
    save,
)
from jobctl.qmp import QMPClosedError
from jobctl.testing import (
    INSTANT,
    REAL_TIME_INSTANT,
    FaultPolicy,
    InvariantChecker,
    TraceRecorder,
    open_simulated_host,
)
from jobctl_simulators.qemu import (
    BackupModel,
    ConcurrencyDetector,
    FaultPlan,
    FaultRule,
    MigrationModel,
    SimulatedHost,
    Stall,
)

from ._support import FAST, Cluster

pytestmark = pytest.mark.anyio

#: A stall that outlasts every test: a stopped QEMU that never resumes.
STOPPED = Stall(1e9)
#: 64 MiB at 64 MiB/s: a second, long enough to act in the middle.
SLOW = MigrationModel(link_speed=float(64 << 20))
OPTIONS = MigrationOptions(bandwidth=1 << 30, poll_interval=0.05, cleanup_timeout=60)
MiB = 1 << 20
#: How long a host lets a machine quit before it kills it: far beyond every
#: destroy's timeout, so a destroy that asked QEMU to quit would be seen.
STOP_TIMEOUT = 30.0


@asynccontextmanager
async def cluster(
    *, faults_b: FaultPolicy | None = None, migration: MigrationModel = FAST
) -> AsyncIterator[Cluster]:
    """``_support.cluster`` (a strict concurrency detector), with hosts that
    wait :data:`STOP_TIMEOUT` for a machine to quit."""
    sim = SimulatedHost(detector=ConcurrencyDetector(strict=True), network=True)
    with TraceRecorder() as trace:
        async with (
            open_simulated_host("a", sim=sim, migration=migration, stop_timeout=STOP_TIMEOUT) as a,
            open_simulated_host(
                "b", sim=sim, migration=migration, faults=faults_b, stop_timeout=STOP_TIMEOUT
            ) as b,
        ):
            yield Cluster(a, b, sim, trace)


@contextmanager
def hangs(c: Cluster, vm: VM, command: str, stall: Stall = STOPPED) -> Iterator[anyio.Event]:
    """The VM's QEMU (on host a) freezes at the next ``command`` a job of its
    domain sends, as if SIGSTOPped; the event is set once it was sent.

    The stall is scripted as the command is sent, before QEMU can read it,
    and a domain has one command in flight: it hits exactly that command.
    """
    assert vm.machine is not None
    qemu = c.a.backend.qemu(vm.machine)
    event = anyio.Event()

    def listener(e: TraceEvent) -> None:
        if (
            not event.is_set()
            and e.kind is TraceKind.COMMAND_SENT
            and e.domain == vm.name
            and e.detail["command"] == command
        ):
            qemu.faults.add(FaultRule(stall, command, nth=1))
            event.set()

    subscription = c.trace.hub.subscribe(listener)
    try:
        yield event
    finally:
        subscription.close()


def check(c: Cluster) -> None:
    """The trace's invariants; off trio's MockClock, "at once" and "by its
    timeout" within real time's slack (:data:`REAL_TIME_INSTANT`)."""
    virtual = sniffio.current_async_library() == "trio" and isinstance(
        trio.lowlevel.current_clock(), trio.testing.MockClock
    )
    checker = InvariantChecker(instant=INSTANT if virtual else REAL_TIME_INSTANT)
    checker.feed_all(c.trace.events)
    checker.finish()
    checker.check()


def reaped(c: Cluster, vm: VM) -> None:
    """The VM's QEMU on host a is gone, killed, and its domain idle."""
    assert vm.machine is None and vm.domain.monitor is None and c.a.machines == ()
    assert vm.domain.info().idle


async def test_destroy_kills_a_stopped_qemu_under_a_stuck_query() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        machine = vm.machine
        assert machine is not None
        errors: list[BaseException] = []

        async def stuck() -> None:
            # Its own timeout is far beyond destroy's: only the kill can end it.
            with pytest.raises(QMPClosedError) as info:
                await domstats(vm.domain, timeout=600)
            errors.append(info.value)

        with hangs(c, vm, "query-status") as asked:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stuck)
                await asked.wait()
                await destroy(vm, timeout=10)
                # DESTROY began only once the query had ended: it failed already.
                assert len(errors) == 1
        assert machine.stopped and machine.exit_status == -9
        reaped(c, vm)
        await destroy(vm)  # nothing runs: nothing to do
        assert vm.domain.info().idle
    check(c)


async def test_destroy_of_a_vm_that_does_not_run_does_nothing() -> None:
    async with cluster() as c:
        vm, _ = c.vms()
        await destroy(vm, timeout=1)
        assert vm.machine is None and vm.domain.info().idle
        assert [e.detail["outcome"] for e in c.trace.of(TraceKind.JOB_END)] == ["ok"]
        with pytest.raises(ValueError, match="timeout"):
            await destroy(vm, timeout=-1)
    check(c)


async def test_destroy_kills_first_even_when_its_job_must_wait() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        machine = vm.machine
        assert machine is not None
        holding, release = anyio.Event(), anyio.Event()

        async def hold() -> None:
            async with vm.domain.job(Job.MODIFY, owner="holder"):  # no monitor work
                holding.set()
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await holding.wait()
            with pytest.raises(JobTimeoutError, match="'holder'"):
                await destroy(vm, timeout=1)
            with anyio.fail_after(60):
                await machine.wait_stopped()  # killed all the same
            assert machine.exit_status == -9
            release.set()
        await destroy(vm)
        reaped(c, vm)
    check(c)


async def test_domstats_timeout_bounds_a_command_qemu_does_not_answer() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        before = anyio.current_time()
        with hangs(c, vm, "query-status", Stall(3.0)), pytest.raises(JobTimeoutError) as info:
            await domstats(vm.domain, timeout=0.5)  # QEMU stopped for 3 s, then resumed
        assert anyio.current_time() - before < 3.0  # not the stall's end (bound against hangs)
        message = str(info.value)
        assert "'vm1@a'" in message and "query-status did not answer within 0.5 s" in message
        assert vm.domain.info().idle  # no job, no monitor holder left behind
        # The unanswered command's reply comes once QEMU runs again; then it works.
        with anyio.fail_after(60):
            assert (await domstats(vm.domain)).state == "running"
        assert vm.domain.info().idle
        await destroy(vm)
    check(c)
    assert c.violations == 0  # the cancelled command stayed alone on the wire


async def test_domstats_timeout_bounds_the_wait_for_the_monitor() -> None:
    async with cluster() as c:
        vm, _ = await c.started()
        errors: list[BaseException] = []

        async def first() -> None:
            with pytest.raises(QMPClosedError) as info:
                await domstats(vm.domain, timeout=600)
            errors.append(info.value)

        with hangs(c, vm, "query-status") as asked:
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await asked.wait()
                # A second query shares the domain and waits for the monitor.
                with pytest.raises(JobTimeoutError, match="the monitor was not free within 1 s"):
                    await domstats(vm.domain, timeout=1)
                info = vm.domain.info()
                assert len(info.regular_jobs) == 1 and not info.waiters
                await destroy(vm, timeout=10)
        assert len(errors) == 1
        reaped(c, vm)
    check(c)


async def test_destroy_preempts_a_backup_stuck_in_a_command() -> None:
    async with cluster() as c:
        c.a.backend.backup_model = BackupModel(throughput=float(16 * MiB))  # 4 s for 64 MiB
        vm, _ = await c.started()
        machine = vm.machine
        assert machine is not None
        outcome: list[JobAbortedError] = []

        async def run() -> None:
            with pytest.raises(JobAbortedError) as info:
                await backup(vm, BackupTarget("backup0"), poll_interval=0.05, cleanup_timeout=600)
            outcome.append(info.value)

        with machine.qmp.subscribe("JOB_STATUS_CHANGE") as events:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while (await events.receive()).data["status"] != "running":
                    pass
                with hangs(c, vm, "query-jobs") as asked:  # the backup's own poll
                    await asked.wait()
                assert vm.domain.info().monitor_holder is not None
                # Without the kill, the clean-up would wait for QEMU (600 s).
                await destroy(vm, timeout=10)
        assert outcome[0].reason == "destroyed"
        assert machine.exit_status == -9
        reaped(c, vm)
        completed = vm.domain.info().completed_async_job
        assert completed is not None and completed.outcome == "destroyed"
    check(c)


async def test_destroy_preempts_a_migration_while_a_query_is_stuck() -> None:
    async with cluster(migration=SLOW) as c:
        src, dst = await c.started()
        machine = src.machine
        assert machine is not None
        outcome: dict[str, BaseException] = {}

        async def run() -> None:
            with pytest.raises(JobAbortedError) as info:
                await migrate(src, dst, OPTIONS)
            outcome["migrate"] = info.value

        async def query() -> None:
            with pytest.raises(QMPClosedError) as info:
                await domstats(src.domain, timeout=600)
            outcome["domstats"] = info.value

        with machine.qmp.subscribe("MIGRATION") as events:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while (await events.receive()).data["status"] != "active":
                    pass
                # Only domstats sends query-status now: it hangs, inside a section.
                with hangs(c, src, "query-status") as asked:
                    tg.start_soon(query)
                    await asked.wait()
                await destroy(src, timeout=10)
        error = outcome["migrate"]
        assert isinstance(error, JobAbortedError) and error.reason == "destroyed"
        assert isinstance(outcome["domstats"], QMPClosedError)
        assert machine.exit_status == -9
        reaped(c, src)
        assert dst.machine is None and c.b.machines == () and dst.domain.info().idle
    check(c)


async def test_the_destination_must_answer_cont_within_finish_timeout() -> None:
    # No disk: a source whose images the destination took could not resume.
    cont_stalls = lambda name, incoming: FaultPlan((FaultRule(Stall(2.0), "cont"),))  # noqa: E731
    async with cluster(faults_b=cont_stalls) as c:
        src, dst = await c.started(disk=False)
        with pytest.raises(MigrationError, match="cont did not answer within 1 s") as info:
            await migrate(src, dst, MigrationOptions(bandwidth=1 << 30, finish_timeout=1))
        assert info.value.side == "destination"
        assert src.machine is not None and (await domstats(src.domain)).state == "running"
        assert dst.machine is None and c.b.machines == ()
        assert src.domain.info().idle and dst.domain.info().idle
        await destroy(src)
    check(c)


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])  # real time: a real socket
async def test_restore_timeout_bounds_its_commands(anyio_backend: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "vm1.save")
    async with cluster() as c:
        vm, _ = await c.started()
        assert vm.machine is not None
        spec = vm.machine.spec
        await save(vm, path)
        stalls = FaultPlan((FaultRule(Stall(2.0), "migrate-incoming"),))
        c.a.backend.faults = lambda name, incoming: stalls if incoming else None
        with anyio.fail_after(60):
            with pytest.raises(
                RestoreError, match=r"migrate-incoming did not answer within 0\.5 s"
            ):
                await restore(vm, spec, path, timeout=0.5)
        assert vm.machine is None and c.a.machines == () and vm.domain.info().idle
        c.a.backend.faults = None
        assert (await restore(vm, spec, path)).running
        await destroy(vm)
    check(c)
