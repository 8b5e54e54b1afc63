"""Drawn schedules: reproducible exploration of task interleavings.

Under Hypothesis, trio's scheduler is seeded the same way for every example,
and asyncio runs ready tasks first in, first out, so on either backend the
interleaving of tasks that become ready together is fixed. A
:class:`Schedule` varies it: every actor calls :meth:`ScheduleCursor.point`
at its decision points, which yields to the scheduler as many times as the
schedule's next number says. Different numbers, different interleavings; an
empty schedule (what failures shrink towards) yields nothing extra.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import final

import anyio.lowlevel
import attrs

__all__ = ["Schedule", "ScheduleCursor"]


def _yields(yields: Iterable[int]) -> tuple[int, ...]:
    return tuple(yields)


def _check_yields(instance: object, attribute: object, value: tuple[int, ...]) -> None:
    for n in value:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"a schedule holds yield counts >= 0, not {n!r}")


@final
@attrs.frozen
class Schedule:
    """A drawn interleaving: how many extra times to yield at each decision
    point, in the order the points are reached (then 0 forever)."""

    yields: tuple[int, ...] = attrs.field(default=(), converter=_yields, validator=_check_yields)

    def cursor(self) -> ScheduleCursor:
        """A fresh reader of this schedule, for one run."""
        return ScheduleCursor(self)


@final
class ScheduleCursor:
    """Reads a :class:`Schedule` during one run; shared by all its actors."""

    __slots__ = ("_position", "_yields", "points")

    def __init__(self, schedule: Schedule) -> None:
        self._yields = schedule.yields
        self._position = 0
        #: Decision points reached so far.
        self.points = 0

    async def point(self) -> None:
        """A decision point: yield to the scheduler as often as the schedule
        says (always at least one checkpoint, so cancellation is seen). On
        trio or asyncio alike, each yield is an anyio checkpoint."""
        self.points += 1
        extra = 0
        if self._position < len(self._yields):
            extra = self._yields[self._position]
            self._position += 1
        for _ in range(extra + 1):
            await anyio.lowlevel.checkpoint()
