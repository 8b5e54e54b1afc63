"""The feed's state model: what each domain is doing now, folded from the trace.

A client that connects late gets this as its ``snapshot``, then the live
events; together they tell it everything the timeline draws from that moment.
"""

from __future__ import annotations

from typing import Any, Final, final

from jobctl import TraceEvent, TraceKind

from ._protocol import FEED_SCHEMA_VERSION, Subscription

__all__ = ["FeedState"]

#: Idle domains kept beyond this many are forgotten, oldest first.
DEFAULT_MAX_DOMAINS: Final = 1024


def _who(e: TraceEvent) -> dict[str, Any]:
    return {"id": e.job_id, "job": e.job, "owner": e.owner}


@final
class _DomainState:
    """One domain's current state; records are small dicts, replaced (not
    mutated) once handed out in a snapshot."""

    __slots__ = (
        "async_job",
        "barrier",
        "command",
        "interruptible",
        "last_async",
        "last_barrier",
        "monitor",
        "name",
        "regular",
        "waiters",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.async_job: dict[str, Any] | None = None
        self.interruptible: dict[str, Any] | None = None
        self.barrier: dict[str, Any] | None = None
        self.last_barrier: dict[str, Any] | None = None
        self.last_async: dict[str, Any] | None = None
        self.regular: dict[int | None, dict[str, Any]] = {}
        self.waiters: dict[int | None, dict[str, Any]] = {}
        self.monitor: dict[str, Any] | None = None
        self.command: dict[str, Any] | None = None

    @property
    def idle(self) -> bool:
        return not (self.async_job or self.regular or self.waiters or self.monitor)

    def to_json(self) -> dict[str, Any]:
        async_job = self.async_job
        return {
            "name": self.name,
            "async_job": None if async_job is None else dict(async_job),
            "interruptible": self.interruptible,
            "barrier": self.barrier,
            "last_barrier": self.last_barrier,
            "last_async": self.last_async,
            "regular_jobs": list(self.regular.values()),
            "waiters": list(self.waiters.values()),
            "monitor": self.monitor,
            "command": self.command,
        }

    def fold(self, e: TraceEvent) -> None:
        kind, t, detail = e.kind, e.time, e.detail
        if kind is TraceKind.JOB_WAIT:
            self.waiters[e.job_id] = {**_who(e), "since": t, "async": bool(detail.get("async"))}
        elif kind is TraceKind.JOB_WAIT_FAILED:
            self.waiters.pop(e.job_id, None)
        elif kind is TraceKind.JOB_BEGIN:
            self.waiters.pop(e.job_id, None)
            in_section = bool(detail.get("in_section"))
            self.regular[e.job_id] = {**_who(e), "since": t, "in_section": in_section}
        elif kind is TraceKind.JOB_END:
            self.regular.pop(e.job_id, None)
        elif kind is TraceKind.ASYNC_BEGIN:
            self.waiters.pop(e.job_id, None)
            self.async_job = {
                **_who(e),
                "since": t,
                "phase": None,
                "phase_since": t,
                "allowed": detail.get("allowed"),
                "progress": None,
                "abort_requested": None,
                "destroy_requested": False,
            }
            self.interruptible = None
        elif kind is TraceKind.ASYNC_END:
            outcome = {"outcome": detail.get("outcome"), "error": detail.get("error")}
            self.last_async = {**_who(e), "t": t, **outcome}
            self.async_job = self.interruptible = self.barrier = None
        elif kind is TraceKind.ASYNC_PHASE:
            self._update_async(phase=detail.get("phase"), phase_since=t)
        elif kind is TraceKind.ASYNC_ALLOWED:
            self._update_async(allowed=detail.get("allowed"))
        elif kind is TraceKind.ASYNC_PROGRESS:
            self._update_async(progress=detail.get("progress"))
        elif kind is TraceKind.ABORT_REQUEST:
            self._update_async(abort_requested=detail.get("reason"))
        elif kind is TraceKind.DESTROY_REQUEST:
            self._update_async(destroy_requested=True)
        elif kind is TraceKind.GATE_OPEN:
            self.interruptible = {"since": t}
        elif kind is TraceKind.GATE_CLOSE:
            self.interruptible = None
        elif kind is TraceKind.BARRIER_START:
            self.barrier = {"since": t, "pending": list(detail.get("pending", ()))}
        elif kind is TraceKind.BARRIER_END:
            self.barrier = None
            self.last_barrier = {"t": t, "waited": detail.get("waited")}
        elif kind is TraceKind.MONITOR_ENTER:
            self.monitor = {**_who(e), "since": t}
            self.command = None
        elif kind is TraceKind.MONITOR_EXIT:
            if self.monitor is not None and self.monitor["id"] == e.job_id:
                self.monitor = self.command = None
        elif kind is TraceKind.COMMAND_SENT:
            self.command = {"command": detail.get("command"), "id": e.job_id, "since": t}
        elif kind is TraceKind.COMMAND_ANSWERED:
            self.command = None

    def _update_async(self, **changes: Any) -> None:
        if self.async_job is not None:
            self.async_job = {**self.async_job, **changes}


@final
class FeedState:
    """Per-domain job state, kept current by :meth:`fold`.

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
        self._domains: dict[str, _DomainState] = {}
        self.seq = 0

    def __len__(self) -> int:
        return len(self._domains)

    def fold(self, event: TraceEvent) -> None:
        """Apply one trace event."""
        self.seq = max(self.seq, event.seq)
        domains = self._domains
        state = domains.pop(event.domain, None)
        new = state is None
        if state is None:
            state = _DomainState(event.domain)
        domains[event.domain] = state
        state.fold(event)
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
                state.to_json()
                for name, state in sorted(self._domains.items())
                if subscription.wants_domain(name)
            ],
        }
