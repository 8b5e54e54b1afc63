"""Planted bugs: each one a small, named patch of the job core.

Each ``plant_*`` function takes a ``pytest.MonkeyPatch`` and breaks exactly
one rule, the way a plausible slip in ``jobctl/_domain.py`` would. The
meta-tests show that the property suite finds each one. ``BUGS`` maps a
bug's name to its patch and to the invariant that must catch it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio.lowlevel
import attrs
import pytest

from jobctl import ActiveAsyncJob, ActiveJob, Domain, MonitorSession, TraceKind
from jobctl._domain import _Waiter
from jobctl._tasks import current_task_key

Job_ = ActiveJob | ActiveAsyncJob


def plant_gate_never_closed(mp: pytest.MonkeyPatch) -> None:
    """Admission forgets to ask whether a section is open."""

    def _admissible(self: Domain, job: Job_) -> bool:
        if isinstance(job, ActiveAsyncJob):
            return self._async is None and not self._regular
        ajob = self._async
        if ajob is not None and job.kind not in ajob._allowed:  # BUG: no `_section is None`
            return False
        if job.kind.shared:
            return not self._exclusive
        return not self._regular

    mp.setattr(Domain, "_admissible", _admissible)


def plant_mask_ignored(mp: pytest.MonkeyPatch) -> None:
    """Admission and parking forget the async job's allowed mask."""

    def _admissible(self: Domain, job: Job_) -> bool:
        if isinstance(job, ActiveAsyncJob):
            return self._async is None and not self._regular
        ajob = self._async
        if ajob is not None and ajob._section is None:  # BUG: no `kind not in _allowed`
            return False
        if job.kind.shared:
            return not self._exclusive
        return not self._regular

    def _parked(self: Domain, job: Job_) -> bool:
        return self._async is not None and isinstance(job, ActiveAsyncJob)

    mp.setattr(Domain, "_admissible", _admissible)
    mp.setattr(Domain, "_parked", _parked)


def plant_exclusive_shared(mp: pytest.MonkeyPatch) -> None:
    """Exclusive jobs only check for other exclusive jobs, so they join QUERY jobs."""

    def _admissible(self: Domain, job: Job_) -> bool:
        if isinstance(job, ActiveAsyncJob):
            return self._async is None and not self._regular
        ajob = self._async
        if ajob is not None and (ajob._section is None or job.kind not in ajob._allowed):
            return False
        return not self._exclusive  # BUG: `not self._regular` for exclusive kinds

    mp.setattr(Domain, "_admissible", _admissible)


def plant_barrier_skipped(mp: pytest.MonkeyPatch) -> None:
    """Nobody waits at the barrier."""

    async def _wait_barrier(self: Domain) -> None:
        await anyio.lowlevel.checkpoint()  # BUG: ignores _barrier_event

    mp.setattr(Domain, "_wait_barrier", _wait_barrier)


def plant_barrier_never_released(mp: pytest.MonkeyPatch) -> None:
    """The last job of a section ends, but the async job waiting at the
    barrier is never woken."""
    original = Domain._finish_barrier

    def _finish_barrier(self: Domain, *args: Any, **kwargs: Any) -> None:
        self._barrier_event = None  # BUG: the waiter's event is dropped, never set
        original(self, *args, **kwargs)

    mp.setattr(Domain, "_finish_barrier", _finish_barrier)


def plant_monitor_released_before_reply(mp: pytest.MonkeyPatch) -> None:
    """The session hands the monitor to the next waiter as soon as it sends."""
    original = MonitorSession.execute

    async def execute(self: MonitorSession, command: str, arguments: Any = None) -> Any:
        dom = self._job._domain
        if dom._monitor_session is self:
            dom._release_monitor(self)  # BUG: released before the reply
            self._state = "held"
        return await original(self, command, arguments)

    mp.setattr(MonitorSession, "execute", execute)


def plant_monitor_entered_while_interruptible(mp: pytest.MonkeyPatch) -> None:
    """The async job may enter the monitor inside its section."""

    async def __aenter__(self: MonitorSession) -> MonitorSession:
        job = self._job
        dom = job._domain
        if isinstance(job, ActiveAsyncJob) and job._section is None:
            await dom._wait_barrier()  # BUG: no refusal when job._section is set
        self._task = current_task_key()
        self._monitor = dom._monitor
        self._state = "waiting"
        await dom._acquire_monitor(self)
        self._state = "held"
        dom._emit(TraceKind.MONITOR_ENTER, job, None)
        return self

    mp.setattr(MonitorSession, "__aenter__", __aenter__)


def plant_waiter_leaked_on_cancel(mp: pytest.MonkeyPatch) -> None:
    """A cancelled waiter is reported gone but stays in the queue."""
    original = Domain._drop_waiter

    def _drop_waiter(self: Domain, waiter: _Waiter, result: str) -> None:
        if result != "cancelled":
            original(self, waiter, result)
            return
        waiter.job._state = "ended"  # BUG: not removed from self._waiters
        self._emit(TraceKind.JOB_WAIT_FAILED, waiter.job, {"result": result})

    mp.setattr(Domain, "_drop_waiter", _drop_waiter)


def plant_waiter_barges(mp: pytest.MonkeyPatch) -> None:
    """Dispatch skips a waiter that cannot begin instead of stopping at it."""

    def _dispatch(self: Domain) -> None:
        kept: list[_Waiter] = []
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            job = waiter.job
            if self._parked(job) or not self._admissible(job):
                kept.append(waiter)  # BUG: the later waiters may barge past it
                continue
            if not waiter.exempt:
                self._counted_waiters -= 1
            waiter.granted = True
            self._grant(job, True)
            waiter.event.set()
        waiters.extend(kept)

    mp.setattr(Domain, "_dispatch", _dispatch)


@attrs.frozen
class Bug:
    name: str
    plant: Callable[[pytest.MonkeyPatch], None]
    #: The invariant whose check must catch it.
    invariant: int


BUGS: Final[Mapping[str, Bug]] = {
    bug.name: bug
    for bug in (
        Bug("monitor_released_before_reply", plant_monitor_released_before_reply, 1),
        Bug("monitor_entered_while_interruptible", plant_monitor_entered_while_interruptible, 2),
        Bug("gate_never_closed", plant_gate_never_closed, 3),
        Bug("mask_ignored", plant_mask_ignored, 3),
        Bug("barrier_skipped", plant_barrier_skipped, 4),
        Bug("exclusive_shared", plant_exclusive_shared, 5),
        Bug("waiter_barges", plant_waiter_barges, 6),
        Bug("barrier_never_released", plant_barrier_never_released, 6),
        Bug("waiter_leaked_on_cancel", plant_waiter_leaked_on_cancel, 7),
    )
}

__all__ = ["BUGS", "Bug"]
