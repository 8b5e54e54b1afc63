"""Hypothesis strategies for scenario plans and schedules.

Times are drawn on a half-second grid, so shrunk scenarios read well; every
strategy shrinks towards fewer actors, earlier starts, QUERY jobs, no
faults and an empty schedule.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import attrs
from hypothesis import strategies as st

from jobctl._core._kinds import AsyncJob, Job
from jobctl.testing._plans import (
    AbortPlan,
    Allow,
    AsyncJobPlan,
    Commands,
    DomainPlan,
    Fail,
    Phase,
    RegularJobPlan,
    Scenario,
    Step,
    Window,
)
from jobctl.testing._schedule import Schedule
from jobctl_simulators.qemu import Die, Drop, ErrorReply, Fault, FaultRule, Stall

__all__ = [
    "abort_plans",
    "async_job_plans",
    "domain_plans",
    "monitor_faults",
    "regular_job_plans",
    "scenarios",
    "schedules",
]

# QUERY first (shrinks towards it) and drawn most often: it is the kind that shares.
_REGULAR_KINDS: Final = (
    Job.QUERY,
    Job.QUERY,
    Job.QUERY,
    Job.MODIFY,
    Job.ABORT,
    Job.SUSPEND,
    Job.MIGRATION_OP,
    Job.DESTROY,
)
_MASKABLE: Final = (Job.QUERY, Job.ABORT, Job.MODIFY, Job.SUSPEND, Job.MIGRATION_OP)
_PHASES: Final = ("perform", "prepare", "confirm", "finish")


def _times(top: float, bottom: float = 0.0) -> st.SearchStrategy[float]:
    """Times on a half-second grid, ``bottom`` to ``top``."""
    return st.integers(int(bottom * 2), int(top * 2)).map(lambda n: n / 2)


def _rarely(top: float) -> st.SearchStrategy[float | None]:
    """None three times in four (and what it shrinks to), else a time on the
    grid up to ``top``."""
    steps = int(top * 2)
    nones = 3 * steps + 2
    return st.integers(0, nones + steps + 1).map(
        lambda n: None if n <= nones else (n - nones - 1) / 2
    )


# Strategies are built once per set of arguments: Hypothesis spends far more
# time building and validating a strategy than drawing from it.


@functools.cache
def _regular(
    kinds: tuple[Job, ...], max_start: float, max_hold: float, max_commands: int
) -> st.SearchStrategy[RegularJobPlan]:
    return st.builds(
        RegularJobPlan,
        owner=st.just("job"),
        kind=st.sampled_from(kinds),
        start=_times(max_start),
        hold=_times(max_hold, 0.5),
        commands=st.integers(0, max_commands),
        nowait=st.sampled_from((False,) * 7 + (True,)),
        timeout=st.sampled_from((None, 2.0, 0.5, 10.0)),
        cancel_after=_rarely(3.0),
    )


def regular_job_plans(
    owner: str = "job",
    *,
    kinds: Sequence[Job] = _REGULAR_KINDS,
    max_start: float = 5.0,
    max_hold: float = 3.0,
    max_commands: int = 3,
) -> st.SearchStrategy[RegularJobPlan]:
    """A regular job: kind, start, hold, commands, nowait, timeout, cancellation."""
    plans = _regular(tuple(kinds), max_start, max_hold, max_commands)
    return plans if owner == "job" else plans.map(lambda p: attrs.evolve(p, owner=owner))


@functools.cache
def _steps(max_rounds: int) -> st.SearchStrategy[tuple[Step, ...]]:
    """A flow like a migration's: rounds of a non-interruptible stretch
    (commands, sometimes a phase or a mask change) then a window; at the
    end sometimes a last stretch, sometimes a failure."""
    extras: st.SearchStrategy[tuple[Step, ...]] = st.one_of(
        st.just(()),
        st.just(()),
        st.builds(Phase, name=st.sampled_from(_PHASES)).map(lambda s: (s,)),
        st.builds(Allow, kinds=st.frozensets(st.sampled_from(_MASKABLE))).map(lambda s: (s,)),
    )
    stretch = st.tuples(st.integers(0, 3), extras).map(
        lambda parts: ((Commands(parts[0]),) if parts[0] else ()) + parts[1]
    )
    window = st.builds(
        Window, seconds=_times(3.0, 0.5), misuse=st.sampled_from((False, False, False, True))
    )
    rounds = st.lists(st.tuples(stretch, window), min_size=1, max_size=max_rounds)
    ending: st.SearchStrategy[tuple[Step, ...]] = st.sampled_from(
        ((), (Commands(1),), (), (Fail(),))
    )
    return st.tuples(rounds, ending).map(
        lambda parts: tuple(step for s, w in parts[0] for step in (*s, w)) + parts[1]
    )


@functools.cache
def _async(
    kinds: tuple[AsyncJob, ...], max_start: float, max_rounds: int
) -> st.SearchStrategy[AsyncJobPlan]:
    return st.builds(
        AsyncJobPlan,
        owner=st.just("async"),
        kind=st.sampled_from(kinds),
        start=_times(max_start),
        steps=_steps(max_rounds),
        allowed=st.one_of(st.none(), st.frozensets(st.sampled_from(_MASKABLE))),
        abort_hook=st.booleans().map(lambda b: not b),
        timeout=st.sampled_from((None, 10.0, 2.0)),
        cancel_after=_rarely(6.0),
    )


def async_job_plans(
    owner: str = "async",
    *,
    kinds: Sequence[AsyncJob] = tuple(AsyncJob),
    max_start: float = 4.0,
    max_rounds: int = 3,
) -> st.SearchStrategy[AsyncJobPlan]:
    """An async job: kind, start, mask, and a drawn flow of up to
    ``max_rounds`` rounds of commands (with phases and mask changes) and
    windows (sometimes with a monitor misuse inside), sometimes failing at
    the end."""
    plans = _async(tuple(kinds), max_start, max_rounds)
    return plans if owner == "async" else plans.map(lambda p: attrs.evolve(p, owner=owner))


@functools.cache
def abort_plans(*, max_at: float = 6.0) -> st.SearchStrategy[AbortPlan]:
    """A call to ``Domain.abort`` at a drawn time."""
    return st.builds(AbortPlan, at=_times(max_at), timeout=st.sampled_from((None, 1.0)))


#: What :func:`monitor_faults` draws from, mildest first (it shrinks that way).
_MONITOR_FAULTS: Final = ("error", "stall", "drop", "death")


def _monitor_fault(kind: str, nth: int, seconds: float) -> FaultRule:
    fault: Fault
    if kind == "error":
        fault = ErrorReply()
    elif kind == "stall":
        fault = Stall(seconds)
    elif kind == "drop":
        fault = Drop()
    else:
        fault = Die()
    return FaultRule(fault, nth=nth)


@functools.cache
def monitor_faults(*, max_nth: int = 9) -> st.SearchStrategy[FaultRule]:
    """A fault at a drawn command (its ``nth``, from 1 to ``max_nth``): an
    error reply, a stall (up to 4 s), a dropped connection or the VM's death."""
    return st.builds(
        _monitor_fault,
        kind=st.sampled_from(_MONITOR_FAULTS),
        nth=st.integers(1, max_nth),
        seconds=_times(4.0),
    )


