"""A VM's observed state: what this manager last learnt of its QEMU, read at once.

A reader (a metrics exporter, a UI, :func:`~jobctl.qemu.domstats` with
``max_age``) must not wait for a job or for QEMU to learn how a VM is: during
a migration's switchover, or while QEMU is stopped, the monitor answers
nobody. So each :class:`~jobctl.qemu.VM` keeps an :class:`Observer`, and
``vm.observed`` returns an :class:`ObservedState`: a frozen snapshot, built
from memory, that never enters the monitor and never awaits.

What it holds, each value with the :class:`Stamp` of its observation (the
event loop's clock and the wall clock, UTC):

* the run state (:class:`ObservedRun`): from QEMU's ``STOP``, ``RESUME`` and
  ``SHUTDOWN`` events, ``MIGRATION`` events' end of a migration, and every
  ``query-status`` answer the flows and domstats get;
* the migration (:class:`ObservedMigration`): its status from ``MIGRATION``
  events, its passes from ``MIGRATION_PASS``, and its figures (bytes
  transferred, remaining, dirty rate, downtime...) from every
  ``query-migrate`` answer the flows already ask for;
* the block devices' counters (:class:`ObservedBlock`) from every
  ``query-blockstats`` answer (domstats');
* the current async job and its phase (:class:`ObservedJob`), read from the
  domain itself (:meth:`jobctl.Domain.info`) when the snapshot is taken.

Events are taken as QEMU's connection reads them (a QMP event listener, called by the
client's reader before any subscriber runs): the observer holds no buffer and runs no
task, so it never lags and never drops. Answers are taken when they come back
through a flow's or domstats' monitor session.

Ages tell how much to trust a value: a value is as old as its last evidence,
even when nothing changed since (no event says "still running"). A caller
that needs younger values asks QEMU (a QUERY job, ``domstats(vm,
max_age=...)``).

Read it on the event loop's thread. From another thread the snapshot still
builds (it takes no lock and awaits nothing), but it has no loop time
(:attr:`ObservedState.monotonic` is None): ages then come from the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final, final

import anyio
import attrs

from jobctl._core._clock import Stamp
from jobctl._core._domain import Domain
from jobctl._core._kinds import AsyncJob
from jobctl.qemu._machine import Machine
from jobctl.qemu._progress import ACTIVE_STATUSES, MigrationProgress
from jobctl.qmp import EventListener

__all__ = [
    "BlockStats",
    "ObservedBlock",
    "ObservedJob",
    "ObservedMigration",
    "ObservedRun",
    "ObservedState",
    "Observer",
    "Stamp",
]


#: The phase every async job begins in.
_FIRST_PHASE: Final = "begin"
#: The QMP events an observer takes from its machine.
OBSERVED_EVENTS: Final = ("STOP", "RESUME", "SHUTDOWN", "MIGRATION", "MIGRATION_PASS")


def _loop_time() -> float | None:
    """The event loop's clock, or None outside the loop's thread."""
    try:
        return anyio.current_time()
    except RuntimeError:  # sniffio's AsyncLibraryNotFoundError is one
        return None


def _count(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key)
    return value if type(value) is int else 0


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


@final
@attrs.frozen
class BlockStats:
    """One block device's counters (``query-blockstats``)."""

    #: The guest device (its qdev path) or, for a bare node, the node name.
    device: str
    node: str | None
    rd_bytes: int
    wr_bytes: int
    rd_operations: int
    wr_operations: int
    flush_operations: int

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> BlockStats:
        """The counters of one ``query-blockstats`` entry. Never raises: a
        counter that is missing or not an int reads as 0, and the device is
        the entry's ``qdev``, else its ``device``, else its node name, else
        ``"?"``."""
        stats = entry.get("stats")
        if not isinstance(stats, Mapping):
            stats = {}
        node = entry.get("node-name")
        device = entry.get("qdev") or entry.get("device") or node or "?"
        return cls(
            device=str(device),
            node=node if isinstance(node, str) else None,
            rd_bytes=_count(stats, "rd_bytes"),
            wr_bytes=_count(stats, "wr_bytes"),
            rd_operations=_count(stats, "rd_operations"),
            wr_operations=_count(stats, "wr_operations"),
            flush_operations=_count(stats, "flush_operations"),
        )


