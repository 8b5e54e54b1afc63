"""What the journal asks of the places where tasks run."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, final

import attrs

__all__ = ["BackendState", "BackendStatus", "TaskBackend"]


@enum.unique
class BackendState(enum.StrEnum):
    """A task's state as its backend reports it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _frozen_optional_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else dict(value)


@final
@attrs.frozen
class BackendStatus:
    """One task's state at its backend (for QEMU: one entry of ``query-jobs``)."""

    state: BackendState
    #: For SUCCEEDED: what the journal records as the task's result.
    result: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_optional_mapping)
    #: For FAILED: why.
    error: str | None = None


class TaskBackend(Protocol):
    """Where child tasks run: a host agent, a QEMU process, a simulator.

    The journal asks only two things. For recovery to be sound the backend
    must keep a finished task's outcome until :meth:`release` (QEMU: start
    block jobs with ``auto-dismiss: false``): then an id the backend does not
    know was either never started or lost, never "finished and forgotten".
    """

    async def query(self, backend_ids: Sequence[str]) -> Mapping[str, BackendStatus]:
        """The state of each id the backend knows; unknown ids are left out."""
        ...

    async def release(self, backend_ids: Sequence[str]) -> None:
        """Forget these finished tasks (QEMU: ``job-dismiss``). The journal
        calls it only after it recorded their outcomes, and again after a
        crash for ids that may already be released: ids the backend does not
        know (any more) are ignored."""
        ...
