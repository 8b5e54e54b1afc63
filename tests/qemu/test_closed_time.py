"""How long each flow keeps its domain closed to queries (``result.closed``).

The flows wait in interruptible sections for everything that does not need
the monitor, so a domain is closed to queries only while the flow uses the
monitor or waits at a barrier for its sections' queries. Each result's
:class:`ClosedTime` says so, and these tests check it against the trace,
folded independently here: in virtual time, with commands that take 5 ms,
a migration's time closed outside monitor commands is (well) under 10 ms,
and a domstats issued at any point of the migration begins without waiting
for a phase change. The invariant checker and the simulator's strict
detector watch every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from jobctl import Domain, TraceEvent, TraceHub, TraceKind
from jobctl.qemu import (
    VM,
    BackupTarget,
    ClosedTime,
    MachineSpec,
    backup,
    destroy,
    domstats,
    migrate,
    open_qemu_host,
    restore,
    save,
    start,
)
from jobctl.testing import BACKENDS, REAL_TIME_INSTANT, InvariantChecker, virtual_backend
from jobctl_simulators.qemu import BackupModel
from tests._requires import require_qemu

from ._hosts import LATENCY, OPTIONS, hosts

pytestmark = pytest.mark.anyio

#: What the issue aims at: a migration's time closed outside monitor
#: commands. The commands take LATENCY (5 ms): the flows' own add up to far
#: more than the aim, so the aim is met only by not counting them.
AIM = 0.010


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Virtual time on trio and on asyncio."""
    return virtual_backend(request.param)


def job_of(events: Iterable[TraceEvent], domain: str, kind: str) -> tuple[int, float, float]:
    """The (last) async job of ``kind`` on ``domain``: id, begin, end."""
    begins = [e for e in events if e.domain == domain and e.kind is TraceKind.ASYNC_BEGIN]
    begin = [e for e in begins if e.job == kind][-1]
    assert begin.job_id is not None
    end = next(e for e in events if e.kind is TraceKind.ASYNC_END and e.job_id == begin.job_id)
    return begin.job_id, begin.time, end.time


def closed_from_trace(
    events: Iterable[TraceEvent], domain: str, kind: str, *, peer: str | None = None
) -> ClosedTime:
    """The async job's closed time, folded from the trace alone: closed from
    its begin to its end except while its gate is open; of that, while it
    holds the monitor (monitor.enter to monitor.exit) and while a barrier of
    its domain, or of ``peer``'s (a migration's other side), is pending."""
    events = list(events)
    job_id, begun, ended = job_of(events, domain, kind)
    opened = holding = False
    barriers: set[str] = set()
    sections = 0
    total = monitor = barrier = 0.0
    last = begun
    for event in events:
        if not begun <= event.time <= ended or event.domain not in (domain, peer):
            continue
        span = event.time - last
        last = event.time
        if not opened:
            total += span
            if holding:
                monitor += span
            elif barriers:
                barrier += span
        mine = event.domain == domain
        if mine and event.job_id == job_id:
            if event.kind is TraceKind.GATE_OPEN:
                opened, sections = True, sections + 1
            elif event.kind is TraceKind.GATE_CLOSE:
                opened = False
            elif event.kind is TraceKind.MONITOR_ENTER:
                holding = True
            elif event.kind is TraceKind.MONITOR_EXIT:
                holding = False
        if event.kind is TraceKind.BARRIER_START:
            barriers.add(event.domain)
        elif event.kind is TraceKind.BARRIER_END:
            barriers.discard(event.domain)
    return ClosedTime(total=total, monitor=monitor, barrier=barrier, sections=sections)


def assert_same(reported: ClosedTime, folded: ClosedTime) -> None:
    assert reported.sections == folded.sections
    for name in ("total", "monitor", "barrier", "outside_monitor"):
        assert getattr(reported, name) == pytest.approx(getattr(folded, name), abs=1e-9), name


@attrs.define
class Probes:
    """A domstats (a QUERY job, owner ``probe``) issued on each VM at every
    trace event of its domain's async job: at every point of the flow."""

    vms: dict[str, VM]
    send: Any = None
    issued: int = 0
    limit: int = 400

    def on_trace(self, event: TraceEvent) -> None:
        if (
            event.domain in self.vms
            and event.job in ("MIGRATION_OUT", "MIGRATION_IN")
            and self.issued < self.limit
        ):
            self.issued += 1
            self.send.send_nowait(event.domain)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[str](self.limit)
        self.send = send
        async with anyio.create_task_group() as tg, receive:
            task_status.started()
            async for domain in receive:
                tg.start_soon(self.probe, self.vms[domain])

    async def probe(self, vm: VM) -> None:
        # No timeout, not even the domain's wait_timeout (30 s): in virtual
        # time a deadline is the next thing the clock jumps to whenever every
        # task waits, and on a loaded machine a socket's data or a worker
        # thread (the simulated destination's listener) can come a moment
        # late, so a probe's timeout would fire with nothing wrong (seen:
        # "waited 10.0 s" in a 0.5 s run, and once "waited 30.0 s" on the
        # destination while it started). What the probes check is in the
        # trace: none waited across a phase change (waits_across_phases);
        # pytest's timeout guards a hang.
        await domstats(vm, owner="probe", timeout=math.inf)


