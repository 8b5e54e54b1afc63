"""jobctl.blocking: the facade from plain threads, on trio and asyncio loops.

Real simulated hosts (sockets, the simulated QEMU) in real time: the loop
runs in its own thread, so a mock clock cannot drive it. Threads wait for
each other with barriers and events, never with sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from jobctl import Domain, Job, JobAbortedError, JobBusyError, JobStateError, TraceEvent, TraceKind
from jobctl.blocking import (
    BlockingDomain,
    BlockingExecutor,
    BlockingVM,
    EventLoopThread,
    LoopNotRunningError,
    LoopThreadError,
)
from jobctl.host import Command, CommandContext, CommandExecutor, Entity
from jobctl.qemu import BackupTarget
from jobctl.testing import ScriptedMonitor

from ..qemu._hosts import OPTIONS, Hosts, hosts

#: The bound of every wait in these tests: far above what any step takes.
WAIT = 60.0
TARGET = BackupTarget("backup0")


@pytest.fixture(params=["trio", "asyncio"])
def loop(request: pytest.FixtureRequest) -> Iterator[EventLoopThread]:
    with EventLoopThread(request.param) as running:
        yield running


@contextmanager
def simulated(loop: EventLoopThread) -> Iterator[Hosts]:
    """Hosts a and b in the loop, with the checker and the strict detector;
    the trace is checked when the block ends without an error."""
    with loop.enter(hosts(real_time=True)) as h:
        yield h
        loop.run_sync(h.check)


def started(loop: EventLoopThread, h: Hosts, name: str) -> tuple[BlockingVM, BlockingVM]:
    here, there = loop.call(h.started, name)
    return BlockingVM(loop, here), BlockingVM(loop, there)


@contextmanager
def when(
    loop: EventLoopThread, h: Hosts, domain: str, kind: TraceKind, **detail: Any
) -> Iterator[threading.Event]:
    """A threading.Event set when ``domain`` emits ``kind`` with ``detail``;
    the listener is subscribed and removed in the loop thread."""
    seen = threading.Event()

    def listener(event: TraceEvent) -> None:
        matches = all(event.detail.get(k) == v for k, v in detail.items())
        if event.domain == domain and event.kind is kind and matches:
            seen.set()

    subscription = loop.run_sync(h.hub.subscribe, listener)
    try:
        yield seen
    finally:
        loop.run_sync(subscription.close)


def test_64_threads_share_one_loop_and_the_invariants_hold(loop: EventLoopThread) -> None:
    threads = 64
    with simulated(loop) as h:
        vms = [started(loop, h, f"vm{i}")[0] for i in range(4)]
        start = threading.Barrier(threads)
        replies: list[Any] = []
        replies_lock = threading.Lock()

        def backups(vm: BlockingVM) -> None:
            start.wait(WAIT)
            for _ in range(2):
                vm.backup(TARGET)

        def queries(vm: BlockingVM) -> None:
            start.wait(WAIT)
            for _ in range(3):
                stats = vm.domstats()
                assert stats.state == "running"
                with vm.domain.job(Job.QUERY, owner="thread") as job, job.monitor() as mon:
                    first = mon.execute("query-status")
                    second = mon.execute("query-block-jobs")
                with replies_lock:
                    replies.append((first["status"], second))

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(backups, vm) for vm in vms]
            futures += [pool.submit(queries, vms[i % 4]) for i in range(threads - 4)]
            for future in futures:
                future.result(WAIT)

        assert len(replies) == 3 * (threads - 4)
        assert all(status == "running" for status, _ in replies)
        for vm in vms:
            info = vm.domain.info()
            assert info.idle, info
            stats = vm.domain.statistics()
            # 2 backups; 45 threads x 3 x (domstats + one job) queries per VM.
            assert stats.async_begins == 3  # start + 2 backups
            assert stats.begins >= 15 * 3 * 2
            vm.destroy()
    statistics = loop.statistics()
    assert statistics.refused == 0
    assert statistics.in_flight == 0


def test_cancelling_a_migrate_future_leaves_the_domain_idle(loop: EventLoopThread) -> None:
    with simulated(loop) as h:
        src, dst = started(loop, h, "vm1")
        with when(loop, h, src.name, TraceKind.ASYNC_PHASE, phase="perform") as performing:
            future = src.migrate_soon(dst, OPTIONS)
            assert performing.wait(WAIT)
        assert future.cancel()
        loop.drain()
        assert future.cancelled()
        for vm in (src, dst):
            info = vm.domain.info()
            assert info.idle and info.async_job is None, info
        # The gate is open: a QUERY that may not wait begins at once, and the
        # VM runs on at the source.
        assert src.domstats(nowait=True).state == "running"
        with src.domain.job(Job.QUERY, nowait=True) as job, job.monitor(nowait=True) as mon:
            assert mon.execute("query-status")["status"] == "running"
        assert src.observed().run is not None
        src.destroy()


def test_an_abort_from_another_thread_aborts_a_running_migration(loop: EventLoopThread) -> None:
    with simulated(loop) as h:
        src, dst = started(loop, h, "vm1")
        outcome: list[BaseException | None] = []

        def migrator() -> None:
            try:
                src.migrate(dst, OPTIONS)
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        with when(loop, h, src.name, TraceKind.ASYNC_PHASE, phase="perform") as performing:
            thread = threading.Thread(target=migrator)
            thread.start()
            assert performing.wait(WAIT)
        src.abort("enough")
        thread.join(WAIT)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], JobAbortedError), outcome
        assert src.domain.info().idle
        assert src.domain.statistics().aborts == 1
        assert src.domstats().state == "running"
        src.destroy()


def test_a_blocking_call_from_the_loop_thread_raises_instead_of_deadlocking(
    loop: EventLoopThread,
) -> None:
    bdom = BlockingDomain(loop, Domain("d"))

    def inside() -> str:
        assert loop.in_loop_thread()
        with pytest.raises(LoopThreadError, match="deadlock"):
            bdom.info()
        with pytest.raises(LoopThreadError):
            bdom.job(Job.QUERY).__enter__()
        return "refused"

    assert loop.run_sync(inside) == "refused"
    assert loop.statistics().refused == 2
    assert not loop.in_loop_thread()
    assert bdom.info().idle


def test_a_job_blocks_other_threads_as_it_blocks_tasks(loop: EventLoopThread) -> None:
    """A MODIFY job held by one thread keeps another thread's QUERY waiting
    (and a nowait one refused) until it ends; the waiter is seen in info()."""
    bdom = BlockingDomain(loop, Domain("d"))
    with bdom.job(Job.MODIFY, owner="holder"):
        refused: list[BaseException] = []

        def busy() -> None:
            try:
                with bdom.job(Job.QUERY, nowait=True):
                    pass
            except JobBusyError as exc:
                refused.append(exc)

        other = threading.Thread(target=busy)
        other.start()
        other.join(WAIT)
        assert len(refused) == 1
        waiting = threading.Event()
        began = threading.Event()

        def query() -> None:
            waiting.set()
            with bdom.job(Job.QUERY, owner="waiter"):
                began.set()

        thread = threading.Thread(target=query)
        thread.start()
        assert waiting.wait(WAIT)
        loop.call(_until_waiting, bdom.domain)
        assert not began.is_set()
        assert [w.owner for w in bdom.info().waiters] == ["waiter"]
    thread.join(WAIT)
    assert began.is_set()
    assert bdom.info().idle


def test_jobs_do_not_nest_in_a_thread(loop: EventLoopThread) -> None:
    """A thread holding a job that asks for another on the same domain is
    refused at once, as a task is, instead of waiting for itself."""
    bdom = BlockingDomain(loop, Domain("d", wait_timeout=WAIT))
    with bdom.job(Job.MODIFY):
        with pytest.raises(JobStateError, match="do not nest"):
            with bdom.job(Job.QUERY):
                pass
        assert [j.kind for j in bdom.info().regular_jobs] == [Job.MODIFY]
    with bdom.job(Job.QUERY):  # released: the thread may begin again
        pass
    assert bdom.info().idle


async def _until(holds: Callable[[], bool]) -> None:
    """Wait in the loop, checkpoint by checkpoint, until ``holds()``."""
    with anyio.fail_after(WAIT):
        while not holds():
            await anyio.lowlevel.checkpoint()


async def _until_waiting(domain: Domain) -> None:
    await _until(lambda: bool(domain.info().waiters))


def test_a_stopped_loop_refuses_calls() -> None:
    loop = EventLoopThread("asyncio")
    bdom = BlockingDomain(loop, Domain("d"))
    with pytest.raises(LoopNotRunningError):
        bdom.info()
    with loop:
        assert loop.statistics().running
    with pytest.raises(LoopNotRunningError):
        bdom.statistics()
    with pytest.raises(ValueError, match="backend"):
        EventLoopThread("curio")


def test_the_executor_takes_commands_from_many_threads(loop: EventLoopThread) -> None:
    """16 threads submit commands that all need one VM exclusively: the
    executor's entity lock runs them one at a time (the overlap counter,
    kept in the loop, never passes 1), and every result comes back."""
    vm = Entity("vm", "vm1")
    running = [0, 0]  # now, most at once

    async def work(ctx: CommandContext) -> str:
        running[0] += 1
        running[1] = max(running)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        running[0] -= 1
        return ctx.command.name

    with loop.enter(CommandExecutor(workers=4)) as executor:
        bex = BlockingExecutor(loop, executor)
        start = threading.Barrier(16)

        def submitter(number: int) -> list[str]:
            start.wait(WAIT)
            handles = [
                bex.submit(Command(f"c{number}.{i}", work, (vm.exclusive(),))) for i in range(3)
            ]
            return [handle.result() for handle in handles]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(submitter, range(16)))
    assert results == [[f"c{n}.{i}" for i in range(3)] for n in range(16)]
    assert running == [0, 1]


async def _task_id() -> int:
    await anyio.lowlevel.checkpoint()
    return anyio.get_current_task().id


def _other_thread(func: Any, *args: Any) -> Any:
    """``func(*args)`` in a new thread that then ends; its result or error."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(func(*args))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    return out[0]


