"""The reference model: an executable specification of one domain's decisions.

Read it beside ``docs/CORE_API.md``. It is written to be obviously right, not
fast: the state is a frozen value, every function is pure (state in, new
state and decisions out), lists are scanned from the front. The property
suite feeds it the requests and state changes the real core traced and checks
that every decision the core made is the one written here (a differential
test, see :class:`jobctl.testing.InvariantChecker`, invariants 8 to 12).

The rules, once each:

* QUERY jobs run beside each other; every other regular job runs alone. An
  async job begins only on an empty domain, and at most one runs.
* While an async job runs, a regular job may begin only inside an open
  section, and only if its kind is allowed (DESTROY always is).
* The queue is first come, first served, with DESTROY waiters ahead of all
  others. A waiter that cannot run until the async job ends is *parked*: it
  holds up nobody. A job may begin when no unparked waiter is ahead of it and
  it is compatible with what runs. Whenever something changes, waiters are
  granted from the front of the queue, skipping parked ones, until the first
  that may not begin.
* An arriving request that may not begin waits, unless it asked ``nowait``
  (refused: busy) or it counts against ``max_queued`` and that many counted
  waiters are queued (refused: queue full). Async jobs and DESTROY do not
  count.
* A DESTROY request pre-empts the running async job.
* The monitor has one holder; sessions wait for it in arrival order, and a
  ``nowait`` session that cannot have it at once is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, final

import attrs

__all__ = [
    "AsyncJobState",
    "DomainState",
    "Waiter",
    "allowed_changed",
    "arrive",
    "async_ended",
    "can_begin",
    "destroy_requested",
    "gate_closed",
    "gate_opened",
    "job_ended",
    "monitor_arrive",
    "monitor_left",
    "monitor_wait_ended",
    "queue_order",
    "wait_ended",
]

DESTROY: Final = "DESTROY"
QUERY: Final = "QUERY"

#: What becomes of an arriving request.
BEGIN: Final = "begin"
WAIT: Final = "wait"
BUSY: Final = "busy"
QUEUE_FULL: Final = "queue_full"


@final
@attrs.frozen
class Waiter:
    """A request in the queue."""

    job: int
    #: The job kind's name (``"QUERY"``, or an async kind like ``"SAVE"``).
    kind: str
    is_async: bool
    since: float
    #: When its wait must end (``since + timeout``), or None.
    deadline: float | None = None
    #: An async job's allowed mask (what it lets into its sections).
    allowed: frozenset[str] = frozenset()

    @property
    def counted(self) -> bool:
        """Whether it counts against ``max_queued``."""
        return counts(self.kind, self.is_async)


def counts(kind: str, is_async: bool) -> bool:
    """Async-job requests and DESTROY do not count against ``max_queued``."""
    return not is_async and kind != DESTROY


@final
@attrs.frozen
class AsyncJobState:
    """The running async job."""

    job: int
    allowed: frozenset[str]
    section_open: bool = False
    #: Regular jobs that began in the open section and still run.
    section: frozenset[int] = frozenset()
    #: Regular jobs of the section it left that still run.
    barrier: frozenset[int] = frozenset()
    destroyed: bool = False


@final
@attrs.frozen
class DomainState:
    """Everything a domain's decisions depend on."""

    #: Running regular jobs: (job id, kind) pairs.
    regular: frozenset[tuple[int, str]] = frozenset()
    async_job: AsyncJobState | None = None
    #: The queue in arrival order.
    waiters: tuple[Waiter, ...] = ()
    monitor_holder: int | None = None
    #: Jobs whose monitor sessions wait, in arrival order.
    monitor_queue: tuple[int, ...] = ()

    def active(self, job: int) -> bool:
        """Whether ``job`` runs (a regular job or the async job)."""
        if self.async_job is not None and self.async_job.job == job:
            return True
        return any(j == job for j, _ in self.regular)

    @property
    def counted_waiters(self) -> int:
        return sum(1 for w in self.waiters if w.counted)


