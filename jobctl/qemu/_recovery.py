"""Recovery of the flows' async jobs after the manager restarts.

A manager that dies mid-flow leaves QEMU as the flow had it: a migration
under way, a paused VM, a block job, a partial save file. At start-up
:func:`jobctl.journal.recover` hands each dead run's async job to its kind's
handler; :meth:`QemuRecovery.handlers` gives one per flow, built with
:func:`jobctl.journal.by_phase` after libvirt's per-phase recovery, each
settling QEMU from what it reports now:

==============  ===================  =============================================
kind            phase                recovery
==============  ===================  =============================================
MIGRATION_OUT   ``begin``            nothing: no migration started (a destination
                                     QEMU already started is MIGRATION_IN's)
MIGRATION_OUT   ``perform``,         cancel a migration still under way and wait
                ``confirm``          for its end; if both sides completed, the
                                     destination owns the VM: resume it there,
                                     quit the source; else quit the destination
                                     and resume the source if it ran
MIGRATION_IN    ``begin``            nothing: the destination QEMU is not started
MIGRATION_IN    ``prepare``,         the same settling, seen from the destination
                ``finish``
BACKUP          ``begin``            nothing: no block job started
BACKUP          ``perform``          cancel the block job, wait, dismiss it
BACKUP          ``finalize``         finish it: ``job-finalize`` if pending, wait,
                                     dismiss
BACKUP          ``finish``           nothing: the job is dismissed
SAVE            ``begin``            resume the VM if it ran
SAVE            ``perform``          cancel the migration to the file, wait,
                                     resume the VM, remove the partial file
SAVE            ``finish``           the file is whole: stop QEMU, or resume the
                                     VM with ``keep_running`` (and when unknown)
==============  ===================  =============================================

Settling a migration is idempotent, so the pair's two records (both are in
the journal from ``prepare`` to ``finish``) agree in either order: the second
finds the first's work done. A job persisted as it began (phase ``begin``,
empty private data) started nothing.

The handlers reach QEMU through an :data:`Attach` function, which opens a
new QMP connection to an already-running QEMU (:func:`attach_unix`: the
socket path the flow recorded). What they read from the job's private data:

* every kind: ``qmp`` (:data:`QMP`), the QMP socket of the job's QEMU;
  a migration instead ``source_qmp`` and ``destination_qmp``
  (:data:`SOURCE_QMP`, :data:`DESTINATION_QMP`), on both sides;
* MIGRATION_OUT: ``destination`` (the peer's domain), ``was_running``;
* MIGRATION_IN: ``source``, ``was_running`` (when absent, the source's record
  resumes the destination);
* BACKUP: ``job_id``;
* SAVE: ``path``, ``was_running``, ``keep_running``.

A value the record lacks is handled as unknown: a QEMU with no recorded
socket as not running, an unknown ``was_running`` as a VM that stays paused.

Gone or unreachable. Beside each socket a flow may record its QEMU's
process (:data:`PROCESS`, :data:`SOURCE_PROCESS`, :data:`DESTINATION_PROCESS`:
:func:`process_record` of the machine's pid): the pid, the process's start
time (``/proc/<pid>/stat`` field 22) and the boot it ran in, so that a pid
used again by another process is not taken for the QEMU. :func:`attach_unix`
then takes a QEMU as gone only when that process is gone; a QEMU whose
process lives but whose monitor cannot be reached (socket file removed,
connection refused, no greeting in time, a broken protocol) raises
:class:`QemuUnreachableError` naming its pid and socket, and recovery changes
nothing for that job: its record stays for the next recovery. Without a
recorded process, a socket that is gone or refuses is taken as a gone QEMU,
unless a listening socket bound to that path still exists (Linux's
``/proc/net/unix``: the socket file was removed, its QEMU still listens).
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Final, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._core._kinds import AsyncJob
from jobctl.journal import (
    AsyncJobHandler,
    AsyncJobRecord,
    by_phase,
)
from jobctl.qemu._errors import FlowError
from jobctl.qemu._progress import ACTIVE_STATUSES
from jobctl.qmp import (
    QMPClient,
    QMPClosedError,
    QMPConnectTimeoutError,
    QMPError,
    QMPProtocolError,
    open_qmp_unix,
)

__all__ = [
    "DESTINATION_PROCESS",
    "DESTINATION_QMP",
    "PROCESS",
    "QMP",
    "SOURCE_PROCESS",
    "SOURCE_QMP",
    "Attach",
    "QemuProcess",
    "QemuRecovery",
    "QemuRecoveryError",
    "QemuRecoveryStatistics",
    "QemuRef",
    "QemuUnreachableError",
    "attach_unix",
    "process_record",
]

_log: Final = logging.getLogger("jobctl.qemu")

#: Private-data key: the QMP socket of a BACKUP's or SAVE's QEMU.
QMP: Final = "qmp"
#: Private-data key (both migration records): the source QEMU's QMP socket.
SOURCE_QMP: Final = "source_qmp"
#: Private-data key (both migration records): the destination QEMU's QMP socket.
DESTINATION_QMP: Final = "destination_qmp"

#: Private-data key: the process of a BACKUP's or SAVE's QEMU (:func:`process_record`).
PROCESS: Final = "qmp_process"
#: Private-data key (both migration records): the source QEMU's process.
SOURCE_PROCESS: Final = "source_process"
#: Private-data key (both migration records): the destination QEMU's process.
DESTINATION_PROCESS: Final = "destination_process"

#: An incoming migration in ``setup`` listens: nothing arrives any more
#: once the source is settled, so only these are waited for.
_LOADING: Final = ACTIVE_STATUSES - {"setup"}
#: Block job states after which nothing runs.
_JOB_OVER: Final = frozenset({"concluded", "null"})
_GONE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ECONNREFUSED})


_PROC: Final = "/proc"
_BOOT_ID: Final = "/proc/sys/kernel/random/boot_id"
#: ``/proc/net/unix``'s flag of a listening socket (``__SO_ACCEPTCON``).
_ACCEPTING: Final = 0x10000


def _boot_id() -> str | None:
    try:
        with open(_BOOT_ID) as file:
            return file.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``; None if no such process runs (a
    zombie has exited: None too)."""
    try:
        with open(f"{_PROC}/{pid}/stat") as file:
            text = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2, the command, is in parentheses and may hold anything.
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[22 - 3])