def waits_across_phases(events: list[TraceEvent], domain: str) -> list[str]:
    """Probe jobs on ``domain`` whose wait to begin spanned a phase change
    of the domain's async job."""
    bad = []
    requested: dict[int, int] = {}
    for index, event in enumerate(events):
        if event.domain != domain or event.owner != "probe" or event.job_id is None:
            continue
        if event.kind is TraceKind.JOB_WAIT:
            requested[event.job_id] = index
        elif event.kind is TraceKind.JOB_BEGIN and event.detail["waited"]:
            since = requested.pop(event.job_id)
            phases = [
                e.detail["phase"]
                for e in events[since:index]
                if e.domain == domain and e.kind is TraceKind.ASYNC_PHASE
            ]
            if phases:
                bad.append(f"probe #{event.job_id} waited across {phases}")
    return bad


async def test_a_migration_is_closed_to_queries_only_for_monitor_commands() -> None:
    async with hosts() as h:
        src, dst = await h.started()
        probes = Probes({src.name: src, dst.name: dst})
        async with anyio.create_task_group() as tg:
            await tg.start(probes.run)
            with h.hub.subscribe(probes.on_trace):
                result = await migrate(src, dst, OPTIONS)
            probes.send.close()
        await destroy(dst)
        events = list(h.recorder.events)
    h.check()
    closed, arrived = result.closed, result.destination_closed
    # The commands took time, the queries made the flow wait at barriers ...
    assert closed.monitor > 4 * LATENCY  # twice the aim
    assert closed.barrier > AIM and closed.sections > 5
    # The destination's four commands at least (exactly that when it never
    # waited for its monitor: a sum of floats, so within rounding).
    assert arrived.monitor >= 4 * LATENCY - 1e-9
    # ... and nothing else kept either domain closed.
    assert closed.outside_monitor < AIM and arrived.outside_monitor < AIM
    assert closed.total < result.duration
    # The figures are the trace's.
    assert_same(closed, closed_from_trace(events, src.name, "MIGRATION_OUT", peer=dst.name))
    assert_same(arrived, closed_from_trace(events, dst.name, "MIGRATION_IN", peer=src.name))
    # Probes came at every point of the migration, on both sides; none
    # waited across a phase change.
    probed = [e for e in events if e.owner == "probe" and e.kind is TraceKind.JOB_BEGIN]
    assert {e.domain for e in probed} == {src.name, dst.name}
    assert any(e.detail["waited"] for e in probed) and probes.issued > 50
    assert waits_across_phases(events, src.name) == []
    assert waits_across_phases(events, dst.name) == []


async def test_a_backup_is_closed_to_queries_only_for_monitor_commands() -> None:
    async with hosts() as h:
        h.a.backend.backup_model = BackupModel(throughput=float(256 << 20))
        vm, _ = await h.started()
        done = anyio.Event()

        async def poll() -> None:
            while not done.is_set():
                await domstats(vm, owner="poller")

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            result = await backup(vm, BackupTarget("backup0"), poll_interval=0.05)
            done.set()
        await destroy(vm)
        events = list(h.recorder.events)
    h.check()
    closed = result.closed
    assert closed.monitor > 2 * AIM and closed.barrier > 0 and closed.outside_monitor < AIM
    assert_same(closed, closed_from_trace(events, vm.name, "BACKUP"))


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_save_and_restore_report_their_closed_time(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Real time (the saved state goes through a real socket): the figures
    are reported and consistent, with no aim on them."""
    path = str(tmp_path / "vm1.save")
    async with hosts(latency=0.0002, real_time=True) as h:
        vm, _ = await h.started()
        assert vm.machine is not None
        spec = vm.machine.spec
        saved = await save(vm, path)
        restored = await restore(vm, spec, path)
        await destroy(vm)
    h.check()
    for closed in (saved.closed, restored.closed):
        assert closed.sections >= 3 and 0 < closed.monitor <= closed.total
        assert 0 <= closed.outside_monitor <= closed.total
        assert closed.barrier <= closed.total
    assert saved.closed.total < saved.duration and restored.closed.total < restored.duration


@pytest.mark.qemu
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_a_real_migration_reports_its_closed_time(tmp_path: Path, anyio_backend: str) -> None:
    """Real QEMU 7.2, real time: both sides' closed times are reported and
    consistent, the domain's observed state follows, and the invariants hold
    (no aim on the figures: the machine may be loaded)."""
    require_qemu()
    hub = TraceHub()
    checker = InvariantChecker(instant=REAL_TIME_INSTANT)
    with hub.subscribe(checker.feed):
        async with (
            open_qemu_host("a", storage=tmp_path) as a,
            open_qemu_host("b", storage=tmp_path) as b,
        ):
            disk = await a.create_disk("vm1", 32)
            src = VM(Domain("vm1@a", trace=hub), a)
            dst = VM(Domain("vm1@b", trace=hub), b)
            await start(src, MachineSpec(ram_mib=64, disk=disk))
            done = anyio.Event()

            async def poll() -> None:
                while not done.is_set():
                    await domstats(src, owner="poller")

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                result = await migrate(src, dst, OPTIONS)
                done.set()
            there = dst.observed
            await destroy(dst)
    checker.finish()
    checker.check()
    for closed in (result.closed, result.destination_closed):
        assert closed.sections >= 3 and 0 < closed.monitor <= closed.total
        assert 0 <= closed.outside_monitor <= closed.total < result.duration
        assert closed.barrier <= closed.total
    assert there.run is not None and there.run.running
    assert there.migration is not None and there.migration.status == "completed"
