"""domstats: a VM's statistics, gathered as a QUERY job.

A QUERY job shares the domain with other queries and, while an async job
runs, begins only inside its interruptible sections: a migration or a backup
never shares the monitor with it. ``nowait=True`` is for exporters that must
never wait for a job: when the domain is busy it returns at once with
``partial=True`` and nothing from QEMU (as libvirt's ``NOWAIT`` does).

Given a :class:`~jobctl.qemu.VM` rather than its domain, domstats also tells
the VM's observer what QEMU answered, and with ``max_age`` it answers from
the observed state (``vm.observed``) when every value it needs was observed
at most ``max_age`` seconds ago: no job, no monitor, no await. Only when one
is older does it run the QUERY job.
"""

from __future__ import annotations

from typing import Any, final

import attrs

from jobctl._core._domain import Domain
from jobctl._core._errors import JobBusyError
from jobctl._core._kinds import Job
from jobctl.qemu._deadline import Deadline
from jobctl.qemu._observed import BlockStats, Observer, Stamp, block_devices, dirty_rate
from jobctl.qemu._progress import MigrationProgress
from jobctl.qemu._vm import VM

__all__ = ["BlockStats", "DomainStats", "domstats", "observed_stats"]


@final
@attrs.frozen
class DomainStats:
    """What :func:`domstats` gathered, at ``time`` (the event loop's clock;
    for ``observed`` stats, when the oldest value was observed) and ``wall``
    (the same moment in seconds since the Unix epoch)."""

    domain: str
    time: float
    #: QEMU's run state (``"running"``, ``"paused"``, ``"postmigrate"``,
    #: ``"inmigrate"``, ...); ``"shutoff"`` when no QEMU runs for the domain
    #: on this host; ``None`` for partial stats.
    state: str | None
    running: bool
    block: tuple[BlockStats, ...] = ()
    #: The migration under way, while the domain's async job is migrating.
    migration: MigrationProgress | None = None
    #: ``nowait`` found the domain busy: nothing was asked of QEMU.
    partial: bool = False
    #: Built from the VM's observed state (``max_age``): nothing was asked of QEMU.
    observed: bool = False
    #: ``time`` on the wall clock, seconds since the Unix epoch.
    wall: float = attrs.field(kw_only=True)

    @property
    def stamp(self) -> Stamp:
        """``time`` and ``wall`` together."""
        return Stamp(self.time, self.wall)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (docs/JSON.md); ``time`` as a :class:`Stamp`'s JSON."""
        return {
            "domain": self.domain,
            "time": self.stamp.to_json(),
            "state": self.state,
            "running": self.running,
            "block": [attrs.asdict(block) for block in self.block],
            "migration": None if self.migration is None else self.migration.to_json(),
            "partial": self.partial,
            "observed": self.observed,
        }


def observed_stats(vm: VM, max_age: float) -> DomainStats | None:
    """The stats :func:`domstats` would gather, from ``vm.observed``, if
    every value they need is at most ``max_age`` seconds old; else None.

    They need the run state and the block counters, and while an async job
    runs and the observed migration is under way, its figures (from a
    ``query-migrate`` answer). Never awaits.
    """
    state = vm.observed
    run = state.run
    if run is None or state.age(run.observed) > max_age:
        return None
    if run.status == "shutoff":
        return DomainStats(
            vm.name, run.observed.monotonic, "shutoff", False, observed=True, wall=run.observed.wall
        )
    block = state.block
    if block is None or state.age(block.observed) > max_age:
        return None
    stamps: list[Stamp] = [run.observed, block.observed]
    migration = None
    observed_migration = state.migration
    if state.job is not None and observed_migration is not None and observed_migration.active:
        figures = observed_migration.figures
        if figures is None or state.age(figures) > max_age:
            return None
        stamps.append(figures)
        migration = observed_migration.progress()
    oldest = min(stamps, key=lambda stamp: stamp.monotonic)
    return DomainStats(
        vm.name,
        oldest.monotonic,
        run.status,
        run.running,
        block.devices,
        migration,
        observed=True,
        wall=oldest.wall,
    )


async def domstats(
    target: Domain | VM,
    *,
    nowait: bool = False,
    timeout: float | None = None,
    owner: str = "domstats",
    max_age: float | None = None,
) -> DomainStats:
    """Gather ``query-status``, ``query-blockstats`` and, while an async job
    runs, the migration's progress (``query-migrate``), in one QUERY job.

    Waits for the job like any other, unless ``nowait``: then a busy domain
    gives partial stats at once. ``timeout`` bounds the whole call: the
    wait for the job, the wait for the monitor and QEMU's answers. When it
    passes, :class:`jobctl.JobTimeoutError` names the domain and what did
    not happen in time (the command QEMU did not answer, for a stopped or
    hung QEMU), and the job, the monitor and the command are given up (the
    domain is idle again). With ``timeout=None`` the job waits for the
    domain's ``wait_timeout`` and QEMU's answers are not bounded.
    Raises what the monitor raises (:class:`jobctl.qmp.QMPError`).

    ``target`` is the domain, or the VM: then QEMU's answers go to its
    observer too, and ``max_age`` (seconds, >= 0; a VM only) lets observed
    values that young stand for a fresh read (:func:`observed_stats`).
    """
    observer: Observer | None = None
    if isinstance(target, VM):
        dom, observer = target.domain, target.observer
        if max_age is not None:
            if not (isinstance(max_age, int | float) and max_age >= 0):
                raise ValueError(f"max_age must be a number of seconds >= 0, not {max_age!r}")
            stats = observed_stats(target, max_age)
            if stats is not None:
                return stats
    elif isinstance(target, Domain):
        dom = target
        if max_age is not None:
            raise TypeError("domstats(max_age=...) reads a VM's observed state: pass the VM")
    else:
        raise TypeError(f"domstats takes a jobctl.Domain or a VM, not {target!r}")
    limit = Deadline(dom.name, timeout, flow="domstats")
    try:
        async with dom.job(Job.QUERY, owner=owner, nowait=nowait, timeout=timeout) as job:
            if dom.monitor is None:
                if observer is not None:
                    observer.saw_shutoff("domstats")
                now = Stamp.now()
                return DomainStats(dom.name, now.monotonic, "shutoff", False, wall=now.wall)
            migration = None
            devices: tuple[BlockStats, ...] = ()
            # The observer is told here, each answer parsed once for both.
            async with limit.monitor(job) as mon:
                status = await mon.execute("query-status")
                if observer is not None:
                    observer.saw_reply("query-status", status)
                blocks = await mon.execute("query-blockstats")
                if type(blocks) is list:
                    devices = block_devices(blocks)
                    if observer is not None:
                        observer.saw_blocks(devices)
                if job.in_section:
                    # Only an async job's section lets a query in: it may be migrating.
                    reply = await mon.execute("query-migrate")
                    progress = MigrationProgress.from_reply(reply)
                    if observer is not None:
                        observer.saw_migration(progress, dirty_rate(reply))
                    if progress.active:
                        migration = progress
    except JobBusyError:
        if not nowait:
            raise
        now = Stamp.now()
        return DomainStats(dom.name, now.monotonic, None, False, partial=True, wall=now.wall)
    now = Stamp.now()
    return DomainStats(
        dom.name,
        now.monotonic,
        str(status.get("status", "unknown")),
        bool(status.get("running")),
        devices,
        migration,
        wall=now.wall,
    )