Grants = tuple[Waiter, ...]


# -- the admission rule -----------------------------------------------------


def queue_order(state: DomainState) -> tuple[Waiter, ...]:
    """The queue as the rules read it: DESTROY waiters first, then the rest,
    each in arrival order."""
    destroys = tuple(w for w in state.waiters if w.kind == DESTROY and not w.is_async)
    others = tuple(w for w in state.waiters if not (w.kind == DESTROY and not w.is_async))
    return destroys + others


def parked(state: DomainState, kind: str, is_async: bool) -> bool:
    """A request that cannot begin until the async job ends."""
    ajob = state.async_job
    if ajob is None:
        return False
    return is_async or (kind != DESTROY and kind not in ajob.allowed)


def compatible(state: DomainState, kind: str, is_async: bool) -> bool:
    """Whether a job of ``kind`` may run beside what runs now."""
    if is_async:
        return state.async_job is None and not state.regular
    ajob = state.async_job
    if ajob is not None:
        if not ajob.section_open:
            return False
        if kind != DESTROY and kind not in ajob.allowed:
            return False
    if kind == QUERY:
        return all(other == QUERY for _, other in state.regular)
    return not state.regular


def can_begin(state: DomainState, kind: str, is_async: bool, waiter: Waiter | None = None) -> bool:
    """The one rule: a job may begin when no unparked waiter is ahead of it
    and it is compatible with what runs. ``waiter`` is the job's place in the
    queue; None for a request arriving now (it would join the back, a DESTROY
    behind the earlier DESTROYs only)."""
    order = queue_order(state)
    if waiter is not None:
        ahead = order[: order.index(waiter)]
    elif kind == DESTROY and not is_async:
        ahead = tuple(w for w in order if w.kind == DESTROY and not w.is_async)
    else:
        ahead = order
    if any(not parked(state, w.kind, w.is_async) for w in ahead):
        return False
    return compatible(state, kind, is_async)


def _begin(state: DomainState, job: int, kind: str, is_async: bool) -> DomainState:
    if is_async:
        raise AssertionError("async jobs begin through _begin_async")
    ajob = state.async_job
    if ajob is not None and ajob.section_open:
        ajob = attrs.evolve(ajob, section=ajob.section | {job})
    return attrs.evolve(state, regular=state.regular | {(job, kind)}, async_job=ajob)


def _begin_async(state: DomainState, job: int, allowed: frozenset[str]) -> DomainState:
    return attrs.evolve(state, async_job=AsyncJobState(job, allowed | {DESTROY}))


def dispatch(state: DomainState) -> tuple[DomainState, Grants]:
    """Grant waiters from the front of the queue, skipping parked ones, until
    the first that may not begin."""
    grants: list[Waiter] = []
    while True:
        first = next((w for w in queue_order(state) if not parked(state, w.kind, w.is_async)), None)
        if first is None or not compatible(state, first.kind, first.is_async):
            return state, tuple(grants)
        state = attrs.evolve(state, waiters=tuple(w for w in state.waiters if w is not first))
        if first.is_async:
            state = _begin_async(state, first.job, first.allowed)
        else:
            state = _begin(state, first.job, first.kind, False)
        grants.append(first)


# -- arriving requests --------------------------------------------------------


def destroy_requested(state: DomainState) -> DomainState:
    """A DESTROY request pre-empts the running async job."""
    ajob = state.async_job
    if ajob is None or ajob.destroyed:
        return state
    return attrs.evolve(state, async_job=attrs.evolve(ajob, destroyed=True))


