"""jobctl from plain threads: a blocking facade on one event loop thread.

Most managers are threaded. :class:`EventLoopThread` runs one event loop
(trio or asyncio) in its own thread, anyio's blocking portal, shared by any
number of caller threads; the ``Blocking*`` classes wrap jobctl's objects
so that each call runs in that loop and blocks the calling thread::

    with EventLoopThread("trio") as loop, loop.enter(open_simulated_host("a")) as host:
        vm = BlockingVM(loop, VM(Domain("vm1@a"), host))
        vm.start(MachineSpec(disk=loop.call(host.create_disk, "vm1", 64)))
        stats = vm.domstats()                       # from any thread
        with vm.domain.job(Job.QUERY) as job, job.monitor() as mon:
            mon.execute("query-status")
        future = vm.backup_soon(BackupTarget("backup0"))
        future.cancel()                             # cancels the backup in the loop
        vm.destroy()

The guarantees are the async API's: calls from many threads are tasks in
one loop, so a domain's admission, gate, barrier and monitor lock order
them as they order tasks. Every flow has a blocking call and a ``*_soon``
variant returning a :class:`concurrent.futures.Future`; cancelling the
future cancels the flow. ``Domain``/``VM``/host objects belong to the
loop: read them through the facade (``info()``, ``statistics()``,
``observed()`` run in the loop thread), and hand any other async call or
context manager to :meth:`EventLoopThread.call` / :meth:`~EventLoopThread.enter`;
a running host executor is wrapped by :class:`BlockingExecutor`, an open
task journal by :class:`BlockingJournal` (its end actions may be plain
functions, run on a worker thread). A blocking call from the loop thread itself
raises :class:`LoopThreadError` instead of deadlocking.
"""

from jobctl._public import publish
from jobctl.blocking._domain import BlockingDomain, BlockingJob, BlockingMonitor
from jobctl.blocking._errors import BlockingError, LoopNotRunningError, LoopThreadError
from jobctl.blocking._executor import BlockingCommand, BlockingExecutor
from jobctl.blocking._journal import BlockingJournal
from jobctl.blocking._loop import EventLoopStatistics, EventLoopThread
from jobctl.blocking._vm import BlockingVM

__all__ = [
    "BlockingCommand",
    "BlockingDomain",
    "BlockingError",
    "BlockingExecutor",
    "BlockingJob",
    "BlockingJournal",
    "BlockingMonitor",
    "BlockingVM",
    "EventLoopStatistics",
    "EventLoopThread",
    "LoopNotRunningError",
    "LoopThreadError",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