@final
@attrs.frozen
class ObservedRun:
    """QEMU's run state as last observed.

    ``status`` is QEMU's RunState (``"running"``, ``"paused"``,
    ``"inmigrate"``, ``"finish-migrate"``, ``"postmigrate"``,
    ``"shutdown"``...), or ``"shutoff"`` once no QEMU runs for the VM on
    this host. ``via`` says what told it: ``"query-status"`` (QEMU's own
    word), an event's name (``"STOP"``, ``"RESUME"``, ``"SHUTDOWN"``,
    ``"MIGRATION"``: the status is the one QEMU enters on that event),
    ``"attach"`` (a machine started for an incoming migration is in
    ``inmigrate``) or ``"detach"``.
    """

    status: str
    running: bool
    observed: Stamp
    via: str


@final
@attrs.frozen
class ObservedMigration:
    """The VM's migration (out, in, or to a file) as last observed.

    ``status`` is QEMU's MigrationStatus, from the last ``MIGRATION`` event
    or ``query-migrate`` answer, whichever came last (``observed``). The
    figures are from the last ``query-migrate`` answer (``figures``; None
    before the first): bytes ``transferred``, ``remaining`` and ``total``
    (RAM), ``dirty_rate`` in bytes per second (QEMU's dirty pages rate
    times its page size), throughput ``mbps``, and in milliseconds
    ``total_time``, ``expected_downtime`` and, once completed, QEMU's
    measured ``downtime``. ``passes`` counts the passes over RAM (the last
    ``MIGRATION_PASS`` event or ``dirty-sync-count``). A member QEMU did not
    report is None.
    """

    status: str
    observed: Stamp
    figures: Stamp | None = None
    transferred: int | None = None
    remaining: int | None = None
    total: int | None = None
    passes: int | None = None
    dirty_rate: int | None = None
    mbps: float | None = None
    total_time: int | None = None
    expected_downtime: int | None = None
    downtime: int | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        """Whether the migration is under way."""
        return self.status in ACTIVE_STATUSES

    def progress(self) -> MigrationProgress:
        """These values as a :class:`MigrationProgress` (what domstats reports)."""
        return MigrationProgress(
            status=self.status,
            total_time=self.total_time,
            downtime=self.downtime,
            expected_downtime=self.expected_downtime,
            transferred=self.transferred,
            remaining=self.remaining,
            total=self.total,
            mbps=self.mbps,
            dirty_sync_count=self.passes,
            error=self.error,
        )


@final
@attrs.frozen
class ObservedBlock:
    """The block devices' counters from the last ``query-blockstats`` answer
    (no devices once no QEMU runs here)."""

    devices: tuple[BlockStats, ...]
    observed: Stamp


@final
@attrs.frozen
class ObservedJob:
    """The domain's async job, read from the domain itself when the snapshot
    was taken (so observed at the snapshot's time: it is never stale).

    ``started`` and ``phase_since`` are on the event loop's clock;
    ``phase_since`` is known for the phase a job begins with and for those
    the jobctl flows name (they tell the observer); None for a phase named
    elsewhere.
    """

    id: int
    kind: AsyncJob
    owner: str | None
    phase: str
    started: float
    phase_since: float | None
    interruptible: bool
    progress: Mapping[str, Any]


