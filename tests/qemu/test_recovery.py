"""Recovery of the QEMU flows' async jobs (jobctl.qemu.QemuRecovery) after a
crash, on simulated QEMUs.

Each test leaves QEMU as a manager killed in one phase would (driving the
same QMP commands as the flow up to that phase, over a connection that then
closes), writes the dead run's records to a journal file, runs
``recover()`` with the handlers, and checks that the VM ends sane: running
in exactly one place, no migration under way, no block job left, no partial
save file.

The records carry the private data the flows store: the ``test_the_flows_*``
tests run the real flows (on simulated QEMU, and on real QEMU where the QMP
sockets are real) and check that every record they persist has each key its
handler reads (``READS``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest

from jobctl import AsyncJob, AsyncJobInfo, Domain, Job
from jobctl.journal import (
    AsyncJobRecord,
    RecoveryError,
    open_journal,
    recover,
)
from jobctl.qemu import (
    DESTINATION_PROCESS,
    DESTINATION_QMP,
    PROCESS,
    QMP,
    SOURCE_PROCESS,
    SOURCE_QMP,
    VM,
    BackupTarget,
    MachineSpec,
    MigrationOptions,
    QemuProcess,
    QemuRecovery,
    QemuRecoveryError,
    QemuRef,
    QemuUnreachableError,
    attach_unix,
    backup,
    destroy,
    migrate,
    open_qemu_host,
    process_record,
    qcow2_target,
    save,
    start,
)
from jobctl.qmp import QMPClient, QMPConnectTimeoutError, open_qmp_stream
from jobctl_simulators.qemu import BackupModel, Disk, MigrationModel, SimulatedHost, SimulatedQemu
from tests._requires import require_qemu
from tests.qmp._qemu import running_qemu

from ._support import cluster

pytestmark = pytest.mark.anyio

MiB = 1 << 20
#: A TiB of RAM over a MiB/s link: the migration is still under way whenever
#: recovery looks (virtual time jumps while the journal's thread works).
ENDLESS = MigrationModel(ram_size=1 << 40, link_speed=float(MiB))
#: A migration that completes at once.
QUICK = MigrationModel(ram_size=MiB, link_speed=float(1 << 30))
EVENTS_ON = {"capabilities": [{"capability": "events", "state": True}]}


class Qemus:
    """Simulated QEMUs by domain name, as a restarted manager finds them;
    :meth:`attach` opens a new monitor on one (an :data:`Attach`)."""

    def __init__(self, stack: AsyncExitStack, host: SimulatedHost) -> None:
        self._stack = stack
        self.host = host
        self.by_domain: dict[str, SimulatedQemu] = {}
        self.attached: list[QemuRef] = []

    async def start(
        self,
        domain: str,
        *,
        incoming: bool = False,
        migration: MigrationModel = QUICK,
        disks: tuple[Disk, ...] = (),
    ) -> SimulatedQemu:
        qemu = SimulatedQemu(
            domain,
            host=self.host,
            migration=migration,
            backup=BackupModel(),
            disks=disks,
            incoming="defer" if incoming else None,
            start_paused=incoming,
        )
        self.by_domain[domain] = await self._stack.enter_async_context(qemu)
        return qemu

    @asynccontextmanager
    async def attach(self, ref: QemuRef) -> AsyncIterator[QMPClient | None]:
        self.attached.append(ref)
        qemu = self.by_domain.get(ref.domain)
        if qemu is None or not qemu.alive:
            yield None
            return
        stream = await qemu.add_monitor().connect_memory()
        async with open_qmp_stream(stream) as qmp:
            yield qmp

    @asynccontextmanager
    async def dead_manager(self, domain: str) -> AsyncIterator[QMPClient]:
        """The dead manager's connection to ``domain``'s QEMU: it closes at
        the end of the block, as a killed process's socket does."""
        async with self.attach(QemuRef(domain)) as qmp:
            assert qmp is not None
            yield qmp

    def state(self, domain: str) -> str | None:
        """The run state of ``domain``'s QEMU; None once it is gone."""
        qemu = self.by_domain[domain]
        return qemu.run_state if qemu.alive else None

    async def wait_gone(self, domain: str) -> None:
        await self.by_domain[domain].wait_exited()


@asynccontextmanager
async def qemus() -> AsyncIterator[Qemus]:
    async with AsyncExitStack() as stack:
        yield Qemus(stack, SimulatedHost())


def info(kind: AsyncJob, phase: str, job_id: int = 1) -> AsyncJobInfo:
    return AsyncJobInfo(
        id=job_id,
        kind=kind,
        owner="flow",
        phase=phase,
        interruptible=False,
        allowed=frozenset({Job.QUERY}),
        started=0.0,
        progress={},
    )


