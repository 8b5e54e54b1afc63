"""Hypothesis strategies for simulator faults (needs ``hypothesis``).

``fault_plans()`` draws scripted :class:`~jobctl_simulators.qemu.FaultPlan` s that
shrink well: fewer rules, earlier occurrences, milder faults.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from ._faults import Die, Drop, ErrorReply, Fault, FaultPlan, FaultRule, Garbage, Latency, Stall

__all__ = ["fault_plans", "fault_rules", "faults"]


def faults(*, max_seconds: float = 1.0, allow_death: bool = True) -> st.SearchStrategy[Fault]:
    """One fault, mildest first (so failures shrink towards latency)."""
    seconds = st.floats(0.0, max_seconds, allow_nan=False, allow_infinity=False)
    choices: list[st.SearchStrategy[Fault]] = [
        st.builds(Latency, seconds),
        st.builds(ErrorReply),
        st.builds(Stall, seconds),
        st.builds(Garbage),
        st.builds(Drop, execute=st.booleans()),
    ]
    if allow_death:
        choices.append(st.builds(Die))
    return st.one_of(choices)


def fault_rules(
    commands: Sequence[str], *, max_nth: int = 5, max_seconds: float = 1.0, allow_death: bool = True
) -> st.SearchStrategy[FaultRule]:
    """A rule hitting one of ``commands`` on one of its first ``max_nth`` runs."""
    return st.builds(
        FaultRule,
        faults(max_seconds=max_seconds, allow_death=allow_death),
        st.sampled_from(list(commands)),
        st.integers(1, max_nth),
    )


def fault_plans(
    commands: Sequence[str],
    *,
    max_rules: int = 3,
    max_nth: int = 5,
    max_seconds: float = 1.0,
    allow_death: bool = True,
) -> st.SearchStrategy[FaultPlan]:
    """A scripted plan of up to ``max_rules`` rules on ``commands``."""
    rules = st.lists(
        fault_rules(commands, max_nth=max_nth, max_seconds=max_seconds, allow_death=allow_death),
        max_size=max_rules,
    )
    return rules.map(FaultPlan)