@final
@attrs.frozen
class QemuProcess:
    """One process, told apart from any other that gets its pid later: its
    ``pid``, its ``start_time`` (``/proc/<pid>/stat`` field 22, clock ticks
    after boot) and the ``boot_id`` of the boot it ran in."""

    pid: int
    start_time: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> QemuProcess | None:
        """The process that has ``pid`` now; None if none has (or there is
        no ``/proc`` to tell)."""
        boot = _boot_id()
        start = _start_time(pid) if boot is not None else None
        return None if start is None or boot is None else cls(pid, start, boot)

    def alive(self) -> bool | None:
        """Whether this very process still runs; None when this machine
        cannot tell (no ``/proc``)."""
        boot = _boot_id()
        if boot is None or not os.path.isdir(f"{_PROC}/self"):
            return None
        return boot == self.boot_id and _start_time(self.pid) == self.start_time

    def to_private(self) -> dict[str, Any]:
        """The JSON value a flow stores (see :func:`process_record`)."""
        return {"pid": self.pid, "start_time": self.start_time, "boot_id": self.boot_id}

    @classmethod
    def from_private(cls, value: Mapping[str, Any]) -> QemuProcess:
        """The inverse of :meth:`to_private`; :class:`ValueError` naming what
        is wrong with ``value``."""
        pid, start, boot = (value.get(key) for key in ("pid", "start_time", "boot_id"))
        if not (type(pid) is int and pid > 0 and type(start) is int and start >= 0):
            raise ValueError(f"not a recorded QEMU process: {value!r:.200}")
        if not (isinstance(boot, str) and boot):
            raise ValueError(f"not a recorded QEMU process: {value!r:.200}")
        return cls(pid, start, boot)


def process_record(pid: int | None) -> dict[str, Any] | None:
    """What a flow stores under :data:`PROCESS` (or :data:`SOURCE_PROCESS`,
    :data:`DESTINATION_PROCESS`) beside the QMP socket, from the machine's
    pid (:attr:`Machine.pid <jobctl.qemu.Machine.pid>`): None when there is
    no pid (a simulated machine) or no such process."""
    if pid is None:
        return None
    process = QemuProcess.of(pid)
    return None if process is None else process.to_private()


@final
@attrs.frozen
class QemuRef:
    """Where a job's QEMU is: its domain's name, the QMP socket the flow
    recorded (None when it recorded none: the QEMU was not started yet, or
    the flow does not record it), and its process when recorded."""

    domain: str
    qmp: str | None = None
    process: QemuProcess | None = None