Record = tuple[str, AsyncJob, str, Mapping[str, Any]]


async def recover_from(path: Path, records: list[Record], recovery: QemuRecovery) -> None:
    """Write ``records`` as a dead run's, then recover with ``recovery``."""
    async with open_journal(path) as dead:
        for job_id, (domain, kind, phase, private) in enumerate(records, 1):
            await dead.persister.save_async_job(domain, info(kind, phase, job_id), private)
    async with open_journal(path) as journal:
        report = await recover(
            journal, backends={}, end_actions={}, async_handlers=recovery.handlers()
        )
        assert len(report.async_jobs) == len(records)
        assert await journal.async_jobs() == ()


async def migrate_on(qmp: QMPClient, uri: str, *, complete: bool) -> None:
    """``migrate``; with ``complete``, wait until it completed."""
    await qmp.execute("migrate-set-capabilities", EVENTS_ON)
    with qmp.subscribe("MIGRATION") as events:
        await qmp.execute("migrate", {"uri": uri})
        while complete and (await events.receive()).data["status"] != "completed":
            pass


async def wait_migration(q: Qemus, domain: str, status: str) -> None:
    async with q.attach(QemuRef(domain)) as qmp:
        assert qmp is not None
        with qmp.subscribe("MIGRATION") as events:
            if (await qmp.execute("query-migrate")).get("status") == status:
                return
            while (await events.receive()).data["status"] != status:
                pass


async def migration_status(q: Qemus, domain: str) -> str:
    async with q.attach(QemuRef(domain)) as qmp:
        assert qmp is not None
        return str((await qmp.execute("query-migrate")).get("status", "none"))


# -- migration -------------------------------------------------------------------------

SRC, DST = "vm1@a", "vm1@b"
#: Both orders in which recover() meets the pair's records (it goes by domain name).
PAIRS = pytest.mark.parametrize(
    ("src", "dst"), [(SRC, DST), (DST, SRC)], ids=["out-first", "in-first"]
)


def out_private(src: str, dst: str, *, perform: bool = True) -> dict[str, Any]:
    private: dict[str, Any] = {"destination": dst, "was_running": True, SOURCE_QMP: src}
    if perform:
        private |= {"uri": f"unix:/run/{dst}.migrate", DESTINATION_QMP: dst}
    return private


def in_private(src: str, dst: str, *, finish: bool = False) -> dict[str, Any]:
    private: dict[str, Any] = {"source": src, SOURCE_QMP: src, DESTINATION_QMP: dst}
    private["was_running"] = True
    if finish:
        private["uri"] = f"unix:/run/{dst}.migrate"
    return private


async def start_migration(
    q: Qemus,
    src: str,
    dst: str,
    model: MigrationModel,
    *,
    incoming_only: bool = False,
    complete: bool = False,
) -> None:
    """The flow's begin, prepare and (unless ``incoming_only``) perform,
    until the migration completed with ``complete``."""
    await q.start(src, migration=model)
    await q.start(dst, incoming=True, migration=model)
    uri = f"unix:/run/{dst}.migrate"
    async with q.dead_manager(dst) as qmp:
        await qmp.execute("migrate-set-capabilities", EVENTS_ON)
        await qmp.execute("migrate-incoming", {"uri": uri})
    if incoming_only:
        return
    async with q.dead_manager(src) as qmp:
        await migrate_on(qmp, uri, complete=complete)


async def test_a_migration_persisted_as_it_began_started_nothing(tmp_path: Path) -> None:
    async with qemus() as q:
        await q.start(SRC)
        recovery = QemuRecovery(q.attach)
        await recover_from(
            tmp_path / "j.db", [(SRC, AsyncJob.MIGRATION_OUT, "begin", {})], recovery
        )
        assert q.state(SRC) == "running" and q.attached == []
        assert recovery.statistics().jobs == 1


@PAIRS
async def test_prepare_quits_the_waiting_destination(tmp_path: Path, src: str, dst: str) -> None:
    async with qemus() as q:
        await start_migration(q, src, dst, QUICK, incoming_only=True)
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [
            (src, AsyncJob.MIGRATION_OUT, "begin", out_private(src, dst, perform=False)),
            (dst, AsyncJob.MIGRATION_IN, "prepare", in_private(src, dst)),
        ]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(src) == "running" and q.state(dst) is None
        assert await migration_status(q, src) == "none"
        assert recovery.statistics().quit == 1


