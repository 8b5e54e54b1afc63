"""A moment on both clocks: the event loop's (monotonic) and the wall clock.

The core measures on anyio's clock (``anyio.current_time()``: virtual under
a test's clock, never adjusted); people and other programs read wall-clock
times. A :class:`Stamp` holds one moment on both, so any other time on the
loop's clock converts to wall-clock time by its distance from the stamp.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, final

import attrs

from jobctl._backend import native

__all__ = ["Stamp"]


@final
@attrs.frozen
class Stamp:
    """When a value was observed: ``monotonic`` on the event loop's clock
    (``anyio.current_time()``: virtual under a test's clock), ``wall`` in
    seconds since the Unix epoch (``time.time()``)."""

    monotonic: float
    wall: float

    @classmethod
    def now(cls) -> Stamp:
        """Now (on the event loop's thread)."""
        return cls(native().current_time(), time.time())

    @property
    def utc(self) -> datetime.datetime:
        """:attr:`wall` as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.wall, datetime.UTC)

    def at(self, monotonic: float) -> Stamp:
        """The moment ``monotonic`` (on the loop's clock) on both clocks: its
        wall-clock time is this stamp's, moved by the distance between them."""
        return Stamp(monotonic, self.wall + (monotonic - self.monotonic))

    def to_json(self) -> dict[str, Any]:
        """``{"monotonic": float, "wall": epoch seconds, "utc": ISO 8601}``
        (docs/JSON.md)."""
        return {"monotonic": self.monotonic, "wall": self.wall, "utc": self.utc.isoformat()}
