"""The suite's whole-scenario properties, by name: each draws a scenario and
a schedule, and holds if :func:`jobctl.testing.run_scenario` passes on them.

``test_scenarios.py`` runs them; ``test_meta.py`` shows they catch planted bugs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import attrs
from hypothesis import strategies as st

from jobctl import AsyncJob, Job, TraceEvent
from jobctl.testing import (
    AsyncJobPlan,
    Commands,
    DomainPlan,
    ErrorReply,
    RegularJobPlan,
    Scenario,
    Schedule,
    Window,
    abort_plans,
    async_job_plans,
    monitor_faults,
    regular_job_plans,
    scenarios,
    schedules,
)

Example = tuple[Scenario, Schedule]


def _owners(prefix: str) -> Callable[[list[RegularJobPlan]], tuple[RegularJobPlan, ...]]:
    def name(jobs: list[RegularJobPlan]) -> tuple[RegularJobPlan, ...]:
        return tuple(attrs.evolve(job, owner=f"{prefix}{i}") for i, job in enumerate(jobs))

    return name


#: Many requests at the same few instants against a short queue: ``nowait``,
#: ``max_queued``, timeouts and FIFO under pressure, with or without an async job.
_PRESSURE: Final = st.builds(
    DomainPlan,
    name=st.just("vm0"),
    jobs=st.lists(regular_job_plans(max_start=1.0, max_hold=1.0), min_size=3, max_size=10).map(
        _owners("job")
    ),
    async_jobs=st.lists(async_job_plans("async0", max_start=1.0), max_size=1).map(tuple),
    latency=st.lists(st.sampled_from((0.0, 0.5)), min_size=1, max_size=2),
    wait_timeout=st.sampled_from((5.0, 1.0)),
    max_queued=st.sampled_from((1, 2, 3)),
).map(lambda plan: Scenario((plan,)))


def _on_the_grid(plan: AsyncJobPlan) -> AsyncJobPlan:
    """Starts on a 0.5 s grid, so that they meet the holder's end and DESTROY."""
    return attrs.evolve(plan, start=plan.start // 0.5 * 0.5)


def _race(holder_hold: float, destroy_at: float, plan: AsyncJobPlan) -> Scenario:
    jobs = (
        RegularJobPlan("holder", Job.MODIFY, hold=holder_hold),
        RegularJobPlan("destroy", Job.DESTROY, start=destroy_at),
    )
    return Scenario((DomainPlan("vm0", jobs=jobs, async_jobs=(plan,)),))


#: DESTROY at the instant the async job is granted (queued behind a holder, or
#: on the fast path), before or after its task resumes.
_DESTROY_RACES: Final = st.builds(
    _race,
    st.sampled_from((0.0, 0.5, 1.0)),
    st.sampled_from((0.0, 0.5, 1.0)),
    async_job_plans("async0", max_start=1.0).map(
        lambda p: attrs.evolve(p, start=p.start // 0.5 * 0.5)
    ),
)

#: Aborts while the monitor fails now and then, so that abort hooks fail too.
_ABORTS_UNDER_FAULTS: Final = st.builds(
    DomainPlan,
    name=st.just("vm0"),
    jobs=st.lists(regular_job_plans(max_start=2.0), max_size=3).map(_owners("job")),
    async_jobs=st.tuples(
        st.builds(
            AsyncJobPlan,
            owner=st.just("async0"),
            kind=st.sampled_from((AsyncJob.MIGRATION_OUT, AsyncJob.BACKUP)),
            steps=st.lists(
                st.sampled_from((Window(1.0), Window(2.0), Commands(1))), min_size=1, max_size=3
            ).map(tuple),
        )
    ),
    aborts=st.lists(abort_plans(max_at=3.0), min_size=1, max_size=3),
    faults=st.lists(
        monitor_faults(max_nth=4).filter(lambda f: isinstance(f.fault, ErrorReply)),
        min_size=1,
        max_size=3,
        unique_by=lambda f: f.nth,
    ),
).map(lambda plan: Scenario((plan,)))

PROPERTIES: Final[dict[str, st.SearchStrategy[Example]]] = {
    # Up to three domains, each with regular jobs, async jobs, aborts and faults.
    "scenarios": st.tuples(scenarios(), schedules()),
    # Busy domains without async jobs: compatibility and FIFO under load.
    "regular jobs alone": st.tuples(scenarios(max_async_jobs=0, max_jobs=10), schedules()),
    "queue pressure": st.tuples(_PRESSURE, schedules()),
    "destroy races": st.tuples(_DESTROY_RACES, schedules(max_points=12)),
    "aborts under faults": st.tuples(_ABORTS_UNDER_FAULTS, schedules()),
}


def normalized(events: tuple[TraceEvent, ...]) -> list[str]:
    """The trace without what differs between two runs of one process:
    process-wide counters (seq, job ids) and object addresses and ids
    (``0x7f..``, asyncio's ``cancel scope 7f14691c5940``)."""
    ids: dict[int, int] = {}
    out: list[str] = []
    for e in events:
        job = None if e.job_id is None else ids.setdefault(e.job_id, len(ids))
        detail = {k: v for k, v in e.detail.items() if k not in ("pending", "abandoned")}
        line = (
            f"{e.time} {e.domain} {e.kind.value} {job} {e.job} {e.owner} {sorted(detail.items())}"
        )
        out.append(re.sub(r"\b(?:0x)?(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b", "0x?", line))
    return out