async def test_a_destination_not_started_yet_is_left_alone(tmp_path: Path) -> None:
    async with qemus() as q:
        await q.start(SRC)
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [
            (SRC, AsyncJob.MIGRATION_OUT, "begin", out_private(SRC, DST, perform=False)),
            (DST, AsyncJob.MIGRATION_IN, "begin", {}),
        ]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(SRC) == "running"
        assert recovery.statistics().quit == 0


@PAIRS
async def test_perform_cancels_the_migration_and_the_source_runs_on(
    tmp_path: Path, src: str, dst: str
) -> None:
    async with qemus() as q:
        await start_migration(q, src, dst, ENDLESS)
        assert await migration_status(q, src) in {"setup", "active"}
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [
            (src, AsyncJob.MIGRATION_OUT, "perform", out_private(src, dst)),
            (dst, AsyncJob.MIGRATION_IN, "prepare", in_private(src, dst)),
        ]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(src) == "running"
        assert await migration_status(q, src) == "cancelled"
        # The destination failed when the stream broke (or was told to quit).
        await q.wait_gone(dst)
        assert recovery.statistics().migrations_cancelled == 1


@PAIRS
async def test_a_completed_migration_leaves_the_vm_on_the_destination(
    tmp_path: Path, src: str, dst: str
) -> None:
    async with qemus() as q:
        await start_migration(q, src, dst, QUICK, complete=True)
        # Killed before the destination's cont: it is paused.
        assert q.state(src) == "postmigrate" and q.state(dst) == "paused"
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [
            (src, AsyncJob.MIGRATION_OUT, "perform", out_private(src, dst)),
            (dst, AsyncJob.MIGRATION_IN, "finish", in_private(src, dst, finish=True)),
        ]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(dst) == "running" and q.state(src) is None
        stats = recovery.statistics()
        assert (stats.resumed, stats.quit, stats.migrations_cancelled) == (1, 1, 0)


async def test_confirm_after_success_quits_the_source(tmp_path: Path) -> None:
    async with qemus() as q:
        await start_migration(q, SRC, DST, QUICK, complete=True)
        async with q.dead_manager(DST) as qmp:
            await qmp.execute("cont")
        # MIGRATION_IN ended (its record is gone); killed before the source stopped.
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(SRC, AsyncJob.MIGRATION_OUT, "confirm", out_private(SRC, DST))]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(DST) == "running" and q.state(SRC) is None
        assert recovery.statistics().resumed == 0


async def test_a_source_completed_without_destination_resumes(tmp_path: Path) -> None:
    async with qemus() as q:
        await start_migration(q, SRC, DST, QUICK, complete=True)
        # The destination died before it ran the VM; the flow failed over to
        # confirm and was killed there before resuming the source.
        q.by_domain[DST].kill()
        await q.wait_gone(DST)
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(SRC, AsyncJob.MIGRATION_OUT, "confirm", out_private(SRC, DST))]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(SRC) == "running"
        assert recovery.statistics().resumed == 1


async def test_a_paused_vm_stays_paused_on_the_source(tmp_path: Path) -> None:
    async with qemus() as q:
        await start_migration(q, SRC, DST, ENDLESS)
        async with q.dead_manager(SRC) as qmp:
            await qmp.execute("stop")
        recovery = QemuRecovery(q.attach)
        private = out_private(SRC, DST) | {"was_running": False}
        records: list[Record] = [(SRC, AsyncJob.MIGRATION_OUT, "perform", private)]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(SRC) == "paused"
        assert await migration_status(q, SRC) == "cancelled"
        await q.wait_gone(DST)


# -- backup -----------------------------------------------------------------------------

BVM = "vm1@a"
DISKS = (Disk("disk0", size=64 * MiB, device="disk0-dev"), Disk("backup0", size=64 * MiB))


def backup_private(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "device": "disk0", "target": "backup0", QMP: BVM}


async def start_backup(
    q: Qemus, job_id: str, *, speed: int = 0, until: str = "running"
) -> SimulatedQemu:
    """The flow's perform: a block job, started and ``until`` that status."""
    qemu = await q.start(BVM, disks=DISKS)
    arguments = {
        "job-id": job_id,
        "device": "disk0",
        "target": "backup0",
        "sync": "full",
        "speed": speed,
        "auto-finalize": False,
        "auto-dismiss": False,
    }
    async with q.dead_manager(BVM) as qmp:
        with qmp.subscribe("JOB_STATUS_CHANGE") as events:
            await qmp.execute("blockdev-backup", arguments)
            while (await events.receive()).data["status"] != until:
                pass
    return qemu


async def query_jobs(q: Qemus) -> list[dict[str, Any]]:
    async with q.attach(QemuRef(BVM)) as qmp:
        assert qmp is not None
        jobs: list[dict[str, Any]] = await qmp.execute("query-jobs")
        return jobs


