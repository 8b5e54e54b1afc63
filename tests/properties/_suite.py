"""The suite's whole-scenario properties, by name: each draws a scenario and
a schedule, and holds if :func:`jobctl.testing.run_scenario` passes on them.

``test_scenarios.py`` runs them; ``test_meta.py`` shows they catch planted bugs.
"""

from __future__ import annotations

from typing import Final

from hypothesis import strategies as st

from jobctl.testing import Scenario, Schedule, scenarios, schedules

Example = tuple[Scenario, Schedule]

PROPERTIES: Final[dict[str, st.SearchStrategy[Example]]] = {
    # Up to three domains, each with regular jobs, async jobs, aborts and faults.
    "scenarios": st.tuples(scenarios(), schedules()),
    # Busy domains without async jobs: compatibility and FIFO under load.
    "regular jobs alone": st.tuples(scenarios(max_async_jobs=0, max_jobs=10), schedules()),
}
