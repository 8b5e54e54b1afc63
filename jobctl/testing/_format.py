"""Readable one-line renderings of trace events, for violations and dumps."""

from __future__ import annotations

from collections.abc import Iterable

from jobctl._core._trace import TraceEvent

__all__ = ["format_event", "format_events"]


def format_event(event: TraceEvent) -> str:
    """One event as a fixed-column line::

    seq=41 t=3.000 vm1 monitor.enter MIGRATION_OUT#12 (migrate) {...}
    """
    who = ""
    if event.job_id is not None:
        who = f"{event.job}#{event.job_id}"
        if event.owner is not None:
            who += f" ({event.owner})"
    detail = ""
    if event.detail:
        detail = " " + ", ".join(f"{key}={value!r}" for key, value in event.detail.items())
    return (
        f"seq={event.seq:<5} t={event.time:8.3f} {event.domain} "
        f"{event.kind.value:<17} {who}{detail}".rstrip()
    )


def format_events(events: Iterable[TraceEvent], indent: str = "  ") -> str:
    """Several events, one per line."""
    return "\n".join(indent + format_event(event) for event in events)
