"""Live migration as two async jobs: MIGRATION_OUT on the source, MIGRATION_IN
on the destination, with libvirt's phases.

==============  ======  ==========================================================
phase           side    what happens
==============  ======  ==========================================================
``begin``       source  check the VM runs; MIGRATION events on; bandwidth, downtime
``prepare``     dest.   start a paused QEMU waiting for the migration
                        (``migrate-incoming``); the source answers queries meanwhile
``perform``     source  ``migrate``; wait for the end in interruptible sections,
                        polling ``query-migrate`` for progress; abort runs
                        ``migrate_cancel``
``finish``      dest.   wait for the destination's end; ``cont`` if the VM ran
``confirm``     source  success: detach and stop the source QEMU; failure: cancel
                        what still runs, stop the destination, resume the source
==============  ======  ==========================================================

Each job's private data holds what :class:`~jobctl.qemu.QemuRecovery` reads
after a crash: the peer's domain, both QMP sockets, ``was_running``.
MIGRATION_IN's ``prepare`` is persisted again once the destination QEMU
runs, with its socket.

Both jobs keep their domains open to queries wherever they wait without the
monitor: the destination's QEMU starts and greets, every phase is
persisted, QEMU's events are awaited and the polls pause, all in
interruptible sections (the source's, and the destination's while the
source performs). The exceptions are the destination job's own begin and
end (which the core persists, when the domain has a persister): a job
begins and ends in its task's cancel scopes, which no section may straddle.
:attr:`MigrationResult.closed` tells how long the source was closed all the
same (:class:`~jobctl.qemu.ClosedTime`).

Every failure leaves the VM running on the source when the source can still
run it: the destination dies or refuses, the migration fails or is
cancelled, a monitor closes. Cancellation and DESTROY clean up the same way,
within ``cleanup_timeout``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any, Final, final

import anyio
import attrs

from jobctl._core._domain import ActiveAsyncJob, MonitorSession
from jobctl._core._errors import JobTimeoutError
from jobctl._core._kinds import AsyncJob, Job
from jobctl.qemu._deadline import BoundedSession, Deadline
from jobctl.qemu._errors import FlowError, MigrationError
from jobctl.qemu._machine import Machine
from jobctl.qemu._progress import TERMINAL_STATUSES, MigrationProgress
from jobctl.qemu._recovery import (
    DESTINATION_PROCESS,
    DESTINATION_QMP,
    SOURCE_PROCESS,
    SOURCE_QMP,
    process_record,
)
from jobctl.qemu._vm import VM
from jobctl.qemu._wait import ClosedTime, GateClock, migration_ended, wait_in_sections
from jobctl.qmp import EventSubscription, QMPClosedError, QMPError, QMPEvent

__all__ = ["MigrationOptions", "MigrationResult", "migrate"]

_log: Final = logging.getLogger("jobctl.qemu")

EVENTS_ON: Final[Mapping[str, Any]] = {"capabilities": [{"capability": "events", "state": True}]}
#: ``max-bandwidth`` for "no limit" (1 TiB/s; QEMU refuses more than SIZE_MAX).
UNLIMITED_BANDWIDTH: Final = 1 << 40
#: ``query-migrate`` may say "completed" before QEMU filled in the times.
_FINAL_QUERIES: Final = 20
_FINAL_QUERY_PAUSE: Final = 0.01


def _positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, not {value!r}")


@final
@attrs.frozen
class MigrationOptions:
    """How to migrate.

    ``bandwidth`` (bytes per second; None: no limit) is QEMU's
    ``max-bandwidth``, set for every migration, since QEMU keeps it from the
    last one; ``downtime_limit`` (milliseconds) its ``downtime-limit``, when
    given.
    ``poll_interval`` is how often the source leaves its section to read
    ``query-migrate`` for progress. The destination must finish (end its
    migration and answer ``cont``) within ``finish_timeout`` seconds of the
    source; cleaning up after a failure
    takes at most ``cleanup_timeout`` seconds per side.
    """

    bandwidth: int | None = attrs.field(default=None, validator=_positive)
    downtime_limit: int | None = attrs.field(default=None, validator=_positive)
    poll_interval: float = attrs.field(default=0.5, validator=_positive)
    finish_timeout: float = attrs.field(default=30.0, validator=_positive)
    cleanup_timeout: float = attrs.field(default=10.0, validator=_positive)


@final
@attrs.frozen
class MigrationResult:
    """A completed migration: the domains' names and QEMU's final figures."""

    source: str
    destination: str
    progress: MigrationProgress
    #: Seconds from the source's ``begin`` to the end of ``confirm``.
    duration: float
    #: How long the source's domain was closed to queries;
    #: ``closed.outside_monitor`` is the time outside monitor commands.
    closed: ClosedTime
    #: The same for the destination's domain (its MIGRATION_IN job).
    destination_closed: ClosedTime

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (docs/JSON.md); durations in seconds."""
        return {
            "source": self.source,
            "destination": self.destination,
            "progress": self.progress.to_json(),
            "duration": self.duration,
            "closed": self.closed.to_json(),
            "destination_closed": self.destination_closed.to_json(),
        }