def arrive(
    state: DomainState,
    job: int,
    kind: str,
    is_async: bool,
    *,
    nowait: bool,
    max_queued: int,
    since: float,
    timeout: float | None,
    allowed: frozenset[str] = frozenset(),
) -> tuple[DomainState, str]:
    """Decide an arriving request: begin, wait, busy or queue_full. (A
    DESTROY request's pre-emption, :func:`destroy_requested`, comes first.)"""
    if can_begin(state, kind, is_async):
        if is_async:
            return _begin_async(state, job, allowed), BEGIN
        return _begin(state, job, kind, False), BEGIN
    if nowait:
        return state, BUSY
    if counts(kind, is_async) and max_queued and state.counted_waiters >= max_queued:
        return state, QUEUE_FULL
    deadline = None if timeout is None else since + timeout
    waiter = Waiter(job, kind, is_async, since, deadline, allowed)
    return attrs.evolve(state, waiters=(*state.waiters, waiter)), WAIT


def wait_ended(state: DomainState, job: int) -> tuple[DomainState, Grants]:
    """A waiter gave up (timeout or cancellation); those behind it may go."""
    state = attrs.evolve(state, waiters=tuple(w for w in state.waiters if w.job != job))
    return dispatch(state)


# -- changes that may let waiters in -------------------------------------------


def job_ended(state: DomainState, job: int) -> tuple[DomainState, Grants]:
    """A regular job ended."""
    regular = frozenset(entry for entry in state.regular if entry[0] != job)
    ajob = state.async_job
    if ajob is not None:
        ajob = attrs.evolve(ajob, section=ajob.section - {job}, barrier=ajob.barrier - {job})
    return dispatch(attrs.evolve(state, regular=regular, async_job=ajob))


def async_ended(state: DomainState) -> tuple[DomainState, Grants]:
    """The async job ended; jobs still running from its section become plain
    regular jobs, and waiters parked behind it may go."""
    return dispatch(attrs.evolve(state, async_job=None))


def gate_opened(state: DomainState) -> tuple[DomainState, Grants]:
    ajob = state.async_job
    assert ajob is not None
    opened = attrs.evolve(ajob, section_open=True, section=frozenset())
    return dispatch(attrs.evolve(state, async_job=opened))


def gate_closed(state: DomainState) -> DomainState:
    """Leaving a section: the gate closes and its jobs form the barrier.
    Closing lets nobody in, so nothing is granted."""
    ajob = state.async_job
    assert ajob is not None
    closed = attrs.evolve(ajob, section_open=False, section=frozenset(), barrier=ajob.section)
    return attrs.evolve(state, async_job=closed)


def allowed_changed(state: DomainState, allowed: Iterable[str]) -> tuple[DomainState, Grants]:
    ajob = state.async_job
    assert ajob is not None
    changed = attrs.evolve(ajob, allowed=frozenset(allowed) | {DESTROY})
    return dispatch(attrs.evolve(state, async_job=changed))


# -- the monitor -----------------------------------------------------------------


def monitor_arrive(state: DomainState, job: int, *, nowait: bool) -> tuple[DomainState, str]:
    """A session asks for the monitor: ``enter``, ``wait`` or ``refused``.
    (Sessions wait only behind a holder: a release hands on at once.)"""
    if state.monitor_holder is None and not state.monitor_queue:
        return attrs.evolve(state, monitor_holder=job), "enter"
    if nowait:
        return state, "refused"
    return attrs.evolve(state, monitor_queue=(*state.monitor_queue, job)), "wait"


def monitor_left(state: DomainState) -> tuple[DomainState, tuple[tuple[str, int], ...]]:
    """The holder left: the first waiting session whose job still runs gets
    the monitor; sessions of jobs that ended on the way are dropped
    (``("dropped", job)``, then ``("enter", job)``)."""
    handoffs: list[tuple[str, int]] = []
    queue = state.monitor_queue
    while queue:
        first, queue = queue[0], queue[1:]
        if state.active(first):
            handoffs.append(("enter", first))
            return attrs.evolve(state, monitor_holder=first, monitor_queue=queue), tuple(handoffs)
        handoffs.append(("dropped", first))
    return attrs.evolve(state, monitor_holder=None, monitor_queue=()), tuple(handoffs)


def monitor_wait_ended(state: DomainState, job: int) -> DomainState:
    """A waiting session gave up."""
    return attrs.evolve(state, monitor_queue=tuple(j for j in state.monitor_queue if j != job))