#: Opens a QMP connection to the already-running QEMU ``ref`` names, for the
#: block; yields None when no QEMU runs there (none recorded, or it is gone).
Attach = Callable[[QemuRef], AbstractAsyncContextManager[QMPClient | None]]


class QemuRecoveryError(FlowError):
    """Settling a dead run's async job failed: QEMU refused a command, or
    did not settle in time. The message names the domain, kind and phase."""


@final
class QemuUnreachableError(QemuRecoveryError):
    """A job's QEMU runs (its recorded process lives), or may run, but its
    monitor cannot be reached: recovery changes nothing for that job and
    keeps its record. The operator reconnects the monitor (or stops the
    QEMU), then recovers again.

    ``domain``, ``qmp`` (the socket path), ``pid`` (None when no process
    was recorded), ``alive`` (True: the recorded process runs; None: not
    known) and ``reason`` say which and why.
    """

    def __init__(
        self, ref: QemuRef, reason: str, *, alive: bool | None, during: str | None = None
    ) -> None:
        self.domain = ref.domain
        self.qmp = ref.qmp
        self.pid = None if ref.process is None else ref.process.pid
        self.alive = alive
        self.reason = reason
        self._ref = ref
        who = f"the QEMU of {ref.domain!r}"
        if self.pid is not None:
            who += f" (pid {self.pid})"
        state = "runs" if alive else "may run"
        super().__init__(
            f"{during + ': ' if during else ''}{who} {state} but is unreachable: {reason}"
            f" (QMP socket {ref.qmp!r}); recovery leaves it and its job's record as they are:"
            " reconnect its monitor or stop it, then recover again"
        )

    def during(self, what: str) -> QemuUnreachableError:
        """The same error, its message beginning with ``what``."""
        return QemuUnreachableError(self._ref, self.reason, alive=self.alive, during=what)


def _listening(path: str) -> bool | None:
    """Whether a listening unix socket bound to ``path`` exists (its file may
    be removed); None when ``/proc/net/unix`` cannot tell."""
    try:
        with open(f"{_PROC}/net/unix") as file:
            lines = file.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & _ACCEPTING:
            return True
    return False


