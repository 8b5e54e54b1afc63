"""The exceptions of ``jobctl.host``.

Each one is named by the situation a caller handles and derives from the
builtin exception that situation is (a lock wait that ran out is a
:class:`TimeoutError`, a submit to an executor that is not running a
:class:`RuntimeError`, as :mod:`concurrent.futures` has it), never from the
job core's errors.
"""

from __future__ import annotations

from typing import final

import attrs

from jobctl._core._entity import LockMode, Need

__all__ = [
    "CommandCancelledError",
    "CommandNotRunError",
    "CommandQueueFullError",
    "EntityLockBusyError",
    "EntityLockTimeoutError",
    "ExecutorClosedError",
    "LockConflict",
]


@final
@attrs.frozen(slots=True)
class LockConflict:
    """Why a lock request could not be granted: one entity and who blocks it.

    ``holding`` is True when ``owner`` holds the entity, False when ``owner``
    is an earlier request still waiting for it (requests that conflict are
    granted in queue order, so it goes first).
    """

    need: Need
    owner: str
    mode: LockMode
    holding: bool
    since: float

    def describe(self, now: float) -> str:
        """One line, for example ``vm:vm-07 is held exclusive by 'restore' for 3.0s``."""
        if self.holding:
            return (
                f"{self.need.entity} is held {self.mode.value} by {self.owner!r} "
                f"for {now - self.since:.1f}s"
            )
        return (
            f"{self.need.entity} is awaited {self.mode.value} by {self.owner!r} "
            f"(queued ahead of it, for {now - self.since:.1f}s)"
        )


@final
class EntityLockTimeoutError(TimeoutError):
    """Entity locks could not be taken within the timeout.

    The message names every entity that blocked the request and its holder
    (or the earlier waiter it has to let go first); ``conflicts`` holds the
    same as :class:`LockConflict` values and ``owner`` the request's owner.
    """

    def __init__(self, message: str, *, owner: str, conflicts: tuple[LockConflict, ...]) -> None:
        super().__init__(message)
        self.owner = owner
        self.conflicts = conflicts


@final
class EntityLockBusyError(Exception):
    """A ``nowait`` (zero-timeout) lock request could not be granted at once,
    and was refused without waiting (not a :class:`TimeoutError`).

    As for :class:`EntityLockTimeoutError`, the message names every entity
    that blocked the request and its holder (or the earlier waiter);
    ``conflicts`` holds them as :class:`LockConflict` values and ``owner``
    is the request's owner.
    """

    def __init__(self, message: str, *, owner: str, conflicts: tuple[LockConflict, ...]) -> None:
        super().__init__(message)
        self.owner = owner
        self.conflicts = conflicts


@final
class CommandQueueFullError(Exception):
    """The executor's queue is at ``max_queued``: the command was refused."""


@final
class ExecutorClosedError(RuntimeError):
    """The executor is not running: not yet entered, stopping or stopped."""


@final
class CommandNotRunError(Exception):
    """The command never started: it was cancelled or the executor stopped
    while it was queued. ``reason`` says which."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@final
class CommandCancelledError(Exception):
    """The command started and was cancelled: by its handle, or because the
    executor stopped and the grace period ran out."""
