"""Entity locks: all-or-nothing, shared or exclusive, FIFO among conflicts.

A request names every entity it needs and the mode for each. It is granted
all of them at once or none: a waiting request holds nothing.

Guarantees (``EntityLocks`` docstring has the rules they follow from):

* **Safety.** Two grants that hold one entity are both SHARED on it.
* **No deadlock.** A waiting request holds no entity, so nothing ever waits
  while holding: the only waits are a request waiting for holders and for
  conflicting requests queued ahead of it, and the queue order is total.
  A cycle would need a holder that waits, which this class never makes.
  (Code that takes a second grant while holding a first steps outside this
  argument; take everything in one request.)
* **FIFO among conflicts, no starvation.** Requests queue in order of
  (priority descending, arrival): a priority order, first come first served
  within a priority (the core's ``WaitQueue``, ranked by negated priority).
  A request is granted only if it conflicts with no holder *and with no
  request queued ahead of it*, so a later request can pass an earlier one
  only when they need nothing in common (or it has a higher priority). A
  stream of SHARED requests therefore cannot starve an EXCLUSIVE waiter:
  once that waiter queues, later SHARED requests for its entity queue
  behind it. Among equal priorities every waiter is granted once the
  finitely many holders and conflicting requests ahead of it have released.
* **Cost.** Filing a request in the queue, or taking it out, is O(1) per
  entity it needs (plus O(priorities waiting there) when a new priority
  appears); deciding whether it may go reads only the requests queued
  ahead of it on its own entities. A scan after a release leaves the
  requests of a pool with no free worker unread.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Protocol, final

import anyio
import anyio.lowlevel
import attrs

from jobctl._core._entity import Entity, LockMode, Need
from jobctl._core._queue import WaitQueue

from ._errors import EntityLockBusyError, EntityLockTimeoutError, LockConflict

__all__ = ["EntityLocks", "EntityLocksStatistics", "LockGrant", "normalize_needs"]

_grant_ids = itertools.count(1)

#: How many queued-ahead conflicts an error message lists (holders: all).
_SHOWN_AHEAD = 3


def normalize_needs(needs: Iterable[Need]) -> tuple[Need, ...]:
    """``needs`` as a tuple sorted by entity, one :class:`Need` per entity:
    what a lock request (and so a command) holds.

    An entity named twice is needed in the stronger of its modes (EXCLUSIVE
    wins). Anything that is not a :class:`Need` raises :class:`TypeError`
    naming it, and so does a bare :class:`Entity` (say ``.shared()`` or
    ``.exclusive()``).
    """
    if isinstance(needs, (str, bytes, Need, Entity)):
        raise TypeError(f"needs must be an iterable of Need, got {needs!r}")
    modes: dict[Entity, LockMode] = {}
    for need in needs:
        if not isinstance(need, Need):
            hint = (
                " (use entity.shared() or entity.exclusive())" if isinstance(need, Entity) else ""
            )
            raise TypeError(f"needs must hold Need values, got {need!r}{hint}")
        if modes.get(need.entity) is not LockMode.EXCLUSIVE:
            modes[need.entity] = need.mode
    return tuple(Need(entity, modes[entity]) for entity in sorted(modes))


@final
@attrs.frozen(slots=True, eq=False)
class LockGrant:
    """Proof that ``owner`` holds ``needs`` (until :meth:`EntityLocks.release`)."""

    id: int
    owner: str
    needs: tuple[Need, ...]
    acquired_at: float

    def mode_of(self, entity: Entity) -> LockMode | None:
        """The mode this grant holds ``entity`` in, or None if it does not."""
        for need in self.needs:
            if need.entity == entity:
                return need.mode
        return None

    def __str__(self) -> str:
        needs = ", ".join(map(str, self.needs)) or "nothing"
        return f"grant #{self.id} of {needs} to {self.owner!r}"


@final
@attrs.frozen(slots=True)
class EntityLocksStatistics:
    """A snapshot of an :class:`EntityLocks`."""

    #: Entities held by at least one grant.
    locked_entities: int
    #: Grants not yet released.
    grants: int
    #: Requests waiting in the queue.
    waiting: int


@final
class _Held:
    """The grants holding one entity: one EXCLUSIVE or any number SHARED."""

    __slots__ = ("grants", "mode")

    def __init__(self, mode: LockMode) -> None:
        self.mode = mode
        self.grants: dict[int, LockGrant] = {}


class _Pool(Protocol):
    """Capacity shared by many requests (an executor's workers): while it is
    closed none of its requests can be granted, so a scan skips them. Its
    requests wait in a lane of their own, so it must be hashable."""

    def __hash__(self) -> int: ...

    def _pool_open(self) -> bool: ...


@final
class _Request:
    """A lock request. Executor requests also name their ``pool`` and a
    ``ready`` test (may it use a grant now?); ``on_grant`` hears of the grant."""

    __slots__ = ("grant", "needs", "on_grant", "owner", "pool", "queued", "rank", "ready", "since")

    def __init__(
        self,
        needs: tuple[Need, ...],
        owner: str,
        rank: int,
        since: float,
        pool: _Pool | None,
        ready: Callable[[], bool] | None,
        on_grant: Callable[[LockGrant], None] | None,
    ) -> None:
        self.needs = needs
        self.owner = owner
        #: Its place in the queue's priority order: the negated priority.
        self.rank = rank
        self.since = since
        self.pool = pool
        self.ready = ready
        self.on_grant = on_grant
        self.grant: LockGrant | None = None
        self.queued = False

    def can_use_grant(self) -> bool:
        return _pool_open(self.pool) and (self.ready is None or self.ready())


def _rank(request: _Request) -> int:
    return request.rank


def _pool_open(pool: _Pool | None) -> bool:
    return pool is None or pool._pool_open()


def _check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner:
        raise TypeError(f"owner must be a non-empty str naming who takes the locks, got {owner!r}")
    return owner


def _check_priority(priority: object) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, got {priority!r}")
    return priority


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """``timeout`` if it is None or a number >= 0, else a clear error."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"{what} must be None or a number of seconds, got {timeout!r}")
    if not timeout >= 0:
        raise ValueError(f"{what} must be >= 0, got {timeout!r}")
    return float(timeout)


@final
class EntityLocks:
    """Shared/exclusive locks on :class:`Entity` values, taken all-or-nothing.

    Rules: a request is granted when none of its needs conflicts with a
    current grant or with a request queued ahead of it; the queue is ordered
    by priority (higher first), then arrival. Granting never makes a request
    hold part of what it asked for. See the module docstring for why this
    cannot deadlock or starve.

    Grants belong to no task: any task may release one.
    """

    __slots__ = ("_grants", "_held", "_queue", "_queued_on")

    def __init__(self) -> None:
        self._held: dict[Entity, _Held] = {}
        self._grants: dict[int, LockGrant] = {}
        # Waiting requests in grant order (priority, then arrival), in lanes
        # by pool (None: requests of no pool); and the same requests filed
        # under each entity they need.
        self._queue: WaitQueue[_Pool | None, _Request] = WaitQueue(rank=_rank)
        self._queued_on: WaitQueue[Entity, _Request] = WaitQueue(rank=_rank)

    # -- public API ---------------------------------------------------------

    def acquire_nowait(self, needs: Iterable[Need], *, owner: str, priority: int = 0) -> LockGrant:
        """Take every need at once, or raise :class:`EntityLockBusyError`.

        Fails when a need conflicts with a holder or with a request queued
        ahead at this priority; the error names them.
        """
        request = self._request(needs, owner, priority)
        if self._blocked(request):
            conflicts = self._conflicts(request)
            raise EntityLockBusyError(
                self._message(request, "at once (nowait)", conflicts),
                owner=request.owner,
                conflicts=conflicts,
            )
        return self._grant(request)

    async def acquire(
        self,
        needs: Iterable[Need],
        *,
        owner: str,
        priority: int = 0,
        timeout: float | None = None,
    ) -> LockGrant:
        """Wait until every need can be taken at once, then take them.

        ``timeout`` None waits for ever; ``0`` is :meth:`acquire_nowait`
        (raising :class:`EntityLockBusyError`); otherwise
        :class:`EntityLockTimeoutError` names the holders when the time runs
        out. Always a checkpoint. If cancelled, nothing is held afterwards.
        """
        wait = check_timeout(timeout)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if wait == 0:
            try:
                grant = self.acquire_nowait(needs, owner=owner, priority=priority)
            except EntityLockBusyError:
                await anyio.lowlevel.checkpoint()
                raise
        else:
            event = anyio.Event()
            request = self._request(needs, owner, priority, on_grant=lambda _grant: event.set())
            self._enqueue(request)
            if request.grant is None:
                return await self._wait(request, event, wait)
            grant = request.grant
        try:
            await anyio.lowlevel.cancel_shielded_checkpoint()
        except BaseException:
            self.release(grant)
            raise
        return grant

    def release(self, grant: LockGrant) -> None:
        """Give back every entity of ``grant`` and grant whoever can go now."""
        if self._grants.pop(grant.id, None) is not grant:
            raise RuntimeError(f"{grant} is not held (released twice, or from another EntityLocks)")
        for need in grant.needs:
            held = self._held[need.entity]
            del held.grants[grant.id]
            if not held.grants:
                del self._held[need.entity]
        self._scan()

    @asynccontextmanager
    async def hold(
        self,
        needs: Iterable[Need],
        *,
        owner: str,
        priority: int = 0,
        nowait: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[LockGrant]:
        """``async with locks.hold(needs, owner=...) as grant:`` holds the
        needs for the block (``nowait=True`` is ``timeout=0``)."""
        if nowait and timeout is not None:
            raise ValueError("pass nowait=True or a timeout, not both")
        grant = await self.acquire(
            needs, owner=owner, priority=priority, timeout=0 if nowait else timeout
        )
        try:
            yield grant
        finally:
            self.release(grant)

    def holders(self, entity: Entity) -> tuple[LockGrant, ...]:
        """The grants that hold ``entity`` now, oldest first."""
        held = self._held.get(entity)
        return () if held is None else tuple(held.grants.values())

    def statistics(self) -> EntityLocksStatistics:
        """How many entities are held, by how many grants, with how many waiting."""
        return EntityLocksStatistics(
            locked_entities=len(self._held), grants=len(self._grants), waiting=len(self._queue)
        )

    # -- for the executor (package-private) ----------------------------------

    def _request(
        self,
        needs: Iterable[Need],
        owner: str,
        priority: int,
        *,
        pool: _Pool | None = None,
        ready: Callable[[], bool] | None = None,
        on_grant: Callable[[LockGrant], None] | None = None,
    ) -> _Request:
        """A new request, not yet queued."""
        normalized = normalize_needs(needs)
        rank = -_check_priority(priority)
        return _Request(
            normalized, _check_owner(owner), rank, anyio.current_time(), pool, ready, on_grant
        )

    def _enqueue(self, request: _Request) -> None:
        """Grant ``request`` at once if it may go now, else queue it.

        A new request can only block others, never unblock them, so only it
        needs checking.
        """
        if not self._blocked(request) and request.can_use_grant():
            self._grant(request)
            return
        self._queue.push(request.pool, request)
        for need in request.needs:
            self._queued_on.push(need.entity, request)
        request.queued = True

    def _withdraw(self, *requests: _Request) -> None:
        """Take waiting requests out of the queue (no-op for those not queued)
        and grant what their leaving lets go."""
        leaving = [request for request in requests if request.queued]
        if not leaving:
            return
        for request in leaving:
            self._unindex(request)
            self._queue.remove(request.pool, request)
        self._scan()

    def _rescan(self) -> None:
        """Grant what can go now: call after a ``ready()`` may have turned True."""
        self._scan()

    def _conflicts(self, request: _Request) -> tuple[LockConflict, ...]:
        """The holders and queued-ahead requests that block ``request``."""
        conflicts: list[LockConflict] = []
        for need in request.needs:
            held = self._held.get(need.entity)
            if held is not None and held.mode.conflicts_with(need.mode):
                conflicts.extend(
                    LockConflict(need, grant.owner, held.mode, True, grant.acquired_at)
                    for grant in held.grants.values()
                )
        for need in request.needs:
            for queued in self._queued_on.ahead_of(need.entity, request):
                mode = queued_mode(queued, need.entity)
                if mode.conflicts_with(need.mode):
                    conflicts.append(LockConflict(need, queued.owner, mode, False, queued.since))
        return tuple(conflicts)

    # -- internals ----------------------------------------------------------

    async def _wait(
        self, request: _Request, event: anyio.Event, timeout: float | None
    ) -> LockGrant:
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
            if request.grant is None:
                conflicts = self._conflicts(request)
                self._withdraw(request)
                raise EntityLockTimeoutError(
                    self._message(request, f"within {timeout}s", conflicts),
                    owner=request.owner,
                    conflicts=conflicts,
                )
        except BaseException:
            # Cancelled (or timed out) while waiting: leave holding nothing,
            # even if the grant arrived on the way out.
            if request.grant is not None:
                self.release(request.grant)
            self._withdraw(request)
            raise
        return request.grant

    def _blocked(self, request: _Request) -> bool:
        """Whether a holder, or a request queued ahead, conflicts with ``request``."""
        for need in request.needs:
            held = self._held.get(need.entity)
            if held is not None and held.mode.conflicts_with(need.mode):
                return True
            for queued in self._queued_on.ahead_of(need.entity, request):
                if queued_mode(queued, need.entity).conflicts_with(need.mode):
                    return True
        return False

    def _unindex(self, request: _Request) -> None:
        """Take ``request`` off the entities' lanes (the caller takes it out
        of ``_queue``)."""
        request.queued = False
        for need in request.needs:
            self._queued_on.remove(need.entity, request)

    def _grant(self, request: _Request) -> LockGrant:
        grant = LockGrant(next(_grant_ids), request.owner, request.needs, anyio.current_time())
        self._grants[grant.id] = grant
        for need in request.needs:
            held = self._held.get(need.entity)
            if held is None:
                held = self._held[need.entity] = _Held(need.mode)
            held.grants[grant.id] = grant
        request.grant = grant
        if request.on_grant is not None:
            request.on_grant(grant)
        return grant

    def _scan(self) -> None:
        """Grant, in queue order, every request that may go now.

        A closed pool's lane is left as soon as its turn finds it closed
        (the common case when an executor's last free worker was just
        taken), so a release costs what it grants, not the length of the
        queue.
        """
        granted: list[_Request] = []
        for request in self._queue.in_order(_pool_open):
            if self._blocked(request) or not request.can_use_grant():
                continue
            self._unindex(request)
            granted.append(request)
            self._grant(request)
        for request in granted:
            self._queue.remove(request.pool, request)

    def _message(self, request: _Request, when: str, conflicts: tuple[LockConflict, ...]) -> str:
        now = anyio.current_time()
        needs = ", ".join(map(str, request.needs)) or "nothing"
        holding = [conflict for conflict in conflicts if conflict.holding]
        ahead = [conflict for conflict in conflicts if not conflict.holding]
        lines = [conflict.describe(now) for conflict in holding + ahead[:_SHOWN_AHEAD]]
        if len(ahead) > _SHOWN_AHEAD:
            lines.append(f"and {len(ahead) - _SHOWN_AHEAD} more requests queued ahead")
        why = "; ".join(lines) or "nothing blocks it"
        return f"{request.owner!r} could not lock {needs} {when}: {why}"


def queued_mode(request: _Request, entity: Entity) -> LockMode:
    """The mode ``request`` needs ``entity`` in (it must need it)."""
    for need in request.needs:
        if need.entity == entity:
            return need.mode
    raise AssertionError(f"{request.owner} does not need {entity}")