async def test_a_backup_persisted_as_it_began_started_nothing(tmp_path: Path) -> None:
    async with qemus() as q:
        await q.start(BVM, disks=DISKS)
        recovery = QemuRecovery(q.attach)
        await recover_from(tmp_path / "j.db", [(BVM, AsyncJob.BACKUP, "begin", {})], recovery)
        assert q.attached == [] and await query_jobs(q) == []


@pytest.mark.parametrize("copied", [False, True], ids=["copying", "pending"])
async def test_perform_cancels_the_block_job(tmp_path: Path, copied: bool) -> None:
    async with qemus() as q:
        # speed 1: the copy would take forever.
        await start_backup(
            q, "b1", speed=0 if copied else 1, until="pending" if copied else "running"
        )
        assert len(await query_jobs(q)) == 1
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(BVM, AsyncJob.BACKUP, "perform", backup_private("b1"))]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert await query_jobs(q) == [] and q.state(BVM) == "running"
        stats = recovery.statistics()
        assert (stats.block_jobs_cancelled, stats.block_jobs_dismissed) == (1, 1)


@pytest.mark.parametrize("finalized", [False, True], ids=["pending", "concluded"])
async def test_finalize_finishes_the_block_job(tmp_path: Path, finalized: bool) -> None:
    async with qemus() as q:
        await start_backup(q, "b1", until="pending")
        if finalized:
            async with q.dead_manager(BVM) as qmp:
                with qmp.subscribe("JOB_STATUS_CHANGE") as events:
                    await qmp.execute("job-finalize", {"id": "b1"})
                    while (await events.receive()).data["status"] != "concluded":
                        pass
        assert [job["status"] for job in await query_jobs(q)] == [
            "concluded" if finalized else "pending"
        ]
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(BVM, AsyncJob.BACKUP, "finalize", backup_private("b1"))]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert await query_jobs(q) == []
        stats = recovery.statistics()
        assert (stats.block_jobs_finalized, stats.block_jobs_cancelled) == (int(not finalized), 0)
        assert stats.block_jobs_dismissed == 1


async def test_a_backup_of_a_gone_qemu_is_settled(tmp_path: Path) -> None:
    async with qemus() as q:
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(BVM, AsyncJob.BACKUP, "perform", backup_private("b1"))]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.attached == [QemuRef(BVM, BVM)]


# -- save ---------------------------------------------------------------------------------

SINK = "sink@a"


def save_private(path: Path, **more: Any) -> dict[str, Any]:
    return {"path": str(path), QMP: BVM, "was_running": True} | more


async def start_save(
    q: Qemus, path: Path, model: MigrationModel, *, complete: bool = False
) -> None:
    """The flow's begin and perform. An incoming QEMU stands in for the
    dead manager's file sink (QEMU sees an outgoing migration either way);
    the partial file is what the sink had written."""
    await q.start(BVM, migration=model)
    await q.start(SINK, incoming=True, migration=model)
    uri = f"unix:/run/{SINK}.save"
    async with q.dead_manager(SINK) as qmp:
        await qmp.execute("migrate-incoming", {"uri": uri})
    async with q.dead_manager(BVM) as qmp:
        await qmp.execute("stop")
        await migrate_on(qmp, uri, complete=complete)
    await anyio.Path(path).write_bytes(b"QEVM partial")


async def test_save_begin_resumes_the_paused_vm(tmp_path: Path) -> None:
    async with qemus() as q:
        await q.start(BVM)
        async with q.dead_manager(BVM) as qmp:
            await qmp.execute("stop")
        recovery = QemuRecovery(q.attach)
        path = tmp_path / "vm.save"
        records: list[Record] = [
            (BVM, AsyncJob.SAVE, "begin", save_private(path)),
            ("vm2", AsyncJob.SAVE, "begin", {}),  # persisted as it began
        ]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(BVM) == "running"
        assert recovery.statistics().resumed == 1


@pytest.mark.parametrize("sink_alive", [True, False], ids=["writing", "sink-gone"])
async def test_save_perform_cancels_removes_the_file_and_resumes(
    tmp_path: Path, sink_alive: bool
) -> None:
    path = tmp_path / "vm.save"
    async with qemus() as q:
        await start_save(q, path, ENDLESS)
        if not sink_alive:
            q.by_domain[SINK].kill()
            await q.wait_gone(SINK)
            await wait_migration(q, BVM, "failed")
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(BVM, AsyncJob.SAVE, "perform", save_private(path))]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(BVM) == "running" and not path.exists()
        assert await migration_status(q, BVM) == ("cancelled" if sink_alive else "failed")
        stats = recovery.statistics()
        assert (stats.migrations_cancelled, stats.files_removed) == (int(sink_alive), 1)


