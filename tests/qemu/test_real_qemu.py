"""The flows and the demo on real QEMU 7.2 (skipped without it, except in CI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import (
    Domain,
    JobAbortedError,
    JobTimeoutError,
    TraceEvent,
    TraceHub,
    TraceKind,
    TraceSubscription,
)
from jobctl.qemu import (
    VM,
    Machine,
    MachineSpec,
    MigrationError,
    MigrationOptions,
    backup,
    destroy,
    domstats,
    migrate,
    open_qemu_host,
    qcow2_target,
    restore,
    save,
    start,
)
from jobctl.qmp import QMPClosedError
from jobctl.testing import REAL_TIME_INSTANT, InvariantChecker, TraceRecorder
from tests._requires import require_qemu

pytestmark = pytest.mark.qemu

MiB = 1 << 20


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return (request.param, {})


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_the_demo_on_real_qemu(tmp_path: Path) -> None:
    """What CI runs: ``jobctl demo --qemu --migrations 5``, zero violations,
    zero failures, nothing left behind."""
    require_qemu()
    result = subprocess.run(
        [sys.executable, "-m", "jobctl", "demo", "--qemu", "--migrations", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["backend"] == "qemu"
    assert report["jobs"] == {"requested": 5, "completed": 5, "failed": 0, "failures": []}
    assert report["violations"] == {"simulator": None, "trace": 0, "examples": []}
    assert report["domstats"]["errors"] == 0 and report["domstats"]["during_job"]["count"] > 0
    assert list(tmp_path.iterdir()) == []
    assert processes_mentioning(str(tmp_path)) == []


async def migrate_and_act(src: VM, dst: VM, options: MigrationOptions, act: Any) -> BaseException:
    assert src.machine is not None
    errors: list[BaseException] = []

    async def run() -> None:
        try:
            await migrate(src, dst, options)
        except (MigrationError, JobAbortedError) as exc:
            errors.append(exc)

    with src.machine.qmp.subscribe("MIGRATION") as events:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while (await events.receive()).data["status"] != "active":
                pass
            await act()
    assert errors, "the migration should have failed"
    return errors[0]


@pytest.mark.anyio
async def test_flows_on_real_qemu(tmp_path: Path) -> None:
    require_qemu()
    fast = MigrationOptions(bandwidth=1 << 30, poll_interval=0.05)
    slow = MigrationOptions(bandwidth=4 * MiB, poll_interval=0.05)  # 64 MiB: 16 s
    with TraceRecorder() as trace:
        async with (
            open_qemu_host("a", storage=tmp_path) as a,
            open_qemu_host("b", storage=tmp_path) as b,
        ):
            disk = await a.create_disk("vm1", 32)
            spec = MachineSpec(ram_mib=64, disk=disk)
            src = VM(Domain("vm1@a", trace=trace.hub), a)
            dst = VM(Domain("vm1@b", trace=trace.hub), b)
            await start(src, spec)

            # There and back, with QEMU's real figures.
            result = await migrate(src, dst, fast)
            assert result.progress.status == "completed" and result.progress.total_time
            assert (await domstats(dst.domain)).state == "running"
            await migrate(dst, src, fast)

            # Abort: migrate_cancel, the source runs on, the destination is gone.
            error = await migrate_and_act(src, dst, slow, lambda: src.domain.abort("test"))
            assert isinstance(error, JobAbortedError)
            assert (await domstats(src.domain)).state == "running" and b.machines == ()

            # The destination dies: the source runs on.
            async def kill() -> None:
                assert dst.machine is not None and dst.machine.pid is not None
                os.kill(dst.machine.pid, signal.SIGKILL)
                await anyio.lowlevel.checkpoint()

            error = await migrate_and_act(src, dst, slow, kill)
            assert isinstance(error, MigrationError)
            assert (await domstats(src.domain)).state == "running" and b.machines == ()

            # Backup to a node the flow adds and removes.
            image = await a.create_disk("vm1-backup", 32)
            copied = await backup(src, qcow2_target("bk0", image))
            assert copied.copied == 32 * MiB

            # Save (the QEMU stops), then restore.
            path = str(tmp_path / "vm1.save")
            saved = await save(src, path)
            assert saved.size > 64 * MiB // 2 and src.machine is None
            restored = await restore(src, spec, path)
            assert restored.size == saved.size
            assert (await domstats(src.domain)).state == "running"
            await destroy(src)
            assert a.machines == ()
    trace.check()


#: How long a host lets a machine quit (then SIGTERM, then SIGKILL): far
#: beyond every destroy's timeout, so a destroy that asked QEMU to quit
#: instead of killing it would be seen.
STOP_TIMEOUT = 30.0


def sent(hub: TraceHub, command: str) -> tuple[anyio.Event, TraceSubscription]:
    """An event set once a job sends ``command`` (close the subscription)."""
    event = anyio.Event()

    def listener(e: TraceEvent) -> None:
        if e.kind is TraceKind.COMMAND_SENT and e.detail["command"] == command:
            event.set()

    return event, hub.subscribe(listener)


@contextmanager
def killed_at_exit(machine: Machine) -> Iterator[int]:
    """The machine's pid; if a failed test leaves the machine running
    (stopped, maybe), it is SIGKILLed, so that leaving its host never waits."""
    assert machine.pid is not None
    try:
        yield machine.pid
    finally:
        if not machine.stopped:  # not reaped: the pid is still this QEMU's
            with suppress(ProcessLookupError):
                os.kill(machine.pid, signal.SIGKILL)


def check_real_time(trace: TraceRecorder) -> None:
    """The trace's invariants, with real time's slack for "at once" and
    "by its timeout" (:data:`REAL_TIME_INSTANT`)."""
    checker = InvariantChecker(instant=REAL_TIME_INSTANT)
    checker.feed_all(trace.events)
    checker.finish()
    checker.check()


def assert_reaped(pid: int) -> None:
    """The process is gone and waited for: not even a zombie is left."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.anyio
