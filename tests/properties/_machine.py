"""The state machine of the stateful suite: Hypothesis drives one domain
rule by rule (run by ``test_stateful.py``, and by ``test_meta.py`` with
planted bugs).

Rules request regular jobs, run an async job's flow one order at a time
(sections, commands, phases, mask changes), abort, destroy, cancel, break
the monitor and let virtual time pass. After every rule the trace so far
must keep the invariants, and the checker's model of the domain, built
from the trace alone, must agree with ``Domain.info()``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from jobctl import (
    DEFAULT_ALLOWED,
    ActiveAsyncJob,
    AsyncJob,
    Domain,
    Job,
    JobAbortedError,
    JobError,
    JobStateError,
)
from jobctl.testing import (
    InvariantChecker,
    InvariantViolation,
    ScriptedMonitor,
    ScriptedMonitorClosedError,
    ScriptedReplyError,
    SteppedRun,
    TraceRecorder,
    Violation,
)

#: Longer than any legitimate wait of the flow (holds <= 3 s, latencies
#: <= 0.5 s, wait timeouts 10 s).
STUCK_AFTER = 30.0

KINDS = st.sampled_from([Job.QUERY, Job.QUERY, Job.MODIFY, Job.ABORT, Job.SUSPEND])
MASKS = st.frozensets(st.sampled_from([Job.QUERY, Job.ABORT, Job.MODIFY, Job.SUSPEND]))
TIMES = st.integers(1, 6).map(lambda n: n / 2)


class Flow:
    """An async job's owner, taking orders one at a time from the machine."""

    def __init__(self, dom: Domain, kind: AsyncJob, allowed: frozenset[Job]) -> None:
        self.dom = dom
        self.kind = kind
        self.allowed = allowed
        self.send, self.orders = trio.open_memory_channel[tuple[str, Any]](1)
        #: "waiting" (to begin), "outside", "inside", "busy", "done"
        self.state = "waiting"
        #: When the flow took its current order (while "busy").
        self.busy_since = 0.0
        self.scope = trio.CancelScope()
        self.result: str | None = None

    async def main(self) -> None:
        with self.scope:
            await self.run()
        if self.scope.cancelled_caught:
            self.result = "cancelled"

    async def run(self) -> None:
        try:
            async with self.dom.async_job(self.kind, allowed=self.allowed, owner="flow") as ajob:
                ajob.set_abort_hook(lambda mon: mon.execute("migrate_cancel"))
                self.state = "outside"
                await self.serve(ajob, inside=False)
            self.result = "ok"
        except JobAbortedError as exc:
            self.result = exc.reason
        except (JobError, ScriptedReplyError, ScriptedMonitorClosedError, _Failed) as exc:
            self.result = type(exc).__name__
        finally:
            self.state = "done"

    async def serve(self, ajob: ActiveAsyncJob, *, inside: bool) -> None:
        while True:
            order, arg = await self.orders.receive()
            if order == "leave":
                # On its way out, the flow tries to use the monitor inside the
                # section: the core must refuse (else invariant 2 flags it).
                with contextlib.suppress(JobStateError):
                    async with ajob.monitor():
                        pass
                return
            if order == "finish":
                return
            if order == "fail":
                raise _Failed
            if order == "open":
                async with ajob.interruptible():
                    self.state = "inside"
                    await self.serve(ajob, inside=True)
                    self.state = "busy"
            elif order == "commands":
                async with ajob.monitor() as mon:
                    for i in range(arg):
                        await mon.execute(f"step-{i}")
            elif order == "phase":
                await ajob.set_phase(arg)
            elif order == "allow":
                ajob.set_allowed(arg)
                self.allowed = frozenset(arg)
            self.state = "inside" if inside else "outside"


class _Failed(Exception):
    pass


class DomainMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.stepper = SteppedRun()
        self.recorder = TraceRecorder()
        self.checker = InvariantChecker(max_wait=10.0)
        self.recorder.hub.subscribe(self.checker.feed)
        self.monitor = ScriptedMonitor(latency=(0.0, 0.5))
        self.dom = Domain(
            "vm", monitor=self.monitor, trace=self.recorder.hub, wait_timeout=10.0, max_queued=2
        )
        self.scopes: dict[str, trio.CancelScope] = {}
        self.flow: Flow | None = None
        self.names = itertools.count()
        #: Actors that have not finished.
        self.running: set[str] = set()

    def start(self, name: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start an actor; it queues, begins or acts at once."""

        async def tracked() -> None:
            self.running.add(name)
            try:
                await fn(*args)
            finally:
                self.running.discard(name)

        self.stepper.start_soon(tracked)
        self.stepper.advance(0)

    # -- regular jobs ----------------------------------------------------------

    async def job(
        self,
        scope: trio.CancelScope,
        kind: Job,
        name: str,
        hold: float,
        commands: int,
        nowait: bool,
    ) -> None:
        with scope:
            try:
                async with self.dom.job(kind, owner=name, nowait=nowait) as job:
                    if commands:
                        async with job.monitor() as mon:
                            for i in range(commands):
                                await mon.execute(f"{name}-{i}")
                    await trio.sleep(hold)
            except (JobError, ScriptedReplyError, ScriptedMonitorClosedError):
                pass

    def request_job(self, kind: Job, hold: float, commands: int, nowait: bool) -> str:
        name = f"{kind.name.lower()}{next(self.names)}"
        scope = self.scopes[name] = trio.CancelScope()
        self.start(name, self.job, scope, kind, name, hold, commands, nowait)
        return name

    @rule(
        target=jobs,
        kinds=st.lists(KINDS, min_size=1, max_size=3),
        hold=TIMES,
        commands=st.integers(0, 2),
        nowait=st.booleans(),
    )
    def request_jobs(
        self, kinds: list[Job], hold: float, commands: int, nowait: bool
    ) -> MultipleResults[str]:
        """One job, or several at the same instant (then the queue's order matters)."""
        return multiple(*(self.request_job(kind, hold, commands, nowait) for kind in kinds))

    @rule(name=consumes(jobs))
    def cancel_job(self, name: str) -> None:
        self.stepper.call(self.scopes.pop(name).cancel)

    @rule(what=st.sampled_from(["abort", "destroy", "monitor dies"]))
    def disrupt(self, what: str) -> None:
        """Abort the async job, destroy the VM, or lose the monitor (and
        reconnect a fresh one)."""
        if what == "abort":

            async def abort() -> None:
                with contextlib.suppress(JobError, ScriptedReplyError, ScriptedMonitorClosedError):
                    await self.dom.abort("machine")

            self.start(f"abort{next(self.names)}", abort)
        elif what == "destroy":
            name = f"destroy{next(self.names)}"
            self.start(name, self.job, trio.CancelScope(), Job.DESTROY, name, 0.5, 1, False)
        else:
            self.monitor.close()
            self.monitor = ScriptedMonitor(latency=(0.5, 0.0))
            self.dom.set_monitor(self.monitor)

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 3.0, 20.0]))
    def advance(self, seconds: float) -> None:
        self.stepper.advance(seconds)

    # -- the async job's flow --------------------------------------------------

    @precondition(lambda self: self.flow is None or self.flow.state == "done")
    @rule(
        kind=st.sampled_from(list(AsyncJob)),
        allowed=st.one_of(st.just(DEFAULT_ALLOWED), MASKS),
        first=st.sampled_from(["open", "commands", None]),
    )
    def begin_async(self, kind: AsyncJob, allowed: frozenset[Job], first: str | None) -> None:
        """Start an async job's flow; once it began, maybe give it its first order."""
        self.flow = Flow(self.dom, kind, allowed)
        self.start("flow", self.flow.main)
        # Let it wait its turn (a few seconds at most), so its sections come soon.
        for _ in range(6):
            if self.flow.state != "waiting":
                break
            self.stepper.advance(0.5)
        if first is not None:
            self.order(first, 1)

    def order(self, order: str, arg: Any = None) -> None:
        """Give the flow an order, if it is waiting for one (it may have been
        destroyed or aborted by the rule before)."""
        assert self.flow is not None
        if self.flow.state not in ("outside", "inside"):
            return
        self.flow.state = "busy"
        self.flow.busy_since = self.stepper.current_time()
        self.stepper.call(self.flow.send.send_nowait, (order, arg))
        self.stepper.advance(0)  # the flow takes the order now

    def outside(self) -> bool:
        return self.flow is not None and self.flow.state == "outside"

    def inside(self) -> bool:
        return self.flow is not None and self.flow.state == "inside"

    @precondition(outside)
    @rule()
    def open_section(self) -> None:
        self.order("open")

    @precondition(inside)
    @rule()
    def leave_section(self) -> None:
        self.order("leave")

    @precondition(outside)
    @rule(count=st.integers(1, 3))
    def commands(self, count: int) -> None:
        self.order("commands", count)

    @precondition(lambda self: self.outside() or self.inside())
    @rule(name=st.sampled_from(["perform", "confirm"]), allowed=st.none() | MASKS)
    def adjust(self, name: str, allowed: frozenset[Job] | None) -> None:
        """Name a phase, and maybe change the allowed mask."""
        self.order("phase", name)
        if allowed is not None:
            self.order("allow", allowed)

    @precondition(inside)
    @rule(pick=st.integers(0, 3), hold=TIMES)
    def job_outlasts_section(self, pick: int, hold: float) -> None:
        """A job of an allowed kind arrives in the section, which ends while
        the job runs; the flow then tries to go on at once, which the barrier
        must hold up."""
        assert self.flow is not None
        kinds = sorted(self.flow.allowed - {Job.DESTROY}, key=lambda k: k.name)
        if kinds:
            self.request_job(kinds[pick % len(kinds)], hold, 0, False)
        self.order("leave")
        self.order("commands", 1)  # only taken if the flow got past the barrier

    @precondition(inside)
    @rule(pick=st.integers(0, 3))
    def forbidden_job_knocks(self, pick: int) -> None:
        """A job of a kind the section does not allow asks to begin at once;
        it must be refused (busy), not let in."""
        assert self.flow is not None
        kinds = sorted(set(Job) - self.flow.allowed - {Job.DESTROY}, key=lambda k: k.name)
        if kinds:
            self.request_job(kinds[pick % len(kinds)], 1.0, 0, True)

    @precondition(lambda self: self.flow is not None and self.flow.state != "done")
    @rule(how=st.sampled_from(["finish", "fail", "cancel"]))
    def end_flow(self, how: str) -> None:
        assert self.flow is not None
        if how == "cancel":
            self.stepper.call(self.flow.scope.cancel)
        elif self.outside():
            self.order(how)

    # -- after every rule ------------------------------------------------------

    @invariant()
    def trace_keeps_the_invariants(self) -> None:
        self.checker.check()

    @invariant()
    def model_agrees_with_the_domain(self) -> None:
        model = self.checker.model("vm")
        info = self.dom.info()
        assert model.regular_jobs == {j.id for j in info.regular_jobs}
        assert model.async_job == (None if info.async_job is None else info.async_job.id)
        assert len(model.waiters) == len(info.waiters)
        # A monitor handed over is announced (monitor.enter) when the new
        # holder's task next runs, so the trace may lag the domain there.
        if model.monitor_holder is not None or info.monitor_holder is None:
            assert model.monitor_holder == info.monitor_holder
        if info.async_job is not None:
            assert model.interruptible == info.async_job.interruptible

    @invariant()
    def one_command_at_a_time(self) -> None:
        assert self.monitor.overlaps == ()

    @invariant()
    def the_flow_makes_progress(self) -> None:
        """Every wait of the flow is bounded (holds, latencies and timeouts
        are): busy on one order for longer than that, it is stuck."""
        if self.flow is None or self.flow.state != "busy":
            return
        stuck_for = self.stepper.current_time() - self.flow.busy_since
        if stuck_for > STUCK_AFTER:
            message = f"the async job's flow has been stuck on one order for {stuck_for:.1f} s"
            raise InvariantViolation([Violation(6, "vm", message, (), self.recorder.events[-12:])])

    def teardown(self) -> None:
        try:
            # Let every actor end on its own (holds, timeouts and latencies
            # are bounded): what still runs after that is stuck (invariant 6).
            for _ in range(3):
                if self.flow is not None and self.flow.state == "inside":
                    self.order("leave")
                elif self.flow is not None and self.flow.state == "outside":
                    self.order("finish")
                self.stepper.advance(60.0)
            if self.running:
                message = f"actors still running long after the last rule: {sorted(self.running)}"
                raise InvariantViolation(
                    [Violation(6, "vm", message, (), self.recorder.events[-12:])]
                )
            self.stepper.close()
            self.checker.finish()
            self.checker.check()
            assert self.dom.info().idle, self.dom.info()
        finally:
            self.recorder.close()
            self.stepper.close()


#: Rules per example (the example budget comes from the Hypothesis profile).
STEPS = 25

__all__ = ["STEPS", "DomainMachine"]
