"""Monitor violations, read from the trace.

A real QEMU cannot say whether a client had two commands in flight on one
monitor; the trace can. Each domain talks to one QMP connection, so per
domain: a job may enter the monitor only while nobody holds it, and may send
a command only while it holds the monitor and no other command is in flight.
"""

from __future__ import annotations

from typing import Final, final

from jobctl._trace import TraceEvent, TraceKind

__all__ = ["MonitorChecker"]

_EXAMPLES: Final = 5


@final
class MonitorChecker:
    """A trace listener that counts monitor violations (subscribe it to a
    :class:`jobctl.TraceHub`); ``examples`` describes the first few."""

    __slots__ = ("_holder", "_in_flight", "commands", "examples", "violations")

    def __init__(self) -> None:
        self._holder: dict[str, int | None] = {}
        self._in_flight: dict[str, str | None] = {}
        self.violations = 0
        self.commands = 0
        self.examples: list[str] = []

    def _violate(self, event: TraceEvent, what: str) -> None:
        self.violations += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"seq {event.seq} on {event.domain}: {what}")

    def __call__(self, event: TraceEvent) -> None:
        kind = event.kind
        domain = event.domain
        if kind is TraceKind.MONITOR_ENTER:
            holder = self._holder.get(domain)
            if holder is not None:
                self._violate(event, f"job {event.job_id} entered the monitor job {holder} holds")
            self._holder[domain] = event.job_id
        elif kind is TraceKind.MONITOR_EXIT:
            if self._holder.get(domain) == event.job_id:
                self._holder[domain] = None
        elif kind is TraceKind.COMMAND_SENT:
            self.commands += 1
            command = str(event.detail.get("command"))
            pending = self._in_flight.get(domain)
            if pending is not None:
                self._violate(event, f"{command!r} sent while {pending!r} was in flight")
            elif self._holder.get(domain) != event.job_id:
                self._violate(event, f"{command!r} sent by job {event.job_id} without the monitor")
            self._in_flight[domain] = command
        elif kind is TraceKind.COMMAND_ANSWERED:
            self._in_flight[domain] = None