async def test_destroy_kills_a_sigstopped_qemu_under_a_stuck_query(tmp_path: Path) -> None:
    require_qemu()
    with TraceRecorder() as trace, ExitStack() as stack:
        async with open_qemu_host("a", storage=tmp_path, stop_timeout=STOP_TIMEOUT) as a:
            vm = VM(Domain("vm1@a", trace=trace.hub), a)
            machine = await start(vm, MachineSpec(ram_mib=64, random_ram=False))
            stack.enter_context(killed_at_exit(machine))
            assert machine.pid is not None
            os.kill(machine.pid, signal.SIGSTOP)
            errors: list[BaseException] = []

            async def stuck() -> None:
                # Its own timeout is far beyond destroy's: only the kill ends it.
                with pytest.raises(QMPClosedError) as info:
                    await domstats(vm.domain, timeout=120)
                errors.append(info.value)

            asked, subscription = sent(trace.hub, "query-status")
            with subscription, anyio.fail_after(60):  # nothing hangs
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stuck)
                    await asked.wait()
                    await destroy(vm, timeout=10)
                    # DESTROY began only once the query had ended: it failed already.
                    assert len(errors) == 1
            assert machine.stopped and machine.exit_status == -signal.SIGKILL
            assert_reaped(machine.pid)
            assert vm.machine is None and a.machines == () and vm.domain.info().idle
    check_real_time(trace)


@pytest.mark.anyio
async def test_domstats_timeout_on_a_sigstopped_qemu(tmp_path: Path) -> None:
    require_qemu()
    with TraceRecorder() as trace, ExitStack() as stack:
        async with open_qemu_host("a", storage=tmp_path, stop_timeout=STOP_TIMEOUT) as a:
            vm = VM(Domain("vm1@a", trace=trace.hub), a)
            machine = await start(vm, MachineSpec(ram_mib=64, random_ram=False))
            stack.enter_context(killed_at_exit(machine))
            assert machine.pid is not None
            os.kill(machine.pid, signal.SIGSTOP)
            before = anyio.current_time()
            with pytest.raises(JobTimeoutError) as info:
                await domstats(vm.domain, timeout=2)
            assert anyio.current_time() - before < 30  # bound against hangs
            message = str(info.value)
            assert "'vm1@a'" in message and "query-status did not answer within 2 s" in message
            assert vm.domain.info().idle  # no job, no monitor holder left behind
            os.kill(machine.pid, signal.SIGCONT)
            with anyio.fail_after(30):
                assert (await domstats(vm.domain)).state == "running"
            await destroy(vm, timeout=10)
            assert_reaped(machine.pid)
    check_real_time(trace)


@pytest.mark.anyio
async def test_destroy_preempts_a_migration_from_a_sigstopped_qemu(tmp_path: Path) -> None:
    require_qemu()
    # 64 MiB: 16 s. Without the kill, the clean-up would wait for QEMU (60 s).
    slow = MigrationOptions(bandwidth=4 * MiB, poll_interval=0.05, cleanup_timeout=60)
    with TraceRecorder() as trace, ExitStack() as stack:
        async with (
            open_qemu_host("a", storage=tmp_path, stop_timeout=STOP_TIMEOUT) as a,
            open_qemu_host("b", storage=tmp_path) as b,
        ):
            src = VM(Domain("vm1@a", trace=trace.hub), a)
            dst = VM(Domain("vm1@b", trace=trace.hub), b)
            machine = await start(src, MachineSpec(ram_mib=64))
            pid = stack.enter_context(killed_at_exit(machine))

            async def act() -> None:
                asked, subscription = sent(trace.hub, "query-migrate")
                with subscription:
                    os.kill(pid, signal.SIGSTOP)
                    await asked.wait()  # the flow's poll hangs
                await destroy(src, timeout=20)

            with anyio.fail_after(120):
                error = await migrate_and_act(src, dst, slow, act)
            assert isinstance(error, JobAbortedError) and error.reason == "destroyed"
            assert machine.exit_status == -signal.SIGKILL
            assert_reaped(pid)
            assert src.machine is None and a.machines == () and b.machines == ()
            assert src.domain.info().idle and dst.domain.info().idle
    check_real_time(trace)