def _socket_error(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "its QMP socket file is gone"
    if exc.errno == errno.ECONNREFUSED:
        return "its QMP socket refuses connections"
    return f"its QMP socket cannot be reached ({exc})"


@asynccontextmanager
async def attach_unix(ref: QemuRef, *, timeout: float = 10.0) -> AsyncIterator[QMPClient | None]:
    """Connect to the QMP socket recorded in ``ref`` (an :data:`Attach`).

    Yields None when the QEMU is gone: no socket was recorded; its recorded
    process is gone (or another process has its pid: its start time or
    boot differ), then without connecting at all; or, with no process
    recorded, nothing listens on the socket (no file, or connection refused,
    and no listening socket bound to the path) or the QEMU closes the
    connection during the greeting (it is exiting).

    Raises :class:`QemuUnreachableError` naming the pid and the socket when
    the QEMU runs, or may run, but cannot be reached: the socket is gone or
    refuses while its recorded process lives (or, unrecorded, while a
    socket bound to that path still listens), no greeting within
    ``timeout`` seconds (another client holds its only monitor), a monitor
    that breaks the protocol, or another socket error.
    """
    if ref.qmp is None:
        _log.info("recovery: no QMP socket recorded for %r: taken as not running", ref.domain)
        await anyio.lowlevel.checkpoint()
        yield None
        return
    alive = None if ref.process is None else ref.process.alive()
    if alive is False:
        _log.info("recovery: the QEMU process of %r is gone: %r", ref.domain, ref.process)
        await anyio.lowlevel.checkpoint()
        yield None
        return
    async with AsyncExitStack() as stack:
        qmp: QMPClient | None
        try:
            qmp = await stack.enter_async_context(open_qmp_unix(ref.qmp, timeout=timeout))
        except QMPConnectTimeoutError as exc:  # a TimeoutError, so an OSError: first
            reason = f"no QMP greeting within {timeout:g} s (another client may hold its monitor)"
            raise QemuUnreachableError(ref, reason, alive=alive) from exc
        except OSError as exc:
            reason = _socket_error(exc)
            if alive is None and exc.errno in _GONE_ERRNOS and not _listening(ref.qmp):
                _log.info("recovery: %s for %r: taken as not running", reason, ref.domain)
                qmp = None
            else:
                raise QemuUnreachableError(
                    ref, reason, alive=alive or _listening(ref.qmp) or None
                ) from exc
        except QMPProtocolError as exc:
            reason = f"its monitor broke the QMP protocol: {exc}"
            raise QemuUnreachableError(ref, reason, alive=alive) from exc
        except QMPClosedError as exc:
            if alive:
                reason = "it closed the QMP connection during the greeting"
                raise QemuUnreachableError(ref, reason, alive=alive) from exc
            qmp = None
        yield qmp


@final
@attrs.frozen
class QemuRecoveryStatistics:
    """What a :class:`QemuRecovery` did so far."""

    #: Async job records handled (any kind, any phase).
    jobs: int
    #: ``migrate_cancel`` sent (migrations and saves).
    migrations_cancelled: int
    #: ``job-cancel`` sent.
    block_jobs_cancelled: int
    #: ``job-finalize`` sent.
    block_jobs_finalized: int
    #: ``job-dismiss`` sent.
    block_jobs_dismissed: int
    #: ``cont`` sent.
    resumed: int
    #: QEMUs told to ``quit`` (and seen gone).
    quit: int
    #: Partial save files removed.
    files_removed: int


def _text(record: AsyncJobRecord, key: str) -> str:
    """A string the flow stores in every record past ``begin``."""
    value = record.private.get(key)
    if not isinstance(value, str) or not value:
        raise QemuRecoveryError(
            f"recovering {record.kind.name} of {record.domain!r} in phase {record.phase!r}:"
            f" its private data has no {key!r} (found {value!r})"
        )
    return value


def _optional_text(private: Mapping[str, Any], key: str) -> str | None:
    value = private.get(key)
    return value if isinstance(value, str) and value else None


def _ref(record: AsyncJobRecord, domain: str, qmp_key: str, process_key: str) -> QemuRef:
    """The QEMU of ``domain`` as ``record`` has it: its socket and process."""
    private = record.private
    value = private.get(process_key)
    process = None
    if value is not None:
        try:
            if not isinstance(value, Mapping):
                raise ValueError(f"not a recorded QEMU process: {value!r:.200}")
            process = QemuProcess.from_private(value)
        except ValueError as exc:
            raise QemuRecoveryError(
                f"recovering {record.kind.name} of {record.domain!r} in phase {record.phase!r}:"
                f" its private data's {process_key!r} is {exc}"
            ) from None
    return QemuRef(domain, _optional_text(private, qmp_key), process)


def _flag(private: Mapping[str, Any], key: str) -> bool | None:
    value = private.get(key)
    return value if isinstance(value, bool) else None


_Action = Callable[[AsyncJobRecord], Awaitable[None]]


@final
class QemuRecovery:
    """The recovery handlers of jobctl.qemu's flows (see the module's table)::

        recovery = QemuRecovery(attach_unix)
        await recover(journal, backends=..., end_actions=...,
                      async_handlers=recovery.handlers())

    ``attach`` reaches each QEMU (:func:`attach_unix` by default). Each
    record is settled within ``settle_timeout`` seconds, else
    :class:`QemuRecoveryError`; QEMU's state is polled every
    ``poll_interval`` seconds meanwhile. A handler reports the job settled
    only once no migration or block job of it runs any more, and the VM runs
    in at most one place (resumed if it ran before). A QEMU that runs but
    cannot be reached fails its record with :class:`QemuUnreachableError`
    before anything is done to it or to its peer (see :func:`attach_unix`).
    """

    __slots__ = ("_attach", "_counts", "_poll_interval", "_settle_timeout")

    def __init__(
        self,
        attach: Attach = attach_unix,
        *,
        settle_timeout: float = 30.0,
        poll_interval: float = 0.05,
    ) -> None:
        for name, value in (("settle_timeout", settle_timeout), ("poll_interval", poll_interval)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        self._attach = attach
        self._settle_timeout = settle_timeout
        self._poll_interval = poll_interval
        self._counts: Counter[str] = Counter()

    def statistics(self) -> QemuRecoveryStatistics:
        """What the handlers did so far."""
        names = attrs.fields_dict(QemuRecoveryStatistics)
        return QemuRecoveryStatistics(**{name: self._counts[name] for name in names})

    def handlers(self) -> dict[AsyncJob, AsyncJobHandler]:
        """A handler per flow kind, for :func:`jobctl.journal.recover`.

        A phase the flows do not have raises
        :class:`jobctl.journal.RecoveryError` naming it."""
        bounded = self._bounded
        migration_out = bounded(self._migration_out)
        migration_in = bounded(self._migration_in)
        nothing = bounded(self._nothing)
        return {
            AsyncJob.MIGRATION_OUT: by_phase(
                {"begin": nothing, "perform": migration_out, "confirm": migration_out}
            ),
            AsyncJob.MIGRATION_IN: by_phase(
                {"begin": nothing, "prepare": migration_in, "finish": migration_in}
            ),
            AsyncJob.BACKUP: by_phase(
                {
                    "begin": nothing,
                    "perform": bounded(self._backup_cancel),
                    "finalize": bounded(self._backup_finalize),
                    "finish": nothing,
                }
            ),
            AsyncJob.SAVE: by_phase(
                {
                    "begin": bounded(self._save_begin),
                    "perform": self._save_perform,
                    "finish": bounded(self._save_finish),
                }
            ),
        }

    def _bounded(self, action: _Action) -> _Action:
        """``action`` within the settle timeout, its failures as
        :class:`QemuRecoveryError`."""

        async def run(record: AsyncJobRecord) -> None:
            what = f"recovering {record.kind.name} of {record.domain!r} in phase {record.phase!r}"
            self._counts["jobs"] += 1
            try:
                with anyio.fail_after(self._settle_timeout):
                    await action(record)
            except TimeoutError:
                raise QemuRecoveryError(
                    f"{what}: QEMU did not settle within {self._settle_timeout:g} s"
                ) from None
            except QemuUnreachableError as exc:
                raise exc.during(what) from exc.__cause__
            except QMPError as exc:
                raise QemuRecoveryError(f"{what}: {exc}") from exc

        return run

    # -- commands ----------------------------------------------------------------

    async def _nothing(self, record: AsyncJobRecord) -> None:
        _log.info("recovery: %s of %r in phase %r started nothing", *_about(record))
        await anyio.lowlevel.checkpoint()

    async def _migration_status(self, mon: QMPClient) -> str | None:
        """``query-migrate``'s status; None if the QEMU went away."""
        try:
            status = (await mon.execute("query-migrate")).get("status", "none")
        except QMPClosedError:
            return None
        return str(status)

    async def _end_migration(self, mon: QMPClient | None) -> str | None:
        """Cancel an outgoing migration still under way and wait for its
        end; its final status (None: no QEMU)."""
        if mon is None:
            return None
        status = await self._migration_status(mon)
        if status in ACTIVE_STATUSES and status != "cancelling":
            await mon.execute("migrate_cancel")
            self._counts["migrations_cancelled"] += 1
        while status in ACTIVE_STATUSES:
            await anyio.sleep(self._poll_interval)
            status = await self._migration_status(mon)
        return status

    async def _resume(self, mon: QMPClient | None, was_running: bool | None) -> None:
        """``cont`` a VM that ran before the job and is paused now."""
        if mon is None or not was_running:
            await anyio.lowlevel.checkpoint()
            return
        if not (await mon.execute("query-status")).get("running"):
            await mon.execute("cont")
            self._counts["resumed"] += 1

    async def _quit(self, mon: QMPClient | None) -> None:
        """Quit a QEMU and wait until it is gone (its monitor closes)."""
        if mon is None:
            await anyio.lowlevel.checkpoint()
            return
        with mon.subscribe("SHUTDOWN") as events:
            try:
                await mon.execute("quit")
                while True:
                    await events.receive()
            except QMPClosedError:
                pass
        self._counts["quit"] += 1

    # -- migration -----------------------------------------------------------------

    async def _migration_out(self, record: AsyncJobRecord) -> None:
        await self._settle_migration(
            _ref(record, record.domain, SOURCE_QMP, SOURCE_PROCESS),
            _ref(record, _text(record, "destination"), DESTINATION_QMP, DESTINATION_PROCESS),
            _flag(record.private, "was_running"),
        )

    async def _migration_in(self, record: AsyncJobRecord) -> None:
        await self._settle_migration(
            _ref(record, _text(record, "source"), SOURCE_QMP, SOURCE_PROCESS),
            _ref(record, record.domain, DESTINATION_QMP, DESTINATION_PROCESS),
            _flag(record.private, "was_running"),
        )

    async def _settle_migration(
        self, source: QemuRef, destination: QemuRef, was_running: bool | None
    ) -> None:
        """Leave the VM in exactly one place, from what both QEMUs report.

        The source's migration is ended first (cancelled if under way). If it
        completed (or the source is gone) and the destination completed too,
        the destination owns the VM; otherwise the source does, and the
        destination quits before the source resumes (it holds the disks).
        """
        async with self._attach(source) as src, self._attach(destination) as dst:
            src_status = await self._end_migration(src)
            dst_status = None if dst is None else await self._migration_status(dst)
            if dst is not None and src_status in (None, "completed"):
                # The source sent everything: let the destination load it.
                while dst_status in _LOADING:
                    await anyio.sleep(self._poll_interval)
                    dst_status = await self._migration_status(dst)
            if dst_status == "completed" and src_status in (None, "completed"):
                _log.info("recovery: %r owns the VM; %r quits", destination.domain, source.domain)
                await self._resume(dst, was_running)
                await self._quit(src)
                return
            await self._quit(dst)
            if src is None:
                _log.warning(
                    "recovery: the migration from %r to %r did not complete and the source"
                    " QEMU is gone: the VM runs nowhere",
                    source.domain,
                    destination.domain,
                )
            await self._resume(src, was_running)

    # -- backup ----------------------------------------------------------------------

    async def _job_status(self, mon: QMPClient, job_id: str) -> str:
        for entry in await mon.execute("query-jobs"):
            if isinstance(entry, Mapping) and entry.get("id") == job_id:
                return str(entry.get("status"))
        return "null"

    async def _settle_block_job(self, mon: QMPClient, job_id: str, status: str) -> None:
        """Wait until the job concluded, then dismiss it."""
        while status not in _JOB_OVER:
            await anyio.sleep(self._poll_interval)
            status = await self._job_status(mon, job_id)
        if status == "concluded":
            await mon.execute("job-dismiss", {"id": job_id})
            self._counts["block_jobs_dismissed"] += 1

    async def _backup_cancel(self, record: AsyncJobRecord) -> None:
        job_id = _text(record, "job_id")
        async with self._attach(_ref(record, record.domain, QMP, PROCESS)) as mon:
            if mon is None:
                return
            status = await self._job_status(mon, job_id)
            if status not in _JOB_OVER and status != "aborting":
                await mon.execute("job-cancel", {"id": job_id})
                self._counts["block_jobs_cancelled"] += 1
            await self._settle_block_job(mon, job_id, status)

    async def _backup_finalize(self, record: AsyncJobRecord) -> None:
        job_id = _text(record, "job_id")
        async with self._attach(_ref(record, record.domain, QMP, PROCESS)) as mon:
            if mon is None:
                return
            status = await self._job_status(mon, job_id)
            if status == "pending":
                await mon.execute("job-finalize", {"id": job_id})
                self._counts["block_jobs_finalized"] += 1
            elif status not in _JOB_OVER and status != "aborting":
                # The flow finalizes only a pending job: anything else failed.
                await mon.execute("job-cancel", {"id": job_id})
                self._counts["block_jobs_cancelled"] += 1
            await self._settle_block_job(mon, job_id, status)

    # -- save --------------------------------------------------------------------------

    async def _save_begin(self, record: AsyncJobRecord) -> None:
        # The flow may have paused the VM; the migration is not started.
        private = record.private
        async with self._attach(_ref(record, record.domain, QMP, PROCESS)) as mon:
            await self._resume(mon, _flag(private, "was_running"))

    async def _save_perform(self, record: AsyncJobRecord) -> None:
        path = _text(record, "path")
        await self._bounded(self._save_cancel)(record)
        # The migration is over: nothing writes the file any more. Removed
        # outside the settle timeout, which bounds waiting for QEMU only.
        try:
            await anyio.Path(path).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise QemuRecoveryError(
                f"recovering SAVE of {record.domain!r}: cannot remove the partial file: {exc}"
            ) from exc
        self._counts["files_removed"] += 1

    async def _save_cancel(self, record: AsyncJobRecord) -> None:
        private = record.private
        async with self._attach(_ref(record, record.domain, QMP, PROCESS)) as mon:
            await self._end_migration(mon)
            await self._resume(mon, _flag(private, "was_running"))

    async def _save_finish(self, record: AsyncJobRecord) -> None:
        # The file is whole: do what the flow was doing after it.
        private = record.private
        async with self._attach(_ref(record, record.domain, QMP, PROCESS)) as mon:
            if _flag(private, "keep_running") is False:
                await self._quit(mon)
            else:
                await self._resume(mon, _flag(private, "was_running"))


def _about(record: AsyncJobRecord) -> tuple[str, str, str]:
    return record.kind.name, record.domain, record.phase
