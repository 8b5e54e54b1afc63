"""A bounded pool of connections that have not yet earned a place.

Both servers of the feed (the websocket handshake and the page's one HTTP
request) keep connections that have not finished their opening exchange in a
:class:`PendingPool`: at most ``limit`` of them, each for at most its timeout.
A connection that arrives when the pool is full is not refused: the oldest
member is dropped to make room, since it has had the longest to finish. So a
flood of silent or half-open connections costs at most ``limit`` tasks and
sockets, and a fresh client is always let in to try.
"""

from __future__ import annotations

from types import TracebackType
from typing import final

import anyio

__all__ = ["PendingPool"]


@final
class _Member:
    """One connection's place in the pool; leaving it is idempotent."""

    __slots__ = ("_pool", "scope")

    def __init__(self, pool: PendingPool) -> None:
        self._pool = pool
        self.scope = anyio.CancelScope()

    def __enter__(self) -> _Member:
        self.scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._pool._leave(self)
        return bool(self.scope.__exit__(exc_type, exc, tb))


@final
class PendingPool:
    """At most ``limit`` members; admitting one more cancels the oldest.

    ``with pool.admit():`` runs its body as a member: if the body is still
    running when ``limit`` newer connections have been admitted, its cancel
    scope is cancelled (the ``with`` block ends quietly; check
    :attr:`evicted` to tell). Leaving the block frees the place.
    """

    __slots__ = ("_limit", "_members", "evicted")

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"a pool's limit must be an int of at least 1, not {limit!r}")
        self._limit = limit
        # Insertion order is arrival order: the first is the oldest.
        self._members: dict[_Member, None] = {}
        #: Members cancelled to make room, since the pool was made.
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._members)

    @property
    def limit(self) -> int:
        return self._limit

    def admit(self) -> _Member:
        """A place for one connection (use it as a context manager at once)."""
        while len(self._members) >= self._limit:
            oldest = next(iter(self._members))
            del self._members[oldest]
            oldest.scope.cancel()
            self.evicted += 1
        member = _Member(self)
        self._members[member] = None
        return member

    def _leave(self, member: _Member) -> None:
        self._members.pop(member, None)