@pytest.mark.parametrize("keep_running", [False, True])
async def test_save_finish_keeps_the_file_and_does_what_the_flow_did(
    tmp_path: Path, keep_running: bool
) -> None:
    path = tmp_path / "vm.save"
    async with qemus() as q:
        await start_save(q, path, QUICK, complete=True)
        recovery = QemuRecovery(q.attach)
        private = save_private(path, keep_running=keep_running)
        await recover_from(tmp_path / "j.db", [(BVM, AsyncJob.SAVE, "finish", private)], recovery)
        assert path.exists()
        assert q.state(BVM) == ("running" if keep_running else None)


# -- errors and the unknown ------------------------------------------------------------------


async def test_an_unknown_phase_fails_recovery_naming_it(tmp_path: Path) -> None:
    async with qemus() as q:
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(BVM, AsyncJob.BACKUP, "teleport", {})]
        with pytest.RaisesGroup(
            pytest.RaisesExc(RecoveryError, match="phase 'teleport'"), allow_unwrapped=True
        ):
            await recover_from(tmp_path / "j.db", records, recovery)


async def test_missing_private_data_is_named(tmp_path: Path) -> None:
    async with qemus() as q:
        recovery = QemuRecovery(q.attach)
        records: list[Record] = [(BVM, AsyncJob.BACKUP, "perform", {QMP: BVM})]
        with pytest.RaisesGroup(
            pytest.RaisesExc(QemuRecoveryError, match="no 'job_id'"), allow_unwrapped=True
        ):
            await recover_from(tmp_path / "j.db", records, recovery)


async def test_a_qemu_that_does_not_settle_times_out(tmp_path: Path) -> None:
    async with qemus() as q:
        await start_backup(q, "b1", speed=1)
        # Finalizing a job that still copies is refused: the handler cancels
        # it; a job that ignores cancel would never conclude.
        recovery = QemuRecovery(q.attach, settle_timeout=1.0)
        q.by_domain[BVM].block.find("b1").cancel = lambda: None  # type: ignore[method-assign]
        records: list[Record] = [(BVM, AsyncJob.BACKUP, "perform", backup_private("b1"))]
        with pytest.RaisesGroup(
            pytest.RaisesExc(QemuRecoveryError, match="did not settle within 1 s"),
            allow_unwrapped=True,
        ):
            await recover_from(tmp_path / "j.db", records, recovery)


def test_bad_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="settle_timeout"):
        QemuRecovery(settle_timeout=0)
    with pytest.raises(ValueError, match="poll_interval"):
        QemuRecovery(poll_interval=float("nan"))


# -- unix sockets: attach_unix -----------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_attach_unix_reaches_a_running_qemu_and_not_a_gone_one(tmp_path: Path) -> None:
    async with SimulatedQemu("vm1") as qemu:
        path = str(tmp_path / "vm1.qmp")
        await qemu.add_monitor().serve_unix(path)
        async with attach_unix(QemuRef("vm1", path)) as qmp:
            assert qmp is not None
            assert (await qmp.execute("query-status"))["running"] is True
    async with attach_unix(QemuRef("vm1", path)) as qmp:
        assert qmp is None  # the socket file is left, nothing listens
    async with attach_unix(QemuRef("vm1", str(tmp_path / "none.qmp"))) as qmp:
        assert qmp is None
    async with attach_unix(QemuRef("vm1")) as qmp:
        assert qmp is None


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_a_migration_recovers_over_unix_sockets(tmp_path: Path) -> None:
    """The default :func:`attach_unix`, with the sockets in the records."""
    sockets = {name: str(tmp_path / f"{name}.qmp") for name in (SRC, DST)}
    async with qemus() as q:
        await start_migration(q, SRC, DST, ENDLESS)
        for name, path in sockets.items():
            await q.by_domain[name].add_monitor().serve_unix(path)
        out = out_private(SRC, DST) | {SOURCE_QMP: sockets[SRC], DESTINATION_QMP: sockets[DST]}
        inn = in_private(SRC, DST) | {SOURCE_QMP: sockets[SRC], DESTINATION_QMP: sockets[DST]}
        recovery = QemuRecovery()
        records: list[Record] = [
            (SRC, AsyncJob.MIGRATION_OUT, "perform", out),
            (DST, AsyncJob.MIGRATION_IN, "prepare", inn),
        ]
        await recover_from(tmp_path / "j.db", records, recovery)
        assert q.state(SRC) == "running"
        assert await migration_status(q, SRC) == "cancelled"
        await q.wait_gone(DST)


# -- gone or unreachable: the recorded QEMU process ---------------------------------------


