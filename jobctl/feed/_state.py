"""The feed's state model: what each domain is doing now, folded from the trace.

A client that connects late gets this as its ``snapshot``, then the live
events; together they tell it everything the timeline draws from that moment.
Each domain's state is the core's fold of the trace (:func:`jobctl.fold_event`,
the same the invariant checker judges); this module only keeps one per domain
and writes them as JSON.
"""

from __future__ import annotations

from typing import Any, Final, final

from jobctl import TracedDomain, TraceEvent, fold_event

from ._protocol import FEED_SCHEMA_VERSION, Subscription

__all__ = ["FeedState"]

#: Idle domains kept beyond this many are forgotten, oldest first.
DEFAULT_MAX_DOMAINS: Final = 1024


def _who(e: TraceEvent) -> dict[str, Any]:
    return {"id": e.job_id, "job": e.job, "owner": e.owner}


def _domain_json(state: TracedDomain) -> dict[str, Any]:
    """One domain of a snapshot (fresh dicts: a snapshot never changes after)."""
    ajob = state.async_job
    async_job = interruptible = barrier = None
    if ajob is not None:
        async_job = {
            **_who(ajob.begin),
            "since": ajob.started,
            "phase": ajob.phase,
            "phase_since": ajob.phase_since,
            "allowed": sorted(ajob.allowed),
            "progress": ajob.progress,
            "abort_requested": ajob.abort_requested,
            "destroy_requested": ajob.destroy_requested,
        }
        if ajob.section is not None:
            interruptible = {"since": ajob.section.since}
        if ajob.barrier is not None:
            barrier = {"since": ajob.barrier.since, "pending": list(ajob.barrier.reported)}
    last = state.completed_async_job
    last_async = None
    if last is not None and last.end is not None:
        last_async = {
            **_who(last.begin),
            "t": last.end.time,
            "outcome": last.outcome,
            "error": last.error,
        }
    last_barrier = state.last_barrier
    monitor = state.monitor
    entered, command = monitor.entered, monitor.command
    return {
        "name": state.name,
        "async_job": async_job,
        "interruptible": interruptible,
        "barrier": barrier,
        "last_barrier": None
        if last_barrier is None
        else {"t": last_barrier.time, "waited": last_barrier.detail.get("waited")},
        "last_async": last_async,
        "regular_jobs": [
            {**_who(j.begin), "since": j.started, "in_section": j.in_section}
            for j in state.regular_jobs
        ],
        "waiters": [{**_who(w.wait), "since": w.since, "async": w.is_async} for w in state.waiters],
        "monitor": None if entered is None else {**_who(entered), "since": entered.time},
        "command": None
        if command is None
        else {
            "command": command.detail.get("command"),
            "id": command.job_id,
            "since": command.time,
        },
    }


@final
class FeedState:
    """Per-domain job state (:class:`jobctl.TracedDomain`), kept current by :meth:`fold`.

    :meth:`fold` is cheap and never raises on well-formed events; it keeps at
    most ``max_domains`` domains once idle ones can be forgotten (busy ones are
    always kept). ``seq`` is the last event folded in.
    """

    __slots__ = ("_domains", "_max_domains", "seq")

    def __init__(self, *, max_domains: int = DEFAULT_MAX_DOMAINS) -> None:
        if max_domains < 1:
            raise ValueError(f"max_domains must be at least 1, not {max_domains!r}")
        self._max_domains = max_domains
        # Ordered by last activity, oldest first.
        self._domains: dict[str, TracedDomain] = {}
        self.seq = 0

    def __len__(self) -> int:
        return len(self._domains)

    def names(self) -> list[str]:
        """The domains known now, by name."""
        return sorted(self._domains)

    def fold(self, event: TraceEvent) -> None:
        """Apply one trace event."""
        self.seq = max(self.seq, event.seq)
        domains = self._domains
        state = domains.pop(event.domain, None)
        new = state is None
        if state is None:
            state = TracedDomain(event.domain)
        domains[event.domain] = fold_event(state, event)
        if new and len(domains) > self._max_domains:
            self._forget_idle()

    def _forget_idle(self) -> None:
        excess = len(self._domains) - self._max_domains
        for name in [n for n, s in self._domains.items() if s.idle][:excess]:
            del self._domains[name]

    def snapshot(self, now: float, subscription: Subscription) -> dict[str, Any]:
        """The ``snapshot`` message for a client with ``subscription``."""
        return {
            "v": FEED_SCHEMA_VERSION,
            "type": "snapshot",
            "seq": self.seq,
            "t": now,
            "subscription": subscription.to_json(),
            "domains": [
                _domain_json(state)
                for name, state in sorted(self._domains.items())
                if subscription.wants_domain(name)
            ],
        }
