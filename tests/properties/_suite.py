"""The suite's whole-scenario properties, by name: each draws a scenario and
a schedule, and holds if :func:`jobctl.testing.run_scenario` passes on them.

``test_scenarios.py`` runs them; ``test_meta.py`` shows they catch planted bugs.
"""

from __future__ import annotations

import re
from typing import Final

from hypothesis import strategies as st

from jobctl import TraceEvent
from jobctl.testing import Scenario, Schedule, scenarios, schedules

Example = tuple[Scenario, Schedule]

PROPERTIES: Final[dict[str, st.SearchStrategy[Example]]] = {
    # Up to three domains, each with regular jobs, async jobs, aborts and faults.
    "scenarios": st.tuples(scenarios(), schedules()),
    # Busy domains without async jobs: compatibility and FIFO under load.
    "regular jobs alone": st.tuples(scenarios(max_async_jobs=0, max_jobs=10), schedules()),
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