def _listening_uri(configured: str, reply: Mapping[str, Any]) -> str:
    """Where the destination listens: QEMU's chosen port replaces ``:0``."""
    addresses = reply.get("socket-address")
    if isinstance(addresses, list) and addresses:
        address = addresses[0]
        if isinstance(address, Mapping) and address.get("type") == "inet":
            host = str(address["host"])
            if ":" in host:
                host = f"[{host}]"
            return f"tcp:{host}:{address['port']}"
    return configured


async def final_progress(clock: GateClock, status: str) -> MigrationProgress:
    """QEMU's final figures for a migration that ended with ``status``.

    A ``query-migrate`` that the switchover stalled may answer "completed"
    before QEMU filled in the times: it is asked again, a few times, with
    pauses in sections. QEMU's migration has ended: ABORT may no longer
    enter the job's sections.
    """
    clock.deny_abort()
    for _ in range(_FINAL_QUERIES):
        async with clock.monitor() as mon:
            progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
        if progress.status == status and (status != "completed" or progress.total_time):
            break
        await clock.pause(_FINAL_QUERY_PAUSE)
    clock.ajob.set_progress(progress.as_dict())
    return progress


async def cancel_migration(mon: MonitorSession) -> None:
    """The source's abort hook."""
    await mon.execute("migrate_cancel")


async def migrate(
    source: VM,
    destination: VM,
    options: MigrationOptions | None = None,
    *,
    owner: str = "migrate",
) -> MigrationResult:
    """Live-migrate the VM from ``source`` to ``destination`` (another host's
    view of the same VM, not running there).

    On success the destination's domain has the running VM and the source's
    QEMU is stopped. Raises :class:`NotRunningError` if the VM does not run
    on the source, :class:`MigrationError` if the migration failed, and
    :class:`jobctl.JobAbortedError` if it was aborted (``Domain.abort`` on
    the source, during ``perform``) or pre-empted by DESTROY; in each case
    the VM runs on at the source if it still can. An abort that comes after
    QEMU completed the migration is too late: the migration succeeds.
    """
    if source.domain is destination.domain:
        raise ValueError(f"cannot migrate {source.name!r} to itself")
    flow = _Migration(source, destination, options or MigrationOptions(), owner)
    async with source.domain.async_job(AsyncJob.MIGRATION_OUT, owner=owner) as out:
        result = await flow.run(out)
    return result


