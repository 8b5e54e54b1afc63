"""The crash test's migration: vm1 moves from one simulated QEMU process to
another, as two async jobs (MIGRATION_OUT, MIGRATION_IN) whose phases the
journal persists; and the recovery handlers a migration flow would provide.

The simulators are separate processes (``python -m jobctl_simulators.qemu``), so
they outlive the killed worker, as QEMU outlives a dead manager. Every QMP
command and SQL statement of the worker is a kill point.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc

from jobctl import AsyncJob, Domain
from jobctl.journal import (
    AsyncJobRecord,
    open_journal,
    recover,
)
from jobctl.qmp import EventSubscription, QMPClient, QMPClosedError, open_qmp_unix

from ._killpoint import KillPointMonitor

EVENTS_ON: Final = {"capabilities": [{"capability": "events", "state": True}]}
TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
#: ``query-migrate`` statuses of a migration still under way.
ACTIVE: Final = frozenset(
    {"setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling"}
)
SYNCHRONOUS: Final = "normal"  # see _remove_vm.SYNCHRONOUS


def sockets(workdir: Path) -> tuple[Path, Path, str]:
    """The source's and destination's monitors, and the migration URI."""
    return workdir / "src.qmp", workdir / "dst.qmp", f"unix:{workdir / 'migrate.sock'}"


async def _terminal(events: EventSubscription) -> str:
    async for event in events:
        status = event.data.get("status")
        if status in TERMINAL:
            return str(status)
    raise AssertionError("the monitor closed before the migration ended")


async def run_migration(workdir: Path, scenario: Any) -> None:
    """Migrate vm1 from the source to the destination (both already started;
    the destination with ``-incoming defer``), with jobctl.qemu's phases."""
    src_sock, dst_sock, uri = sockets(workdir)
    where = {"source_qmp": str(src_sock), "destination_qmp": str(dst_sock)}
    async with (
        open_journal(workdir / "journal.db", synchronous=SYNCHRONOUS) as journal,
        open_qmp_unix(str(src_sock)) as src_qmp,
        open_qmp_unix(str(dst_sock)) as dst_qmp,
    ):
        src = Domain("vm1@a", monitor=KillPointMonitor(src_qmp), persister=journal.persister)
        dst = Domain("vm1@b", monitor=KillPointMonitor(dst_qmp), persister=journal.persister)
        async with src.async_job(AsyncJob.MIGRATION_OUT, owner="migrate") as out:
            out.private.update(where, destination=dst.name)
            await out.set_phase("begin")
            async with out.monitor() as mon:
                running = bool((await mon.execute("query-status"))["running"])
                await mon.execute("migrate-set-capabilities", EVENTS_ON)
            out.private["was_running"] = running
            with dst_qmp.subscribe("MIGRATION") as dst_events:
                async with dst.async_job(AsyncJob.MIGRATION_IN, owner="migrate") as inn:
                    inn.private.update(where, source=src.name, was_running=running)
                    await inn.set_phase("prepare")
                    async with inn.monitor() as mon:
                        await mon.execute("migrate-set-capabilities", EVENTS_ON)
                        await mon.execute("migrate-incoming", {"uri": uri})
                    out.private["uri"] = uri
                    await out.set_phase("perform")
                    with src_qmp.subscribe("MIGRATION") as src_events:
                        async with out.monitor() as mon:
                            await mon.execute("migrate", {"uri": uri})
                            # A kill point while the transfer runs.
                            await mon.execute("query-migrate")
                        status = await _terminal(src_events)
                    if status != "completed":
                        async with out.monitor() as mon:
                            why = (await mon.execute("query-migrate")).get("error-desc")
                        raise AssertionError(f"the migration {status}: {why}")
                    await inn.set_phase("finish")
                    if await _terminal(dst_events) != "completed":
                        raise AssertionError("the destination failed")
                    if running:
                        async with inn.monitor() as mon:
                            await mon.execute("cont")
            await out.set_phase("confirm")
            async with out.monitor() as mon:
                with suppress(QMPClosedError):
                    await mon.execute("quit")


@asynccontextmanager
async def _connect(path: str) -> AsyncIterator[KillPointMonitor | None]:
    """The monitor at ``path``, or None if that QEMU is gone."""
    async with AsyncExitStack() as stack:
        try:
            qmp: QMPClient | None = await stack.enter_async_context(open_qmp_unix(path))
        except (OSError, QMPClosedError):
            qmp = None
        yield None if qmp is None else KillPointMonitor(qmp)


async def _quit(mon: KillPointMonitor) -> None:
    with suppress(QMPClosedError):
        await mon.execute("quit")


async def _resume(mon: KillPointMonitor, was_running: bool) -> None:
    if was_running and not (await mon.execute("query-status"))["running"]:
        await mon.execute("cont")


class MigrationRecovery:
    """The per-phase recovery of a migration, as its flow would provide it.

    Per phase: a job still in its ``begin`` phase without private data
    started nothing. From any later phase, the first of the pair's two
    records to be handled settles both sides,
    from what the QEMUs report (``query-migrate``): a migration still under
    way is cancelled; if it completed, the VM runs on at the destination and
    the source quits; otherwise the destination quits and the source runs
    on, resumed if it had been running.
    """

    def __init__(self) -> None:
        self._settled: set[str] = set()

    async def __call__(
        self, record: AsyncJobRecord, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        private = record.private
        # A job persisted as it began, before the flow wrote where the QEMUs
        # are, has started nothing: there is nothing to settle.
        key = private.get("source_qmp")
        if key is not None and key not in self._settled:
            self._settled.add(key)
            await self._settle(private)
        task_status.started()

    async def _settle(self, private: Mapping[str, Any]) -> None:
        was_running = bool(private.get("was_running", False))
        async with AsyncExitStack() as stack:
            src = await stack.enter_async_context(_connect(private["source_qmp"]))
            dst = await stack.enter_async_context(_connect(private["destination_qmp"]))
            status = "none"
            if src is not None:
                status = (await src.execute("query-migrate")).get("status", "none")
                if status in ACTIVE and status != "cancelling":
                    await src.execute("migrate_cancel")
                while status in ACTIVE:
                    await anyio.sleep(0.005)
                    status = (await src.execute("query-migrate")).get("status", "none")
            elif dst is not None:
                # The source quit: only after the destination completed.
                status = (await dst.execute("query-migrate")).get("status", "none")
            if status == "completed":
                assert dst is not None, "the source completed but the destination is gone"
                await _resume(dst, was_running)
                if src is not None:
                    await _quit(src)
            else:
                if dst is not None:
                    await _quit(dst)
                assert src is not None, "the migration never completed but the source is gone"
                await _resume(src, was_running)


async def run_recovery(workdir: Path, scenario: Any) -> None:
    handler = MigrationRecovery()
    async with open_journal(workdir / "journal.db", synchronous=SYNCHRONOUS) as journal:
        await recover(
            journal,
            backends={},
            end_actions={},
            async_handlers={AsyncJob.MIGRATION_OUT: handler, AsyncJob.MIGRATION_IN: handler},
        )


async def probe(workdir: Path, scenario: Any) -> None:
    """Write what each QEMU that still answers reports to ``probe.json``."""
    found: dict[str, Any] = {}
    for side, path in zip(("source", "destination"), sockets(workdir)[:2], strict=True):
        async with _connect(str(path)) as mon:
            if mon is None:
                found[side] = None
            else:
                found[side] = {
                    "running": (await mon.execute("query-status"))["running"],
                    "migration": (await mon.execute("query-migrate")).get("status", "none"),
                }
    (workdir / "probe.json").write_text(json.dumps(found))