def test_a_process_is_its_pid_start_time_and_boot() -> None:
    me = QemuProcess.of(os.getpid())
    assert me is not None and me.pid == os.getpid() and me.alive() is True
    assert QemuProcess.from_private(me.to_private()) == me
    assert process_record(os.getpid()) == me.to_private()
    assert process_record(None) is None
    assert QemuProcess.of(1 << 30) is None  # beyond pid_max: nobody
    assert attrs.evolve(me, start_time=me.start_time + 1).alive() is False  # a recycled pid
    assert attrs.evolve(me, boot_id="another boot").alive() is False
    for bad in ({}, {"pid": "1", "start_time": 1, "boot_id": "b"}, me.to_private() | {"pid": 0}):
        with pytest.raises(ValueError, match="not a recorded QEMU process"):
            QemuProcess.from_private(bad)


async def test_a_malformed_process_record_is_named(tmp_path: Path) -> None:
    async with qemus() as q:
        recovery = QemuRecovery(q.attach)
        private = backup_private("b1") | {PROCESS: {"pid": -4}}
        records: list[Record] = [(BVM, AsyncJob.BACKUP, "perform", private)]
        with pytest.RaisesGroup(
            pytest.RaisesExc(QemuRecoveryError, match="'qmp_process' is not a recorded QEMU"),
            allow_unwrapped=True,
        ):
            await recover_from(tmp_path / "j.db", records, recovery)


async def test_the_handlers_hand_the_recorded_processes_to_attach(tmp_path: Path) -> None:
    me = QemuProcess.of(os.getpid())
    assert me is not None
    other = attrs.evolve(me, start_time=me.start_time + 1)
    async with qemus() as q:
        recovery = QemuRecovery(q.attach)
        out = out_private(SRC, DST) | {
            SOURCE_PROCESS: me.to_private(),
            DESTINATION_PROCESS: other.to_private(),
        }
        backup = {"job_id": "b1", QMP: "vm2@a", PROCESS: me.to_private()}
        records: list[Record] = [
            (SRC, AsyncJob.MIGRATION_OUT, "perform", out),
            ("vm2@a", AsyncJob.BACKUP, "perform", backup),
        ]
        await recover_from(tmp_path / "j.db", records, recovery)
    assert sorted(q.attached, key=repr) == [
        QemuRef(SRC, SRC, me),
        QemuRef(DST, DST, other),
        QemuRef("vm2@a", "vm2@a", me),
    ]  # (in repr order)


@pytest.mark.qemu
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_attach_unix_tells_a_gone_qemu_from_an_unreachable_one() -> None:
    """Real QEMU: its socket file removed, it is unreachable, not gone; with
    another start time recorded (a recycled pid) or once killed, it is gone."""
    async with running_qemu() as (path, process):
        me = QemuProcess.of(process.pid)
        assert me is not None
        # Field 22: when the process started, in clock ticks after boot (just now).
        uptime = float((await anyio.Path("/proc/uptime").read_text()).split()[0])
        assert abs(me.start_time / os.sysconf("SC_CLK_TCK") - uptime) < 60
        ref = QemuRef("vm1", path, me)
        async with attach_unix(ref) as qmp:
            assert qmp is not None and (await qmp.execute("query-status"))["running"]
            # Another client holds the only monitor: no greeting.
            with pytest.raises(
                QemuUnreachableError, match=r"no QMP greeting within 0\.2 s"
            ) as held:
                async with attach_unix(ref, timeout=0.2):
                    pytest.fail("attached")
            assert isinstance(held.value.__cause__, QMPConnectTimeoutError)
        os.unlink(path)
        for recorded in (ref, QemuRef("vm1", path)):  # without a process: the bound socket listens
            with pytest.raises(QemuUnreachableError) as unreachable:
                async with attach_unix(recorded):
                    pytest.fail("attached")
            error = unreachable.value
            assert (error.domain, error.qmp, error.alive) == ("vm1", path, True)
            assert error.pid == (process.pid if recorded.process else None)
            assert f"its QMP socket file is gone (QMP socket {path!r})" in str(error)
            assert f"(pid {process.pid}) runs but" in str(error) or recorded.process is None
        # A stale socket file nobody listens on, while QEMU runs.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(path)
            with pytest.raises(QemuUnreachableError, match="refuses connections"):
                async with attach_unix(ref):
                    pytest.fail("attached")
        recycled = attrs.evolve(me, start_time=me.start_time + 1)
        async with attach_unix(attrs.evolve(ref, process=recycled)) as qmp:
            assert qmp is None  # the recorded process is gone; this pid is another's
        process.kill()
        await process.wait()
        for recorded in (ref, QemuRef("vm1", path)):
            async with attach_unix(recorded) as qmp:
                assert qmp is None


