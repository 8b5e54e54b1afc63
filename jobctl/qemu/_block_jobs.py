"""QEMU's block jobs as a :class:`TaskBackend`: ``query-jobs`` and ``job-dismiss``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, final

import anyio.lowlevel

from jobctl._core._domain import Domain
from jobctl._core._kinds import Job
from jobctl.journal._backend import BackendState, BackendStatus
from jobctl.qmp import QMPClosedError, QMPError

__all__ = ["QemuBlockJobs"]


def _status(info: Mapping[str, Any]) -> BackendStatus | None:
    """One ``query-jobs`` entry as a status; None for a job already gone."""
    status = info.get("status")
    if status == "null":
        return None
    if status != "concluded":
        return BackendStatus(BackendState.RUNNING)
    error = info.get("error")
    if error:
        return BackendStatus(BackendState.FAILED, error=f"{info.get('type')} job: {error}")
    result = {
        "type": info.get("type"),
        "progress": info.get("current-progress"),
        "total": info.get("total-progress"),
    }
    return BackendStatus(BackendState.SUCCEEDED, result=result)


@final
class QemuBlockJobs:
    """The block jobs of one QEMU (real or simulated), through its domain.

    Start each journaled job with the task's backend id as ``job-id`` and
    ``auto-dismiss: false``: QEMU then keeps a concluded job, with its error
    if any, until :meth:`release` dismisses it after the journal recorded
    the outcome. ``query`` runs ``query-jobs`` in a QUERY job, ``release``
    runs ``job-dismiss`` in a MODIFY job, so both wait their turn on the
    domain like any other job (inside an async job, only in its
    interruptible sections, and only if it allows them).
    """

    __slots__ = ("_domain", "_owner")

    def __init__(self, domain: Domain, *, owner: str = "journal") -> None:
        self._domain = domain
        self._owner = owner

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        """The jobs among ``backend_ids`` that QEMU knows."""
        wanted = set(backend_ids)
        if not wanted:
            await anyio.lowlevel.checkpoint()
            return {}
        async with self._domain.job(Job.QUERY, owner=self._owner) as job:
            async with job.monitor() as mon:
                reply = await mon.execute("query-jobs")
        found: dict[str, BackendStatus] = {}
        for info in reply:
            job_id = info.get("id")
            if job_id in wanted:
                status = _status(info)
                if status is not None:
                    found[job_id] = status
        return found

    async def release(self, backend_ids: Sequence[str]) -> None:
        """Dismiss these concluded jobs; QEMU's refusal (an unknown or
        already dismissed id) is ignored, a closed monitor is not."""
        if not backend_ids:
            await anyio.lowlevel.checkpoint()
            return
        async with self._domain.job(Job.MODIFY, owner=self._owner) as job:
            async with job.monitor() as mon:
                for job_id in backend_ids:
                    try:
                        await mon.execute("job-dismiss", {"id": job_id})
                    except QMPClosedError:
                        raise
                    except QMPError:
                        pass