@final
class _Migration:
    """The state of one migration, shared by its phases."""

    def __init__(self, source: VM, destination: VM, options: MigrationOptions, owner: str) -> None:
        self.source = source
        self.destination = destination
        self.options = options
        self.owner = owner
        #: Whether the VM ran when the migration began (None: not known yet).
        self.was_running: bool | None = None
        self.started = 0.0

    def _what(self) -> str:
        return f"migration of {self.source.name!r} to {self.destination.name!r}"

    async def run(self, out: ActiveAsyncJob) -> MigrationResult:
        self.started = anyio.current_time()
        clock = GateClock(out, self.source.observer, flow="migration")
        machine = self.source.running_machine()
        if self.destination.machine is not None and not self.destination.machine.stopped:
            raise FlowError(f"{self._what()}: the VM already runs on the destination")
        try:
            await self._begin(clock, machine)
            # (Not in a section: a job's begin and end nest in the task's
            # cancel scopes, and a section's scope may not straddle them.)
            async with self.destination.domain.async_job(
                AsyncJob.MIGRATION_IN, allowed={Job.QUERY}, owner=self.owner
            ) as inn:
                inn_clock = GateClock(inn, self.destination.observer, flow="migration")
                progress = await self._incoming(clock, inn_clock, machine)
                destination_closed = inn_clock.closed()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._recover(out, machine, exc)
            raise
        self.source.detach()
        # Queries that come meanwhile find the VM gone from here at once.
        async with clock.section():
            await clock.phase("confirm")
            await machine.stop()
        return MigrationResult(
            self.source.name,
            self.destination.name,
            progress,
            anyio.current_time() - self.started,
            clock.closed(),
            destination_closed,
        )

    # -- source: begin -----------------------------------------------------------

    async def _begin(self, clock: GateClock, machine: Machine) -> None:
        out = clock.ajob
        out.private["destination"] = self.destination.name
        out.private[SOURCE_QMP] = machine.qmp_path
        out.private[SOURCE_PROCESS] = process_record(machine.pid)
        await clock.phase("begin")
        bandwidth = self.options.bandwidth
        parameters: dict[str, Any] = {
            "max-bandwidth": UNLIMITED_BANDWIDTH if bandwidth is None else bandwidth
        }
        if self.options.downtime_limit is not None:
            parameters["downtime-limit"] = self.options.downtime_limit
        try:
            async with clock.monitor() as mon:
                status = await mon.execute("query-status")
                await mon.execute("migrate-set-capabilities", EVENTS_ON)
                await mon.execute("migrate-set-parameters", parameters)
        except QMPError as exc:
            raise MigrationError(
                f"{self._what()}: the source refused: {exc}", side="source"
            ) from exc
        self.was_running = bool(status.get("running"))
        out.private["was_running"] = self.was_running

    # -- destination: prepare, then source: perform, then destination: finish ------

    async def _incoming(
        self, clock: GateClock, inn_clock: GateClock, machine: Machine
    ) -> MigrationProgress:
        inn = inn_clock.ajob
        with ExitStack() as stack:
            try:
                inn.private["source"] = self.source.name
                inn.private[SOURCE_QMP] = machine.qmp_path
                inn.private[SOURCE_PROCESS] = process_record(machine.pid)
                inn.private["was_running"] = self.was_running
                # The source answers queries while the destination starts.
                async with clock.section(peer=inn_clock):
                    await inn_clock.phase("prepare")
                    uri, events = await self._prepare(inn_clock, machine, stack)
                # The destination answers queries while the source performs.
                async with inn_clock.section(peer=clock):
                    progress = await self._perform(clock, machine, uri)
                await self._finish(clock, inn_clock, events)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._discard_destination()
                raise
        return progress

    async def _prepare(
        self, inn_clock: GateClock, source: Machine, stack: ExitStack
    ) -> tuple[str, EventSubscription]:
        inn = inn_clock.ajob
        host = self.destination.host
        # The destination's domain answers queries while its QEMU starts
        # and greets (from "shutoff" to its QEMU's "inmigrate").
        async with inn_clock.section():
            try:
                machine = await host.start_machine(
                    self.destination.name, source.spec, incoming=True
                )
            except FlowError as exc:
                raise MigrationError(
                    f"{self._what()}: the destination QEMU did not start: {exc}",
                    side="destination",
                ) from exc
            self.destination.attach(machine)
            # Persisted again, with the destination's socket: recovery must be
            # able to reach the QEMU this phase started.
            inn.private[DESTINATION_QMP] = machine.qmp_path
            inn.private[DESTINATION_PROCESS] = process_record(machine.pid)
            await inn_clock.phase("prepare")
        listen = host.incoming_uri(machine.name)
        events = stack.enter_context(machine.qmp.subscribe("MIGRATION"))
        try:
            async with inn_clock.monitor() as mon:
                await mon.execute("migrate-set-capabilities", EVENTS_ON)
                await mon.execute("migrate-incoming", {"uri": listen})
                reply = await mon.execute("query-migrate")
        except QMPError as exc:
            raise MigrationError(
                f"{self._what()}: the destination refused: {exc}", side="destination"
            ) from exc
        uri = _listening_uri(listen, reply)
        inn.private["uri"] = uri
        return uri, events

    async def _perform(self, clock: GateClock, machine: Machine, uri: str) -> MigrationProgress:
        out = clock.ajob
        out.private["uri"] = uri
        destination = self.destination.machine
        out.private[DESTINATION_QMP] = None if destination is None else destination.qmp_path
        out.private[DESTINATION_PROCESS] = (
            None if destination is None else process_record(destination.pid)
        )
        await clock.phase("perform")

        async def poll(mon: BoundedSession) -> str | None:
            progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
            out.set_progress(progress.as_dict())
            return progress.status if progress.status in TERMINAL_STATUSES else None

        # The guest stops (STOP) when the switchover begins; every command
        # stalls until it ends, so the flow stops polling: leaving the section
        # to poll would keep queries out for the stall and its own command.
        switching = False

        def ended(event: QMPEvent) -> str | None:
            nonlocal switching
            if event.name == "STOP":
                switching = True
                return None
            return migration_ended(event)

        def interval() -> float:
            return math.inf if switching else self.options.poll_interval

        try:
            with machine.qmp.subscribe({"MIGRATION", "STOP"}) as events:
                async with clock.monitor() as mon:
                    await mon.execute("migrate", {"uri": uri})
                out.set_abort_hook(cancel_migration)
                try:
                    status, aborted = await wait_in_sections(
                        clock, events, ended, poll=poll, interval=interval
                    )
                finally:
                    out.set_abort_hook(None)
            progress = await final_progress(clock, status)
        except QMPClosedError as exc:
            raise MigrationError(
                f"{self._what()}: the source's monitor closed: {exc}", side="source"
            ) from exc
        except QMPError as exc:
            raise MigrationError(f"{self._what()}: {exc}", side="source") from exc
        if status == "completed":
            if aborted is not None:
                _log.info("%s: completed before the abort could stop it", self._what())
            return progress
        if aborted is not None:
            raise aborted
        why = progress.error or "QEMU gave no reason"
        raise MigrationError(f"{self._what()} {status}: {why}", side="source", status=status)

    async def _finish(
        self, clock: GateClock, inn_clock: GateClock, events: EventSubscription
    ) -> None:
        # The source's QEMU has completed: an abort can no longer stop it.
        clock.ajob.set_allowed({Job.QUERY})
        try:
            # The source answers queries until the destination runs the VM.
            async with clock.section(peer=inn_clock):
                await inn_clock.phase("finish")
                # One deadline for the destination's end and its answer to "cont".
                limit = Deadline(
                    self.destination.name, self.options.finish_timeout, flow="migration"
                )
                status, _ = await wait_in_sections(
                    inn_clock, events, migration_ended, timeout=limit.remaining()
                )
                if status != "completed":
                    raise MigrationError(
                        f"{self._what()}: the destination's migration {status}",
                        side="destination",
                        status=status,
                    )
                if self.was_running:
                    async with inn_clock.monitor(limit) as mon:
                        await mon.execute("cont")
        except JobTimeoutError as exc:  # before TimeoutError: it is one
            raise MigrationError(
                f"{self._what()}: the destination did not finish: {exc}", side="destination"
            ) from exc
        except TimeoutError:
            raise MigrationError(
                f"{self._what()}: the destination did not finish within "
                f"{self.options.finish_timeout:g} s of the source",
                side="destination",
            ) from None
        except QMPError as exc:
            raise MigrationError(
                f"{self._what()}: the destination failed: {exc}", side="destination"
            ) from exc

    # -- cleaning up ---------------------------------------------------------------

    async def _discard_destination(self) -> None:
        machine = self.destination.detach()
        if machine is not None:
            with anyio.move_on_after(self.options.cleanup_timeout):
                await machine.stop()

    async def _recover(self, out: ActiveAsyncJob, machine: Machine, error: BaseException) -> None:
        """After a failure: make sure no migration runs, and that the source
        runs if it ran before. A source whose monitor is gone is stopped."""
        if out.preempted:
            # DESTROY: the source is being killed; there is nothing to resume.
            _log.info("%s pre-empted by DESTROY", self._what())
            return
        _log.info("%s failed (%r); recovering the source", self._what(), error)
        with anyio.move_on_after(self.options.cleanup_timeout):
            try:
                await out.set_phase("confirm")
                async with out.monitor() as mon:
                    await self._settle(mon)
                    if self.was_running:
                        status = await mon.execute("query-status")
                        if not status.get("running"):
                            await mon.execute("cont")
                return
            except QMPClosedError:
                pass
            except QMPError as exc:
                _log.warning("%s: could not resume the source: %s", self._what(), exc)
                return
        if machine.qmp.closed or machine.stopped:
            self.source.detach()
            with anyio.move_on_after(self.options.cleanup_timeout):
                await machine.stop()

    async def _settle(self, mon: MonitorSession) -> None:
        """Cancel a migration still under way and wait until it ended."""
        progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
        if progress.active and progress.status != "cancelling":
            await mon.execute("migrate_cancel")
        while progress.active:
            await anyio.sleep(_FINAL_QUERY_PAUSE)
            progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
