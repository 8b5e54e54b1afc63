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
"""

from __future__ import annotations

import errno
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Final, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._errors import MonitorClosedError, MonitorError
from jobctl._kinds import AsyncJob
from jobctl.journal import AsyncJobHandler, AsyncJobRecord, by_phase
from jobctl.qemu._errors import FlowError
from jobctl.qemu._progress import ACTIVE_STATUSES
from jobctl.qmp import QMPClient, open_qmp_unix

__all__ = [
    "DESTINATION_QMP",
    "QMP",
    "SOURCE_QMP",
    "Attach",
    "QemuRecovery",
    "QemuRecoveryError",
    "QemuRecoveryStatistics",
    "QemuRef",
    "attach_unix",
]

_log: Final = logging.getLogger("jobctl.qemu")

#: Private-data key: the QMP socket of a BACKUP's or SAVE's QEMU.
QMP: Final = "qmp"
#: Private-data key (both migration records): the source QEMU's QMP socket.
SOURCE_QMP: Final = "source_qmp"
#: Private-data key (both migration records): the destination QEMU's QMP socket.
DESTINATION_QMP: Final = "destination_qmp"

#: An incoming migration in ``setup`` listens: nothing arrives any more
#: once the source is settled, so only these are waited for.
_LOADING: Final = ACTIVE_STATUSES - {"setup"}
#: Block job states after which nothing runs.
_JOB_OVER: Final = frozenset({"concluded", "null"})
_GONE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ECONNREFUSED})


@final
@attrs.frozen
class QemuRef:
    """Where a job's QEMU is: its domain's name and the QMP socket the flow
    recorded (None when it recorded none: the QEMU was not started yet, or
    the flow does not record it)."""

    domain: str
    qmp: str | None = None


#: Opens a QMP connection to the already-running QEMU ``ref`` names, for the
#: block; yields None when no QEMU runs there (none recorded, or it is gone).
Attach = Callable[[QemuRef], AbstractAsyncContextManager[QMPClient | None]]


@asynccontextmanager
async def attach_unix(ref: QemuRef, *, timeout: float = 10.0) -> AsyncIterator[QMPClient | None]:
    """Connect to the QMP socket recorded in ``ref`` (an :data:`Attach`).

    Yields None when no socket was recorded, when nothing listens there any
    more, or when QEMU closes the connection during the greeting (it is
    exiting). A QEMU that does not greet within ``timeout`` seconds (another
    client holds its only monitor) raises :class:`TimeoutError`: it may run,
    so it cannot be taken as gone.
    """
    if ref.qmp is None:
        _log.info("recovery: no QMP socket recorded for %r: taken as not running", ref.domain)
        await anyio.lowlevel.checkpoint()
        yield None
        return
    async with AsyncExitStack() as stack:
        qmp: QMPClient | None
        try:
            qmp = await stack.enter_async_context(open_qmp_unix(ref.qmp, timeout=timeout))
        except OSError as exc:
            if exc.errno not in _GONE_ERRNOS:
                raise
            qmp = None
        except MonitorClosedError:
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


class QemuRecoveryError(FlowError):
    """Settling a dead run's async job failed: QEMU refused a command, or
    did not settle in time. The message names the domain, kind and phase."""


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
    in at most one place (resumed if it ran before).
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
            except MonitorError as exc:
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
        except MonitorClosedError:
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
            except MonitorClosedError:
                pass
        self._counts["quit"] += 1

    # -- migration -----------------------------------------------------------------

    async def _migration_out(self, record: AsyncJobRecord) -> None:
        private = record.private
        await self._settle_migration(
            QemuRef(record.domain, _optional_text(private, SOURCE_QMP)),
            QemuRef(_text(record, "destination"), _optional_text(private, DESTINATION_QMP)),
            _flag(private, "was_running"),
        )

    async def _migration_in(self, record: AsyncJobRecord) -> None:
        private = record.private
        await self._settle_migration(
            QemuRef(_text(record, "source"), _optional_text(private, SOURCE_QMP)),
            QemuRef(record.domain, _optional_text(private, DESTINATION_QMP)),
            _flag(private, "was_running"),
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
        async with self._attach(QemuRef(record.domain, _optional_text(record.private, QMP))) as mon:
            if mon is None:
                return
            status = await self._job_status(mon, job_id)
            if status not in _JOB_OVER and status != "aborting":
                await mon.execute("job-cancel", {"id": job_id})
                self._counts["block_jobs_cancelled"] += 1
            await self._settle_block_job(mon, job_id, status)

    async def _backup_finalize(self, record: AsyncJobRecord) -> None:
        job_id = _text(record, "job_id")
        async with self._attach(QemuRef(record.domain, _optional_text(record.private, QMP))) as mon:
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
        async with self._attach(QemuRef(record.domain, _optional_text(private, QMP))) as mon:
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
        async with self._attach(QemuRef(record.domain, _optional_text(private, QMP))) as mon:
            await self._end_migration(mon)
            await self._resume(mon, _flag(private, "was_running"))

    async def _save_finish(self, record: AsyncJobRecord) -> None:
        # The file is whole: do what the flow was doing after it.
        private = record.private
        async with self._attach(QemuRef(record.domain, _optional_text(private, QMP))) as mon:
            if _flag(private, "keep_running") is False:
                await self._quit(mon)
            else:
                await self._resume(mon, _flag(private, "was_running"))


def _about(record: AsyncJobRecord) -> tuple[str, str, str]:
    return record.kind.name, record.domain, record.phase