@final
@attrs.frozen
class ObservedState:
    """A VM's observed state, taken at ``wall`` (and ``monotonic``, the event
    loop's clock; None when taken off the loop's thread). A member is None
    until first observed."""

    domain: str
    run: ObservedRun | None
    migration: ObservedMigration | None
    block: ObservedBlock | None
    job: ObservedJob | None
    wall: float
    monotonic: float | None

    def age(self, stamp: Stamp | None) -> float:
        """Seconds between ``stamp`` and this snapshot (infinite for None):
        on the loop's clock, or the wall clock off the loop's thread."""
        if stamp is None:
            return float("inf")
        if self.monotonic is not None:
            return max(0.0, self.monotonic - stamp.monotonic)
        return max(0.0, self.wall - stamp.wall)


def block_devices(reply: list[Any]) -> tuple[BlockStats, ...]:
    """The devices of a ``query-blockstats`` answer (entries that are not
    objects are left out)."""
    return tuple(
        BlockStats.from_entry(entry)
        for entry in reply
        if type(entry) is dict or isinstance(entry, Mapping)
    )


def dirty_rate(reply: Mapping[str, Any]) -> int | None:
    """Bytes dirtied per second, from a ``query-migrate`` answer's ``ram``."""
    ram = reply.get("ram")
    if not isinstance(ram, Mapping):
        return None
    pages, size = _int(ram.get("dirty-pages-rate")), _int(ram.get("page-size"))
    return None if pages is None or size is None else pages * size