def _named(jobs: list[RegularJobPlan]) -> tuple[RegularJobPlan, ...]:
    return tuple(
        attrs.evolve(job, owner=f"{job.kind.name.lower()}{index}") for index, job in enumerate(jobs)
    )


def domain_plans(
    name: str = "vm0",
    *,
    max_jobs: int = 7,
    max_async_jobs: int = 2,
    max_aborts: int = 2,
    faults: bool = True,
    regular_kinds: Sequence[Job] = _REGULAR_KINDS,
) -> st.SearchStrategy[DomainPlan]:
    """Everything that happens on one domain: regular jobs, async jobs,
    aborts, the monitor's latency and faults, the queue's limits.
    ``max_async_jobs=0`` gives a pure background load, to play beside a
    flow of your own."""
    return _domain_plans(name, max_jobs, max_async_jobs, max_aborts, faults, tuple(regular_kinds))


@functools.cache
def _domain_plans(
    name: str,
    max_jobs: int,
    max_async_jobs: int,
    max_aborts: int,
    faults: bool,
    regular_kinds: tuple[Job, ...],
) -> st.SearchStrategy[DomainPlan]:
    # Mostly one async job: most invariants are about regular jobs meeting it.
    counts = sorted(range(max_async_jobs + 1), key=lambda n: (n != 1, n))
    async_jobs = st.one_of(
        [st.tuples(*[async_job_plans(f"async{i}") for i in range(n)]) for n in counts]
    )
    return st.builds(
        DomainPlan,
        name=st.just(name),
        jobs=st.lists(regular_job_plans(kinds=regular_kinds), max_size=max_jobs).map(_named),
        async_jobs=async_jobs,
        aborts=st.lists(abort_plans(), max_size=max_aborts),
        latency=st.lists(st.sampled_from((0.0, 0.5, 0.1, 1.0)), min_size=1, max_size=3),
        faults=st.lists(monitor_faults(), max_size=1 if faults else 0),
        wait_timeout=st.sampled_from((30.0, 5.0)),
        max_queued=st.sampled_from((0, 0, 0, 2)),
    )


@functools.cache
def scenarios(
    *,
    max_domains: int = 3,
    max_jobs: int = 7,
    max_async_jobs: int = 2,
    max_aborts: int = 2,
    faults: bool = True,
) -> st.SearchStrategy[Scenario]:
    """One to ``max_domains`` independent domains (``vm0``, ``vm1``, ...),
    each drawn by :func:`domain_plans` with these limits."""
    if max_domains < 1:
        raise ValueError(f"max_domains must be >= 1, not {max_domains!r}")
    plans = [
        domain_plans(
            f"vm{i}",
            max_jobs=max_jobs,
            max_async_jobs=max_async_jobs,
            max_aborts=max_aborts,
            faults=faults,
        )
        for i in range(max_domains)
    ]
    return st.one_of(
        [st.tuples(*plans[:count]).map(Scenario) for count in range(1, max_domains + 1)]
    )


@functools.cache
def schedules(*, max_points: int = 40, max_yields: int = 3) -> st.SearchStrategy[Schedule]:
    """Drawn interleavings: extra yields at each decision point."""
    return st.lists(st.integers(0, max_yields), max_size=max_points).map(Schedule)
