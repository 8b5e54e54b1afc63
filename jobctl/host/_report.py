"""What happened to each command, and to all of them: reports and the summary."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import final

import attrs

__all__ = ["CommandReport", "ExecutionState", "ExecutorStatistics", "ExecutorSummary"]


@enum.unique
class ExecutionState(enum.Enum):
    """Where a command is in its execution by a :class:`CommandExecutor`:
    queued, running, or how it ended."""

    #: Submitted, not started: behind its group, waiting for entities or a worker.
    QUEUED = "queued"
    #: On a worker, holding its entities.
    RUNNING = "running"
    #: Returned a value.
    SUCCEEDED = "succeeded"
    #: Raised an exception, or could not get its entities in time.
    FAILED = "failed"
    #: Started, then was cancelled (handle or stop grace).
    CANCELLED = "cancelled"
    #: Never started: cancelled while queued, or the executor stopped.
    NOT_RUN = "not_run"

    @property
    def finished(self) -> bool:
        """Whether the command is over (it will not change state again)."""
        return self not in (ExecutionState.QUEUED, ExecutionState.RUNNING)


@final
@attrs.frozen(slots=True, eq=False)
class CommandReport:
    """One command's outcome and timing (times on the event loop's clock)."""

    id: int
    name: str
    kind: str
    state: ExecutionState
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    #: The exception for FAILED, CANCELLED and NOT_RUN; None otherwise.
    error: BaseException | None
    #: The command's last :meth:`CommandContext.set_progress` value.
    progress: object

    @property
    def label(self) -> str:
        """The command's name and executor id (``"backup #3"``): what logs and
        :meth:`describe` call it.
        """
        return f"{self.name} #{self.id}"

    @property
    def queued_for(self) -> float | None:
        """Seconds from submission to start (or to leaving the queue unstarted)."""
        end = self.started_at if self.started_at is not None else self.finished_at
        return None if end is None else end - self.submitted_at

    @property
    def ran_for(self) -> float | None:
        """Seconds on a worker, once finished; None if it never started."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def describe(self) -> str:
        """One line: label, state, timing, and the error if any."""
        queued = self.queued_for
        parts = [f"{self.label} [{self.kind}] {self.state.value}"]
        if queued is not None:
            parts.append(f"queued {queued:.1f}s")
        if self.ran_for is not None:
            parts.append(f"ran {self.ran_for:.1f}s")
        line = ", ".join(parts)
        if self.error is not None:
            line += f": {type(self.error).__name__}: {self.error}"
        return line


@final
@attrs.frozen(slots=True)
class ExecutorStatistics:
    """A snapshot of a :class:`CommandExecutor`."""

    workers: int
    running: int
    #: Submitted and not started.
    queued: int
    running_by_kind: Mapping[str, int]
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    not_run: int
    #: Refused at submission because the queue was full.
    rejected: int


@final
@attrs.frozen(slots=True, eq=False)
class ExecutorSummary:
    """The outcome of an executor's commands: counts of everything, and the
    reports of the finished ones (the most recent ``history`` of them)."""

    name: str
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    not_run: int
    rejected: int
    reports: tuple[CommandReport, ...]

    @property
    def ok(self) -> bool:
        """Whether every accepted command succeeded."""
        return self.submitted == self.succeeded

    def in_state(self, state: ExecutionState) -> tuple[CommandReport, ...]:
        """The kept reports of commands that ended in ``state``."""
        return tuple(report for report in self.reports if report.state is state)

    def format(self) -> str:
        """A readable account: the counts, then every command that did not succeed."""
        lines = [
            f"executor {self.name!r}: {self.submitted} commands: {self.succeeded} succeeded, "
            f"{self.failed} failed, {self.cancelled} cancelled, {self.not_run} never ran"
            + (f", {self.rejected} refused (queue full)" if self.rejected else "")
        ]
        finished = self.succeeded + self.failed + self.cancelled + self.not_run
        if len(self.reports) < finished:
            lines.append(f"  (reports kept for the last {len(self.reports)} of {finished})")
        for state in (ExecutionState.FAILED, ExecutionState.CANCELLED, ExecutionState.NOT_RUN):
            lines.extend(f"  {report.describe()}" for report in self.in_state(state))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
