"""Helpers for the host tests: a conflict monitor and virtual-time runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio
import pytest
import trio.testing

from jobctl.host import Need

T = TypeVar("T")

#: Run a test on trio only, with a virtual clock (work modelled by sleeps).
virtual_time = pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` on trio with a fresh MockClock (for Hypothesis bodies)."""
    return anyio.run(
        main,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )


class Overlaps:
    """Records which commands run together, independently of the locks.

    ``enter`` compares the newcomer with everything inside and records any
    pair whose needs conflict; ``peak`` is the most inside at once.
    """

    def __init__(self) -> None:
        self.inside: dict[str, tuple[Need, ...]] = {}
        self.conflicts: list[tuple[str, str]] = []
        self.order: list[str] = []
        self.peak = 0

    def enter(self, name: str, needs: Iterable[Need]) -> None:
        mine = tuple(needs)
        for other, theirs in self.inside.items():
            if any(a.conflicts_with(b) for a in mine for b in theirs):
                self.conflicts.append((other, name))
        self.inside[name] = mine
        self.order.append(name)
        self.peak = max(self.peak, len(self.inside))

    def exit(self, name: str) -> None:
        del self.inside[name]