@final
class Observer:
    """Keeps one VM's :class:`ObservedState`; ``vm.observer`` (read it with
    ``vm.observed``).

    Guarantee: :meth:`state` never awaits, never enters the monitor and
    takes no lock, whatever QEMU or the domain's jobs are doing. The ``saw_*``
    methods are how the flows and domstats report what they learnt; they
    are synchronous and never raise on a malformed answer (it is ignored).
    """

    __slots__ = (
        "_block",
        "_domain",
        "_incoming",
        "_migration",
        "_phase",
        "_run",
        "_tap",
    )

    def __init__(self, domain: Domain) -> None:
        if not isinstance(domain, Domain):
            raise TypeError(f"an Observer needs a jobctl.Domain, not {domain!r}")
        self._domain = domain
        self._run: ObservedRun | None = None
        self._migration: ObservedMigration | None = None
        self._block: ObservedBlock | None = None
        #: (job id, phase, loop time) of the last phase a flow named.
        self._phase: tuple[int, str, float] | None = None
        self._tap: EventListener | None = None
        self._incoming = False

    # -- reading ------------------------------------------------------------------

    def state(self) -> ObservedState:
        """The snapshot, now: plain memory reads, no await, no monitor."""
        monotonic = _loop_time()
        wall = time.time()
        return ObservedState(
            domain=self._domain.name,
            run=self._run,
            migration=self._migration,
            block=self._block,
            job=self._job(),
            wall=wall,
            monotonic=monotonic,
        )

    def _job(self) -> ObservedJob | None:
        info = self._domain.info().async_job
        if info is None:
            return None
        noted = self._phase
        if noted is not None and noted[0] == info.id:
            since = noted[2] if noted[1] == info.phase else None
        else:
            # No phase named yet: the job is in the phase it began with.
            since = info.started if info.phase == _FIRST_PHASE else None
        return ObservedJob(
            id=info.id,
            kind=info.kind,
            owner=info.owner,
            phase=info.phase,
            started=info.started,
            phase_since=since,
            interruptible=info.interruptible,
            progress=info.progress,
        )

    # -- the machine's events ------------------------------------------------------

    def watch(self, machine: Machine) -> None:
        """Take ``machine``'s events from now on (and forget the last
        machine's). :meth:`VM.attach <jobctl.qemu.VM.attach>` calls it."""
        self.unwatch()
        self._incoming = machine.incoming
        if machine.incoming:
            self._set_run("inmigrate", False, "attach")
        self._tap = machine.qmp.listen(
            OBSERVED_EVENTS, lambda event: self.saw_event(event.name, event.data)
        )

    def unwatch(self) -> None:
        """Stop taking the current machine's events."""
        tap, self._tap = self._tap, None
        if tap is not None:
            tap.close()

    def saw_event(self, name: str, data: Mapping[str, Any]) -> None:
        """QEMU sent event ``name`` with ``data`` (now)."""
        if name == "RESUME":
            self._set_run("running", True, name)
        elif name == "STOP":
            migrating = self._migration is not None and self._migration.active
            self._set_run("finish-migrate" if migrating else "paused", False, name)
        elif name == "SHUTDOWN":
            self._set_run("shutdown", False, name)
        elif name == "MIGRATION":
            status = data.get("status")
            if isinstance(status, str):
                self._set_migration_status(status)
                if status == "completed":
                    # QEMU's run state once a migration completed: the
                    # source's guest stays stopped, the destination's waits.
                    self._set_run("paused" if self._incoming else "postmigrate", False, name)
                elif self._incoming and status in ACTIVE_STATUSES:
                    self._set_run("inmigrate", False, name)
        elif name == "MIGRATION_PASS":
            passes = _int(data.get("pass"))
            if passes is not None:
                now = Stamp.now()
                current = self._migration
                if current is None:
                    self._migration = ObservedMigration("active", now, passes=passes)
                else:
                    self._migration = attrs.evolve(current, observed=now, passes=passes)

    # -- answers -------------------------------------------------------------------

    def saw_reply(self, command: str, reply: Any) -> None:
        """A monitor command's answer came back (now): ``query-status``,
        ``query-migrate`` and ``query-blockstats`` are taken, others ignored."""
        if command == "query-status":
            if isinstance(reply, Mapping):
                status = reply.get("status")
                self._set_run(
                    status if isinstance(status, str) else "unknown",
                    bool(reply.get("running")),
                    command,
                )
        elif command == "query-migrate":
            if isinstance(reply, Mapping):
                self.saw_migration(MigrationProgress.from_reply(reply), dirty_rate(reply))
        elif command == "query-blockstats" and isinstance(reply, list):
            self.saw_blocks(block_devices(reply))

    def saw_blocks(self, devices: tuple[BlockStats, ...]) -> None:
        """A ``query-blockstats`` answer, parsed (:func:`block_devices`; now)."""
        self._block = ObservedBlock(devices, Stamp.now())

    def saw_migration(self, progress: MigrationProgress, dirty_rate: int | None = None) -> None:
        """A ``query-migrate`` answer, parsed (now). A QEMU that never
        migrated (status ``"none"``) leaves the last migration as it was."""
        if progress.status == "none":
            return
        now = Stamp.now()
        self._migration = ObservedMigration(
            status=progress.status,
            observed=now,
            figures=now,
            transferred=progress.transferred,
            remaining=progress.remaining,
            total=progress.total,
            passes=progress.dirty_sync_count,
            dirty_rate=dirty_rate,
            mbps=progress.mbps,
            total_time=progress.total_time,
            expected_downtime=progress.expected_downtime,
            downtime=progress.downtime,
            error=progress.error,
        )

    def saw_phase(self, job_id: int, phase: str) -> None:
        """A flow names async job ``job_id``'s phase ``phase`` (now)."""
        self._phase = (job_id, phase, anyio.current_time())

    def saw_shutoff(self, via: str = "detach") -> None:
        """No QEMU runs for the VM on this host any more (now)."""
        self.unwatch()
        self._incoming = False
        now = Stamp.now()
        self._run = ObservedRun("shutoff", False, now, via)
        self._block = ObservedBlock((), now)

    # -- helpers -------------------------------------------------------------------

    def _set_run(self, status: str, running: bool, via: str) -> None:
        self._run = ObservedRun(status, running, Stamp.now(), via)

    def _set_migration_status(self, status: str) -> None:
        now = Stamp.now()
        current = self._migration
        if current is None or (not current.active and status in ("setup", "active")):
            # A new migration: the last one's figures are not this one's.
            self._migration = ObservedMigration(status, now)
        else:
            self._migration = attrs.evolve(current, status=status, observed=now)

    def __repr__(self) -> str:
        return f"<Observer of {self._domain.name!r}>"
