"""Per-phase recovery of async jobs: one small function per phase."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import final

import anyio.abc

from ._errors import RecoveryError
from ._records import AsyncJobRecord
from ._recovery import AsyncJobHandler

__all__ = ["PhaseAction", "by_phase"]

#: Settles an async job that was in one phase when the manager died.
PhaseAction = Callable[[AsyncJobRecord], Awaitable[None]]


@final
class _ByPhase:
    __slots__ = ("_actions", "_default")

    def __init__(self, actions: Mapping[str, PhaseAction], default: PhaseAction | None) -> None:
        self._actions = dict(actions)
        self._default = default

    async def __call__(
        self,
        record: AsyncJobRecord,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        action = self._actions.get(record.phase, self._default)
        if action is None:
            known = ", ".join(sorted(self._actions)) or "none"
            raise RecoveryError(
                f"no recovery for async job {record.kind.name} of domain {record.domain!r}"
                f" in phase {record.phase!r} (known phases: {known})"
            )
        await action(record)
        task_status.started()


def by_phase(
    actions: Mapping[str, PhaseAction], *, default: PhaseAction | None = None
) -> AsyncJobHandler:
    """An :class:`AsyncJobHandler` that runs the action for the record's
    phase (``default`` for any other phase), then reports the job settled.

    For a migration's source, say::

        by_phase({"begin": nothing, "perform": cancel_and_resume,
                  "confirm": finish_or_resume})

    A phase with no action and no default raises :class:`RecoveryError`
    naming it, so a flow that grew a phase cannot be recovered by guesswork.
    """
    return _ByPhase(actions, default)
