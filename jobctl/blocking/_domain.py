"""A domain, its regular jobs and its monitor, for plain threads."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from contextlib import suppress
from types import TracebackType
from typing import Any, final

from jobctl._core import (
    ActiveJob,
    Domain,
    DomainInfo,
    DomainStatistics,
    Job,
    JobError,
    JobStateError,
    MonitorSession,
)

from ._errors import BlockingError
from ._loop import EventLoopThread

__all__ = ["BlockingDomain", "BlockingJob", "BlockingMonitor"]


@final
class BlockingDomain:
    """A :class:`jobctl.Domain` seen from plain threads.

    Thread-safety: every method may be called from any thread but the
    loop's, by any number of threads at once; each runs in the loop, so the
    domain's guarantees (first come first served, the gate, the barrier,
    one command in flight) hold between threads exactly as between tasks.
    :meth:`info` and :meth:`statistics` are read in the loop thread too:
    a ``Domain`` is not safe to read from another thread directly.
    """

    __slots__ = ("_domain", "_held", "_held_lock", "_loop")

    def __init__(self, loop: EventLoopThread, domain: Domain) -> None:
        self._loop = loop
        self._domain = domain
        #: The job each thread holds through this wrapper: jobs do not nest
        #: in a thread, as they do not in a task. A thread's calls run in its
        #: own task, so the core would refuse too; this refuses first, before
        #: a round trip, and in a thread's words.
        self._held: dict[int, ActiveJob] = {}
        self._held_lock = threading.Lock()

    @property
    def domain(self) -> Domain:
        """The wrapped domain (use it only inside the loop)."""
        return self._domain

    @property
    def loop(self) -> EventLoopThread:
        """The loop the domain lives in."""
        return self._loop

    @property
    def name(self) -> str:
        """The domain's name (immutable, so safe from any thread)."""
        return self._domain.name

    def job(
        self,
        kind: Job,
        *,
        owner: str | None = None,
        nowait: bool = False,
        timeout: float | None = None,
    ) -> BlockingJob:
        """A regular job: ``with bdom.job(Job.QUERY) as job:``; it waits as
        :meth:`jobctl.Domain.job` does (``nowait``, ``timeout``), blocking
        the calling thread. The job ends when the block is left. A thread
        that already holds a job of this domain (through this wrapper) gets
        :class:`jobctl.JobStateError` instead of waiting for itself."""
        return BlockingJob(
            self, self._domain.job(kind, owner=owner, nowait=nowait, timeout=timeout)
        )

    def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        kind: Job = Job.QUERY,
        owner: str | None = None,
        nowait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """One job of ``kind`` (QUERY by default) that runs one monitor
        command and returns its reply: the ``with job(...)``/``monitor()``
        form in one call into the loop instead of five."""
        return self._loop.call(self._execute, command, arguments, kind, owner, nowait, timeout)

    async def _execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None,
        kind: Job,
        owner: str | None,
        nowait: bool,
        timeout: float | None,
    ) -> Any:
        job = self._domain.job(kind, owner=owner, nowait=nowait, timeout=timeout)
        async with job, job.monitor(nowait=nowait) as mon:
            return await mon.execute(command, arguments)

    def abort(self, reason: str = "aborted", *, timeout: float | None = None) -> None:
        """:meth:`jobctl.Domain.abort`, blocking until the abort is delivered
        (or refused with its error). From any thread: this is how another
        thread stops a migration that a thread started."""
        self._loop.call(self._abort, reason, timeout)

    def abort_soon(self, reason: str = "aborted", *, timeout: float | None = None) -> Future[None]:
        """:meth:`abort` as a future, at once."""
        return self._loop.submit(self._abort, reason, timeout)

    async def _abort(self, reason: str, timeout: float | None) -> None:
        await self._domain.abort(reason, timeout=timeout)

    def info(self) -> DomainInfo:
        """:meth:`jobctl.Domain.info`, read in the loop thread: a consistent
        frozen snapshot (the value is safe to keep and share)."""
        return self._loop.run_sync(self._domain.info)

    def statistics(self) -> DomainStatistics:
        """:meth:`jobctl.Domain.statistics`, read in the loop thread."""
        return self._loop.run_sync(self._domain.statistics)

    def __repr__(self) -> str:
        return f"<jobctl.blocking.BlockingDomain {self._domain.name!r}>"


@final
class BlockingJob:
    """A regular job held by a plain thread (from :meth:`BlockingDomain.job`).

    Entering it waits for the job to begin (one call into the loop),
    leaving it ends it (another); neither holds a cancel scope open across
    the two, so the thread's body may take as long as it likes. Use it in
    the thread that entered it; it is not for sharing between threads (a
    job is one actor's).
    """

    __slots__ = ("_bdom", "_entered", "_job", "_loop")

    def __init__(self, bdom: BlockingDomain, job: ActiveJob) -> None:
        self._bdom = bdom
        self._loop = bdom.loop
        self._job = job
        self._entered = False

    @property
    def job(self) -> ActiveJob:
        """The wrapped job (use it only inside the loop)."""
        return self._job

    def __enter__(self) -> BlockingJob:
        me = threading.get_ident()
        bdom = self._bdom
        with bdom._held_lock:
            held = bdom._held.get(me)
            if held is None:
                bdom._held[me] = self._job
        if held is not None:
            raise JobStateError(
                f"cannot begin {self._job.kind.name} job on domain {bdom.name!r}: this "
                f"thread already holds {held!r} (jobs do not nest)"
            )
        try:
            self._loop.call(self._job.__aenter__)
        except BaseException as exc:
            try:
                if not isinstance(exc, JobError | BlockingError):
                    _undo(self._loop, self._job.__aexit__)
            finally:
                self._release()
            raise
        self._entered = True
        return self

    def _release(self) -> None:
        with self._bdom._held_lock:
            del self._bdom._held[threading.get_ident()]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            self._entered = False
            try:
                self._loop.call(self._job.__aexit__, exc_type, exc, tb)
            finally:
                self._release()

    def monitor(self, *, nowait: bool = False) -> BlockingMonitor:
        """The domain's monitor for this job: ``with job.monitor() as mon:``
        waits for the monitor lock (one holder, one command in flight)."""
        return BlockingMonitor(self._loop, self._job.monitor(nowait=nowait))


@final
class BlockingMonitor:
    """The monitor held by a :class:`BlockingJob`; :meth:`execute` sends one
    command and blocks for its reply. Use it in the thread that entered it."""

    __slots__ = ("_entered", "_loop", "_session")

    def __init__(self, loop: EventLoopThread, session: MonitorSession) -> None:
        self._loop = loop
        self._session = session
        self._entered = False

    def __enter__(self) -> BlockingMonitor:
        try:
            self._loop.call(self._session.__aenter__)
        except BaseException as exc:
            if not isinstance(exc, JobError | BlockingError):
                _undo(self._loop, self._session.__aexit__)
            raise
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            self._entered = False
            self._loop.call(self._session.__aexit__, exc_type, exc, tb)

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """:meth:`jobctl.MonitorSession.execute`, blocking for the reply."""
        return self._loop.call(self._session.execute, command, arguments)


def _undo(loop: EventLoopThread, exit: Any) -> None:
    """After an entry that failed other than by the core's refusal or the
    facade's (an interrupt, Ctrl-C, raised while the thread waited): leave what the
    entry may still have taken in the loop (granted just before the
    interrupt), so nothing stays held for a thread that no longer waits.
    ``exit`` does nothing for what was not taken."""
    with suppress(BlockingError, JobError):
        loop.call(exit, None, None, None)
