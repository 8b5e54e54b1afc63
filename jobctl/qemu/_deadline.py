"""A flow's ``timeout=``: one deadline for the wait for the job *and* the
monitor work done in it.

A job's own ``timeout`` bounds only the wait for the job to begin: once it
runs, a command that QEMU never answers (a stopped or hung process) would
hold the caller, the job and the monitor for ever. A :class:`Deadline`
starts when the flow is called; the flow gives the time left to
``dom.job(timeout=...)`` and enters the monitor through
:meth:`Deadline.monitor`, which bounds the wait for the monitor and every
command by the same deadline. When it passes, the command is cancelled (the
QMP client keeps its reply "orphan-safe": nothing else is written until it
arrives), the monitor and the job are released as the exception leaves
their blocks, and the caller gets a :class:`jobctl.JobTimeoutError` that
names the domain, the command that did not answer and the timeout.

Every session of a flow (bounded or not) is a :class:`BoundedSession`: it
also hands QEMU's answers to the VM's :class:`~jobctl.qemu.Observer`, so what
a flow or domstats learns shows in ``vm.observed`` without another command.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, final

import anyio

from jobctl._core._domain import ActiveAsyncJob, ActiveJob, MonitorSession
from jobctl._core._errors import JobTimeoutError
from jobctl.qemu._observed import Observer

__all__ = ["BoundedSession", "Deadline"]


@final
class BoundedSession:
    """A flow's :class:`jobctl.MonitorSession` (a :class:`jobctl.Monitor`):
    it knows the command in flight (for a :class:`Deadline`'s error) and
    gives every answer to ``observer``, when there is one."""

    __slots__ = ("observer", "pending", "session")

    def __init__(self, session: MonitorSession, observer: Observer | None = None) -> None:
        #: The job's turn at the monitor.
        self.session = session
        #: Who is told QEMU's answers.
        self.observer = observer
        #: The command in flight, if one is.
        self.pending: str | None = None

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one command (see :meth:`jobctl.MonitorSession.execute`)."""
        self.pending = command
        reply = await self.session.execute(command, arguments)
        self.pending = None
        if self.observer is not None:
            self.observer.saw_reply(command, reply)
        return reply


@final
class Deadline:
    """``timeout`` seconds from now (None: no deadline), for flow ``flow``
    on domain ``domain``."""

    __slots__ = ("_at", "domain", "flow", "timeout")

    def __init__(self, domain: str, timeout: float | None, *, flow: str) -> None:
        if timeout is not None and not (isinstance(timeout, int | float) and timeout >= 0):
            raise ValueError(f"{flow}: timeout must be a number of seconds >= 0, not {timeout!r}")
        self.domain = domain
        self.flow = flow
        self.timeout = timeout
        self._at = math.inf if timeout is None else anyio.current_time() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never below 0); None without a deadline. What the
        flow gives ``dom.job(timeout=...)``."""
        if self.timeout is None:
            return None
        return max(0.0, self._at - anyio.current_time())

    def error(self, what: str) -> JobTimeoutError:
        """The error for ``what`` ("query-status did not answer") that did
        not happen in time."""
        return JobTimeoutError(
            f"{self.flow} on domain {self.domain!r}: {what} within {self.timeout:g} s"
        )

    def monitor(
        self, job: ActiveJob | ActiveAsyncJob, *, observer: Observer | None = None
    ) -> AbstractAsyncContextManager[BoundedSession]:
        """``job.monitor()``, bounded: the wait for the monitor and every
        command of the block end at the deadline with :meth:`error`.
        ``observer`` is told every answer.

        The block's exception (and the monitor's release) happens before the
        error is raised, so the job leaves no command and no holder behind.
        Without a deadline it is ``job.monitor()`` and the observer only.
        """
        if self.timeout is None:
            return _Unbounded(job.monitor(), observer)
        return self._bounded(job, observer)

    @asynccontextmanager
    async def _bounded(
        self, job: ActiveJob | ActiveAsyncJob, observer: Observer | None
    ) -> AsyncIterator[BoundedSession]:
        bounded: BoundedSession | None = None
        with anyio.CancelScope(deadline=self._at) as scope:
            async with job.monitor() as session:
                bounded = BoundedSession(session, observer)
                yield bounded
        if scope.cancelled_caught:
            if bounded is None:
                raise self.error("the monitor was not free")
            if bounded.pending is not None:
                raise self.error(f"{bounded.pending} did not answer")
            raise self.error("the monitor work did not end")


@final
class _Unbounded:
    """:meth:`Deadline.monitor` without a deadline: the monitor session, told
    to the observer; no cancel scope, no generator (it runs per query)."""

    __slots__ = ("_observer", "_session")

    def __init__(self, session: MonitorSession, observer: Observer | None) -> None:
        self._session = session
        self._observer = observer

    async def __aenter__(self) -> BoundedSession:
        return BoundedSession(await self._session.__aenter__(), self._observer)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.__aexit__(exc_type, exc, tb)