@pytest.mark.qemu
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_recovery_leaves_an_unreachable_qemu_and_its_record_alone(tmp_path: Path) -> None:
    """A SAVE in ``perform`` on a real QEMU whose socket file was removed:
    recovery fails naming the pid and socket, keeps the record and the
    partial file; once QEMU is killed, recovery settles the job."""
    partial = tmp_path / "vm.save"
    partial.write_bytes(b"QEVM partial")
    journal_path = tmp_path / "j.db"
    async with running_qemu() as (path, process):
        me = QemuProcess.of(process.pid)
        assert me is not None
        private = save_private(partial, **{QMP: path, PROCESS: me.to_private()})
        async with open_journal(journal_path) as dead:
            await dead.persister.save_async_job(BVM, info(AsyncJob.SAVE, "perform"), private)
        os.unlink(path)
        recovery = QemuRecovery()
        async with open_journal(journal_path) as journal:
            with pytest.RaisesGroup(
                pytest.RaisesExc(
                    QemuUnreachableError,
                    match=rf"recovering SAVE of 'vm1@a' in phase 'perform': .*pid {process.pid}",
                ),
                allow_unwrapped=True,
            ):
                await recover(
                    journal, backends={}, end_actions={}, async_handlers=recovery.handlers()
                )
            assert [job.domain for job in await journal.async_jobs()] == [BVM]
        assert partial.exists() and process.returncode is None
        process.kill()
        await process.wait()
        async with open_journal(journal_path) as journal:
            await recover(journal, backends={}, end_actions={}, async_handlers=recovery.handlers())
            assert await journal.async_jobs() == ()
        assert not partial.exists()
        assert recovery.statistics().files_removed == 1


# -- the flows store what recovery reads -----------------------------------------------------

_OUT_PERFORM = {"destination", "was_running", SOURCE_QMP, DESTINATION_QMP}
_IN_PREPARE = {"source", "was_running", SOURCE_QMP}
#: The keys each handler reads, by kind and phase (see jobctl.qemu._recovery).
READS: dict[AsyncJob, dict[str, set[str]]] = {
    AsyncJob.MIGRATION_OUT: {
        "begin": set(),
        "perform": _OUT_PERFORM,
        "confirm": _OUT_PERFORM,
    },
    AsyncJob.MIGRATION_IN: {
        "begin": set(),
        "prepare": _IN_PREPARE,
        "finish": _IN_PREPARE | {DESTINATION_QMP},
    },
    AsyncJob.BACKUP: {
        "begin": set(),
        "perform": {"job_id", QMP},
        "finalize": {"job_id", QMP},
        "finish": set(),
    },
    AsyncJob.SAVE: {
        "begin": {QMP, "was_running"},
        "perform": {"path", QMP, "was_running"},
        "finish": {QMP, "was_running", "keep_running"},
    },
}
QMP_KEYS = (QMP, SOURCE_QMP, DESTINATION_QMP)
Saved = tuple[str, AsyncJob, str, dict[str, Any]]


class Recorder:
    """A persister that keeps every (domain, kind, phase, private) saved, and
    which recorded QMP sockets were live sockets when the record was saved."""

    def __init__(self) -> None:
        self.saved: list[Saved] = []
        self.live_sockets: set[str] = set()

    async def save_async_job(
        self, domain: str, info: AsyncJobInfo, private: Mapping[str, Any]
    ) -> None:
        self.saved.append((domain, info.kind, info.phase, dict(private)))
        for key in QMP_KEYS:
            path = private.get(key)
            if isinstance(path, str) and await anyio.Path(path).is_socket():
                self.live_sockets.add(path)
        await anyio.lowlevel.checkpoint()

    async def clear_async_job(self, domain: str, info: AsyncJobInfo) -> None:
        await anyio.lowlevel.checkpoint()

    def of(self, kind: AsyncJob) -> list[tuple[str, dict[str, Any]]]:
        return [(phase, private) for _, k, phase, private in self.saved if k is kind]

    async def check(self, kind: AsyncJob, phases: list[str], more: Mapping[int, set[str]]) -> None:
        """The flow persisted records in ``phases``, in order: the first as
        the job began (empty), each other with every key its handler reads,
        record ``i`` also with the keys ``more[i]``; every ``was_running``
        says the VM ran. The handler takes each record, as if the QEMUs were
        gone."""
        records = self.of(kind)
        assert [phase for phase, _ in records] == phases
        assert records[0][1] == {}, "the record saved as the job began has no private data"
        handler = QemuRecovery(gone).handlers()[kind]
        for index, (phase, private) in enumerate(records):
            if index:
                needs = READS[kind][phase] | more.get(index, set())
                assert needs <= private.keys(), (kind, index, phase, needs - private.keys())
                assert private.get("was_running", True) is True, (kind, phase)
            record = AsyncJobRecord(
                "vm1@a", 1, kind, phase, "flow", frozenset(), private, "dead", 0.0
            )
            await handler(record, task_status=anyio.TASK_STATUS_IGNORED)

    def qmp_values(self) -> set[Any]:
        return {private[key] for *_, private in self.saved for key in QMP_KEYS if key in private}