def test_a_thread_is_one_task_in_the_loop_and_two_threads_are_two(
    loop: EventLoopThread,
) -> None:
    """A thread's calls (coroutines and plain functions) run in one task of
    its own, so what the core keys by task is keyed by thread; another
    thread's calls run in another task."""
    mine = loop.call(_task_id)
    assert loop.call(_task_id) == mine
    assert loop.run_sync(lambda: anyio.get_current_task().id) == mine
    theirs = _other_thread(loop.call, _task_id)
    assert isinstance(theirs, int)
    assert theirs != mine
    # The core sees it so: a job held by this thread is this task's.
    bdom = BlockingDomain(loop, Domain("d"))
    with bdom.job(Job.MODIFY):
        assert [j.kind for j in bdom.info().regular_jobs] == [Job.MODIFY]
        refused = _other_thread(lambda: bdom.job(Job.QUERY, nowait=True).__enter__())
        assert isinstance(refused, JobBusyError)
    assert bdom.info().idle


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thread_that_ends_leaves_no_task_and_no_descriptor(loop: EventLoopThread) -> None:
    """Each caller thread's task ends after the thread does, and its pipes
    are closed: 32 threads come and go, the loop is left as it was."""
    loop.call(_task_id)  # this thread's own task and pipes, kept
    assert loop.statistics().thread_tasks == 1
    gc.collect()  # what earlier tests left for the collector, not counted
    before = _open_descriptors()
    for _ in range(2):
        start = threading.Barrier(16)

        def caller(start: threading.Barrier = start) -> None:
            start.wait(WAIT)
            for _ in range(3):
                loop.call(_task_id)

        threads = [threading.Thread(target=caller) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    gc.collect()
    loop.call(_until, lambda: loop.statistics().thread_tasks == 1)
    gc.collect()
    assert _open_descriptors() == before
    assert loop.statistics().calls == 1 + 32 * 3 + 1  # + the _until


def test_a_cancellation_raised_inside_a_call_ends_only_that_threads_task() -> None:
    """asyncio lets a coroutine raise CancelledError by hand: the caller
    gets it, that thread's task ends, and its next call gets a new task."""
    with EventLoopThread("asyncio") as loop:

        async def cancelled() -> None:
            raise asyncio.CancelledError

        async def task() -> asyncio.Task[Any] | None:
            return asyncio.current_task()  # kept alive here: no id reused

        first = loop.call(task)
        assert loop.call(task) is first
        with pytest.raises(asyncio.CancelledError):
            loop.call(cancelled)
        second = loop.call(task)
        assert second is not None
        assert second is not first
        assert loop.statistics().thread_tasks == 1


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_leaving_with_an_error_stops_a_waiting_call_with_loop_not_running(backend: str) -> None:
    """A thread blocked in a call when the loop's block is left with an
    error is woken with LoopNotRunningError (the call is cancelled with the
    loop's tasks), and the thread may not call again."""

    class Boom(Exception):
        pass

    loop = EventLoopThread(backend)
    inside = threading.Event()
    results: list[BaseException] = []

    async def forever() -> None:
        inside.set()
        await anyio.sleep_forever()

    def caller() -> None:
        for _ in range(2):
            try:
                loop.call(forever)
            except LoopNotRunningError as exc:
                results.append(exc)

    thread = threading.Thread(target=caller)
    with pytest.raises(Boom), loop:
        thread.start()
        assert inside.wait(WAIT)
        raise Boom
    thread.join(WAIT)
    assert not thread.is_alive()
    assert [str(e) for e in results] == [
        "the EventLoopThread stopped during the call",
        "the EventLoopThread is not running (enter it first)",
    ]
    assert loop.statistics().thread_tasks == 0


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_call_that_no_task_took_is_answered_when_the_loop_stops(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call handed to a thread's task that is gone (a call racing its
    task's end as the loop closes) is answered with LoopNotRunningError when
    the loop stops, not left waiting for good. The race is forced by
    starting no thread task at all."""
    from jobctl.blocking._loop import _ThreadTasks

    monkeypatch.setattr(_ThreadTasks, "start", lambda self, box: None)
    loop = EventLoopThread(backend)
    results: list[BaseException] = []

    async def nothing() -> None:
        pass

    def caller() -> None:
        try:
            loop.call(nothing)
        except LoopNotRunningError as exc:
            results.append(exc)

    thread = threading.Thread(target=caller)
    with loop:
        thread.start()
        # Submitted tasks do not go through thread tasks: this one runs.
        loop.submit(_until, lambda: loop.statistics().calls == 1).result(WAIT)
    thread.join(10)
    assert not thread.is_alive()
    assert [str(e) for e in results] == ["the EventLoopThread stopped before the call ran"]


def _interrupted(loop: EventLoopThread, inside: threading.Event, func: Any, *args: Any) -> None:
    """Call ``func(*args)`` through ``loop`` and interrupt the wait (a
    signal handler raising, as Ctrl-C does) once ``inside`` is set."""

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    def poke(main: int) -> None:
        assert inside.wait(WAIT)
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        poker = threading.Thread(target=poke, args=(threading.get_ident(),))
        poker.start()
        with pytest.raises(Interrupted):
            func(*args)
        poker.join(WAIT)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_call_given_up_by_an_interrupt_is_cancelled_and_holds_nothing_up(
    loop: EventLoopThread,
) -> None:
    """A call whose thread stops waiting (a signal handler raised: Ctrl-C)
    is cancelled in the loop, and the thread's next calls run at once in a
    new task of its own while the old one unwinds and ends."""
    inside = threading.Event()
    unwound = threading.Event()
    release = threading.Event()
    seen: list[str] = []

    async def slow() -> None:
        inside.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            with anyio.CancelScope(shield=True):  # a clean-up that takes a while
                unwound.set()
                await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=False)
            raise

    _interrupted(loop, inside, loop.call, slow)
    assert unwound.wait(WAIT)
    assert loop.call(_task_id) != 0  # runs now, not after the clean-up
    assert loop.statistics().thread_tasks == 2
    release.set()
    loop.call(_until, lambda: loop.statistics().thread_tasks == 1)
    assert seen == ["cancelled"]


def test_a_job_waited_for_by_an_interrupted_thread_is_not_taken(loop: EventLoopThread) -> None:
    """Ctrl-C while a thread waits for a job leaves nothing behind: the wait
    is cancelled in the loop, so the job is not begun when the domain frees
    up (it would be held forever, by a thread that no longer waits)."""
    bdom = BlockingDomain(loop, Domain("d", wait_timeout=WAIT))
    waiting = threading.Event()

    def until_waiting() -> None:
        loop.call(_until_waiting, bdom.domain)
        waiting.set()

    holder_done = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with bdom.job(Job.MODIFY, owner="holder"):
            threading.Thread(target=until_waiting).start()
            assert release.wait(WAIT)
        holder_done.set()

    thread = threading.Thread(target=holder)
    thread.start()
    loop.call(_until, lambda: bool(bdom.domain.info().regular_jobs))
    _interrupted(loop, waiting, lambda: bdom.job(Job.QUERY, owner="waiter").__enter__())
    loop.call(_until, lambda: not bdom.domain.info().waiters)
    release.set()
    assert holder_done.wait(WAIT)
    thread.join(WAIT)
    assert bdom.info().idle
    with bdom.job(Job.MODIFY, nowait=True):  # nothing left holding it
        pass


@pytest.mark.parametrize("what", ["job", "monitor"])
def test_an_interrupt_just_after_the_grant_leaves_nothing_held(
    loop: EventLoopThread, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C can land after the loop granted the job (or the monitor) and
    before the thread woke to hear it: the entry then ends what it took, so
    the domain is not left held by a thread that no longer waits."""

    class Interrupted(Exception):
        pass

    bdom = BlockingDomain(loop, Domain("d", monitor=ScriptedMonitor()))
    real_call = EventLoopThread.call

    def granted_then_interrupted(self: EventLoopThread, func: Any, *args: Any) -> Any:
        result = real_call(self, func, *args)
        if getattr(func, "__name__", "") == "__aenter__" and what in repr(func).lower():
            raise Interrupted
        return result

    if what == "job":
        monkeypatch.setattr(EventLoopThread, "call", granted_then_interrupted)
        with pytest.raises(Interrupted):
            bdom.job(Job.MODIFY).__enter__()
        monkeypatch.undo()
        assert bdom.info().idle
    else:
        with bdom.job(Job.MODIFY) as job:
            monkeypatch.setattr(EventLoopThread, "call", granted_then_interrupted)
            with pytest.raises(Interrupted):
                job.monitor().__enter__()
            monkeypatch.undo()
            assert bdom.info().monitor_holder is None
            with job.monitor() as mon:  # free again
                mon.execute("noop")
    with bdom.job(Job.MODIFY, nowait=True):
        pass
