"""MIGRATION_OUT / MIGRATION_IN on the simulator: the VM moves, queries get
through, and every failure path leaves the VM running on the source."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import sniffio

from jobctl import Job, JobAbortedError, TraceEvent, TraceKind
from jobctl.qemu import (
    VM,
    FlowError,
    MigrationError,
    MigrationOptions,
    NotRunningError,
    destroy,
    domstats,
    migrate,
)
from jobctl_simulators.qemu import (
    Die,
    Drop,
    ErrorReply,
    FaultPlan,
    FaultRule,
    Latency,
    MigrationModel,
)

from ._support import Cluster, cluster

pytestmark = pytest.mark.anyio

OPTIONS = MigrationOptions(bandwidth=1 << 30, poll_interval=0.05)
#: 64 MiB at 64 MiB/s: a second, long enough to act in the middle.
SLOW = MigrationModel(link_speed=float(64 << 20))
MiB = 1 << 20


def on(command: str, fault: Any) -> Any:
    """A fault policy: ``fault`` on every ``command`` of every machine."""
    return lambda name, incoming: FaultPlan((FaultRule(fault, command),))


async def query(vm: VM, command: str) -> Any:
    async with vm.domain.job(Job.QUERY) as job, job.monitor() as mon:
        return await mon.execute(command)


async def assert_runs_on_source(c: Cluster, src: VM, dst: VM) -> None:
    """The failed migration left the VM running at the source, nothing on the
    destination, and both domains idle."""
    assert src.machine is not None and not src.machine.stopped
    assert (await domstats(src.domain)).state == "running"
    assert dst.machine is None and dst.domain.monitor is None
    assert c.b.machines == ()
    assert src.domain.info().idle and dst.domain.info().idle


async def migrate_and_act(
    src: VM, dst: VM, act: Any, expected: type[BaseException]
) -> BaseException:
    """Migrate; once the source's migration is active, ``await act()``;
    return the error the migration ended with."""
    assert src.machine is not None
    outcome: list[BaseException] = []

    async def run() -> None:
        with pytest.raises(expected) as info:
            await migrate(src, dst, OPTIONS)
        outcome.append(info.value)

    with src.machine.qmp.subscribe("MIGRATION") as events:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while (await events.receive()).data["status"] != "active":
                pass
            await act()
    return outcome[0]


async def test_the_vm_moves_to_the_destination_and_back() -> None:
    async with cluster() as c:
        src, dst = await c.started()
        first = src.machine
        result = await migrate(src, dst, OPTIONS)
        assert first is not None and first.stopped
        assert src.machine is None and src.domain.monitor is None
        assert dst.machine is not None and dst.domain.monitor is dst.machine.qmp
        assert (await domstats(dst.domain)).state == "running"
        assert (await domstats(src.domain)).state == "shutoff"
        assert result.source == "vm1@a" and result.destination == "vm1@b"
        progress = result.progress
        assert progress.status == "completed" and progress.transferred == 64 * MiB
        assert progress.total_time and progress.downtime
        back = await migrate(dst, src, OPTIONS)
        assert back.source == "vm1@b" and src.machine is not None and dst.machine is None
        await destroy(src)
    phases = [(e.domain, e.detail["phase"]) for e in c.trace.of(TraceKind.ASYNC_PHASE)]
    assert phases[1:7] == [
        ("vm1@a", "begin"),
        ("vm1@b", "prepare"),
        ("vm1@b", "prepare"),  # saved again once the destination's monitor is known
        ("vm1@a", "perform"),
        ("vm1@b", "finish"),
        ("vm1@a", "confirm"),
    ]
    outcomes = [e.detail["outcome"] for e in c.trace.of(TraceKind.ASYNC_END)]
    assert outcomes == ["ok"] * 5  # start, out, in, out, in
    c.trace.check()
    assert c.violations == 0


async def test_domstats_in_a_tight_loop_runs_inside_the_sections() -> None:
    async with cluster() as c:
        src, dst = await c.started()
        seen: list[Any] = []
        done = anyio.Event()

        async def loop() -> None:
            while not done.is_set():
                stats = await domstats(src.domain)
                seen.append(stats)
                if stats.state == "shutoff":
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(loop)
            await migrate(src, dst, OPTIONS)
            done.set()
        await destroy(dst)
    during = [s for s in seen if s.migration is not None]
    assert during and all(s.migration.active for s in during)
    assert all(s.block and s.block[0].node == "disk0" for s in seen if s.state == "running")
    begins = [e for e in c.trace.of(TraceKind.JOB_BEGIN, domain="vm1@a") if e.job == "QUERY"]
    assert any(e.detail["in_section"] for e in begins)
    progress = c.trace.of(TraceKind.ASYNC_PROGRESS, domain="vm1@a")
    assert any("transferred" in e.detail["progress"] for e in progress)
    c.trace.check()
    assert c.violations == 0


async def test_abort_cancels_the_migration_and_the_source_runs_on() -> None:
    async with cluster(migration=SLOW) as c:
        src, dst = await c.started()
        abort = lambda: src.domain.abort("operator")  # noqa: E731
        error = await migrate_and_act(src, dst, abort, JobAbortedError)
        assert isinstance(error, JobAbortedError) and error.reason == "aborted"
        await assert_runs_on_source(c, src, dst)
        assert (await query(src, "query-migrate"))["status"] == "cancelled"
        cancels = [
            e
            for e in c.trace.of(TraceKind.COMMAND_SENT, domain="vm1@a")
            if e.detail["command"] == "migrate_cancel"
        ]
        assert cancels and cancels[0].job == "ABORT"
        await destroy(src)
    c.trace.check()
    assert c.violations == 0


async def test_the_destination_dies_during_perform() -> None:
    async with cluster(migration=SLOW) as c:
        src, dst = await c.started()

        async def kill() -> None:
            assert dst.machine is not None
            c.b.backend.qemu(dst.machine).kill()
            await anyio.lowlevel.checkpoint()

        error = await migrate_and_act(src, dst, kill, MigrationError)
        # The source's migration is what failed (its stream broke).
        assert isinstance(error, MigrationError)
        assert error.side == "source" and error.status == "failed"
        assert "Broken pipe" in str(error)
        await assert_runs_on_source(c, src, dst)
        await destroy(src)
    c.trace.check()
    assert c.violations == 0


async def test_the_destination_refuses() -> None:
    async with cluster(faults_b=on("migrate-incoming", ErrorReply("no room here"))) as c:
        src, dst = await c.started()
        with pytest.raises(MigrationError, match=r"refused.*no room here") as info:
            await migrate(src, dst, OPTIONS)
        assert info.value.side == "destination"
        await assert_runs_on_source(c, src, dst)
        await destroy(src)
    c.trace.check()


async def test_the_destination_does_not_start() -> None:
    async with cluster(faults_b=on("qmp_capabilities", Die(1))) as c:
        src, dst = await c.started()
        with pytest.raises(MigrationError, match="did not start") as info:
            await migrate(src, dst, OPTIONS)
        assert info.value.side == "destination"
        await assert_runs_on_source(c, src, dst)
        await destroy(src)
    c.trace.check()


async def test_the_source_refuses_to_migrate() -> None:
    async with cluster(faults_a=on("migrate", ErrorReply("not today"))) as c:
        src, dst = await c.started()
        with pytest.raises(MigrationError, match="not today") as info:
            await migrate(src, dst, OPTIONS)
        assert info.value.side == "source"
        await assert_runs_on_source(c, src, dst)
        await destroy(src)
    c.trace.check()


async def test_the_destination_fails_to_resume_after_the_switchover() -> None:
    # No disk: a source whose images the destination took could not resume.
    async with cluster(faults_b=on("cont", ErrorReply("cannot run"))) as c:
        src, dst = await c.started(disk=False)
        with pytest.raises(MigrationError, match="cannot run") as info:
            await migrate(src, dst, OPTIONS)
        assert info.value.side == "destination"
        await assert_runs_on_source(c, src, dst)
        await destroy(src)
    c.trace.check()


async def test_the_source_monitor_closes() -> None:
    async with cluster(faults_a=on("migrate", Drop())) as c:
        src, dst = await c.started()
        machine = src.machine
        with pytest.raises(MigrationError, match="monitor closed") as info:
            await migrate(src, dst, OPTIONS)
        assert info.value.side == "source"
        # A QEMU nobody can talk to is stopped, as libvirt does on monitor EOF.
        assert machine is not None and machine.stopped
        assert src.machine is None and dst.machine is None
        assert c.a.machines == () and c.b.machines == ()
        assert src.domain.info().idle and dst.domain.info().idle
    c.trace.check()


async def test_cancelling_the_caller_cleans_up() -> None:
    async with cluster(migration=SLOW) as c:
        src, dst = await c.started()
        assert src.machine is not None
        with src.machine.qmp.subscribe("MIGRATION") as events:
            async with anyio.create_task_group() as tg:
                tg.start_soon(migrate, src, dst, OPTIONS)
                while (await events.receive()).data["status"] != "active":
                    pass
                tg.cancel_scope.cancel()
        await assert_runs_on_source(c, src, dst)
        assert (await query(src, "query-migrate"))["status"] == "cancelled"
        ends = [e.detail["outcome"] for e in c.trace.of(TraceKind.ASYNC_END, domain="vm1@a")]
        assert ends[-1] == "cancelled"
        await destroy(src)
    c.trace.check()


async def test_destroy_preempts_the_migration() -> None:
    async with cluster(migration=SLOW) as c:
        src, dst = await c.started()
        machine = src.machine
        error = await migrate_and_act(src, dst, lambda: destroy(src), JobAbortedError)
        assert isinstance(error, JobAbortedError) and error.reason == "destroyed"
        assert machine is not None and machine.stopped
        assert src.machine is None and dst.machine is None and c.b.machines == ()
        assert src.domain.info().idle and dst.domain.info().idle
    c.trace.check()


async def test_the_switchover_stall_delays_queries_not_correctness() -> None:
    stall = MigrationModel(link_speed=float(1 << 30), device_state_time=0.35)
    async with cluster(migration=stall) as c:
        src, dst = await c.started()
        latencies: list[float] = []
        done = anyio.Event()

        async def loop() -> None:
            while not done.is_set():
                began = anyio.current_time()
                if (await domstats(src.domain)).state == "shutoff":
                    return
                latencies.append(anyio.current_time() - began)

        async with anyio.create_task_group() as tg:
            tg.start_soon(loop)
            result = await migrate(src, dst, OPTIONS)
            done.set()
        # query-migrate may answer "completed" with zero times during the
        # stall: the flow asked again.
        assert result.progress.total_time
        assert result.progress.downtime is not None and result.progress.downtime >= 350
        if sniffio.current_async_library() == "trio":  # virtual time: exact
            assert 0.35 <= max(latencies) < 0.4
        await destroy(dst)
    c.trace.check()
    assert c.violations == 0


async def test_bad_requests() -> None:
    async with cluster() as c:
        src, dst = await c.started()
        with pytest.raises(NotRunningError):
            await migrate(dst, src, OPTIONS)
        with pytest.raises(ValueError, match="itself"):
            await migrate(src, src, OPTIONS)
        await migrate(src, dst, OPTIONS)
        other, _ = await c.started("vm2")
        with pytest.raises(FlowError, match="already runs"):
            await migrate(other, dst, OPTIONS)
        await destroy(other)
        await destroy(dst)
    with pytest.raises(ValueError, match="poll_interval"):
        MigrationOptions(poll_interval=0)


async def test_abort_while_the_destination_starts() -> None:
    slow_start = on("qmp_capabilities", Latency(1.0))
    async with cluster(faults_b=slow_start) as c:
        src, dst = await c.started()
        preparing = anyio.Event()

        def watch(event: TraceEvent) -> None:
            if event.kind is TraceKind.ASYNC_PHASE and event.detail["phase"] == "prepare":
                preparing.set()

        with c.trace.hub.subscribe(watch):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    with pytest.raises(JobAbortedError):
                        await migrate(src, dst, OPTIONS)

                tg.start_soon(run)
                await preparing.wait()
                await src.domain.abort("changed my mind")
        await assert_runs_on_source(c, src, dst)
        sent = [e.detail["command"] for e in c.trace.of(TraceKind.COMMAND_SENT, domain="vm1@a")]
        assert "migrate" not in sent
        await destroy(src)
    c.trace.check()