@asynccontextmanager
async def gone(ref: QemuRef) -> AsyncIterator[QMPClient | None]:
    await anyio.lowlevel.checkpoint()
    yield None


async def check_migration_and_backup(recorder: Recorder) -> None:
    await recorder.check(AsyncJob.BACKUP, ["begin", "begin", "perform", "finalize", "finish"], {})
    await recorder.check(
        AsyncJob.MIGRATION_OUT,
        ["begin", "begin", "perform", "confirm"],
        {1: {"destination", SOURCE_QMP}},
    )
    # prepare is persisted again once the destination QEMU runs, with its socket.
    await recorder.check(
        AsyncJob.MIGRATION_IN, ["begin", "prepare", "prepare", "finish"], {2: {DESTINATION_QMP}}
    )
    first_prepare = recorder.of(AsyncJob.MIGRATION_IN)[1][1]
    assert DESTINATION_QMP not in first_prepare  # persisted before the destination started


async def check_save(recorder: Recorder, keep_running: bool) -> None:
    await recorder.check(AsyncJob.SAVE, ["begin", "begin", "perform", "finish"], {})
    assert {private["keep_running"] for _, private in recorder.of(AsyncJob.SAVE)[1:]} == {
        keep_running
    }


async def test_the_flows_store_what_recovery_reads_migration_and_backup() -> None:
    recorder = Recorder()
    async with cluster() as c:
        src, dst = c.vms()
        src = VM(Domain(src.name, persister=recorder), c.a)
        dst = VM(Domain(dst.name, persister=recorder), c.b)
        image = await c.a.create_disk("vm1", 64)
        target = await c.a.create_disk("vm1-backup", 64)
        await start(src, MachineSpec(ram_mib=64, disk=image, backup_disk=target))
        await backup(src, BackupTarget("backup0"), poll_interval=0.01)
        await migrate(src, dst)
        await destroy(dst)
    await check_migration_and_backup(recorder)
    assert recorder.qmp_values() == {None}  # simulated machines have no QMP socket


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
@pytest.mark.parametrize("keep_running", [False, True])
async def test_the_flows_store_what_recovery_reads_save(tmp_path: Path, keep_running: bool) -> None:
    """Real time: the saved state goes through a real socket."""
    recorder = Recorder()
    async with cluster() as c:
        vm, _ = c.vms()
        vm = VM(Domain(vm.name, persister=recorder), c.a)
        await start(vm, MachineSpec(ram_mib=16))
        await save(vm, os.fspath(tmp_path / "vm.save"), keep_running=keep_running)
        if keep_running:
            await destroy(vm)
    await check_save(recorder, keep_running)


@pytest.mark.qemu
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_flows_store_live_qmp_sockets_on_real_qemu(tmp_path: Path) -> None:
    """On real QEMU every recorded QMP socket is the live socket of the
    job's QEMU when its record is saved."""
    require_qemu()
    recorder = Recorder()
    async with (
        open_qemu_host("a", storage=tmp_path) as a,
        open_qemu_host("b", storage=tmp_path) as b,
    ):
        src = VM(Domain("vm1@a", persister=recorder), a)
        dst = VM(Domain("vm1@b", persister=recorder), b)
        image = await a.create_disk("vm1", 16)
        target = await a.create_disk("vm1-backup", 16)
        await start(src, MachineSpec(ram_mib=16, random_ram=False, disk=image))
        assert src.machine is not None and src.machine.qmp_path is not None
        source_qmp = src.machine.qmp_path
        await backup(src, qcow2_target("backup0", target), poll_interval=0.05)
        await migrate(src, dst, MigrationOptions(poll_interval=0.05))
        assert dst.machine is not None and dst.machine.qmp_path is not None
        destination_qmp = dst.machine.qmp_path
        await save(dst, os.fspath(tmp_path / "vm.save"), poll_interval=0.05)
    await check_migration_and_backup(recorder)
    await check_save(recorder, False)
    assert recorder.qmp_values() == {source_qmp, destination_qmp}
    assert recorder.live_sockets == {source_qmp, destination_qmp}
