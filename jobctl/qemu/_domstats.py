"""domstats: a VM's statistics, gathered as a QUERY job.

A QUERY job shares the domain with other queries and, while an async job
runs, begins only inside its interruptible sections: a migration or a backup
never shares the monitor with it. ``nowait=True`` is for exporters that must
never wait for a job: when the domain is busy it returns at once with
``partial=True`` and nothing from QEMU (as libvirt's ``NOWAIT`` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import anyio
import attrs

from jobctl._core._domain import Domain
from jobctl._core._errors import JobBusyError
from jobctl._core._kinds import Job
from jobctl.qemu._deadline import Deadline
from jobctl.qemu._progress import MigrationProgress

__all__ = ["BlockStats", "DomainStats", "domstats"]


def _count(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key)
    return value if type(value) is int else 0


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
class DomainStats:
    """What :func:`domstats` gathered, at ``time`` (the event loop's clock)."""

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


async def domstats(
    dom: Domain,
    *,
    nowait: bool = False,
    timeout: float | None = None,
    owner: str = "domstats",
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
    """
    limit = Deadline(dom.name, timeout, flow="domstats")
    try:
        async with dom.job(Job.QUERY, owner=owner, nowait=nowait, timeout=timeout) as job:
            if dom.monitor is None:
                return DomainStats(dom.name, anyio.current_time(), "shutoff", False)
            migration = None
            async with limit.monitor(job) as mon:
                status = await mon.execute("query-status")
                blocks = await mon.execute("query-blockstats")
                if job.in_section:
                    # Only an async job's section lets a query in: it may be migrating.
                    progress = MigrationProgress.from_reply(await mon.execute("query-migrate"))
                    if progress.active:
                        migration = progress
    except JobBusyError:
        if not nowait:
            raise
        return DomainStats(dom.name, anyio.current_time(), None, False, partial=True)
    return DomainStats(
        dom.name,
        anyio.current_time(),
        str(status.get("status", "unknown")),
        bool(status.get("running")),
        tuple(BlockStats.from_entry(entry) for entry in blocks if isinstance(entry, Mapping)),
        migration,
    )
