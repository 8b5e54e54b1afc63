"""Hand-written traces for the checker's own tests."""

from __future__ import annotations

from typing import Any

from jobctl import TraceEvent, TraceKind


class TraceBuilder:
    """Builds a trace event by event: ``b.at(1.0).add(TraceKind.JOB_BEGIN, 3, "QUERY")``."""

    def __init__(self, domain: str = "vm") -> None:
        self.domain = domain
        self.events: list[TraceEvent] = []
        self.time = 0.0
        #: Waiters that count against max_queued (what job.wait reports).
        self.counted: set[int] = set()

    def at(self, time: float) -> TraceBuilder:
        self.time = time
        return self

    def add(
        self, kind: TraceKind, job_id: int | None = None, job: str | None = None, **detail: Any
    ) -> TraceBuilder:
        if kind in (TraceKind.JOB_BEGIN, TraceKind.JOB_WAIT_FAILED) and job_id is not None:
            self.counted.discard(job_id)
        self.events.append(
            TraceEvent(
                len(self.events) + 1,
                self.time,
                self.domain,
                kind,
                job_id,
                job,
                None if job is None else f"{job.lower()}{job_id}",
                detail,
            )
        )
        return self

    # shorthands for the common transitions

    def begin(self, job_id: int, job: str, in_section: bool = False) -> TraceBuilder:
        return self.add(TraceKind.JOB_BEGIN, job_id, job, in_section=in_section, waited=False)

    def end(self, job_id: int, job: str) -> TraceBuilder:
        return self.add(TraceKind.JOB_END, job_id, job, outcome="ok")

    def wait(
        self, job_id: int, job: str, is_async: bool = False, timeout: float | None = None
    ) -> TraceBuilder:
        counted = not is_async and job != "DESTROY"
        queued = len(self.counted)
        if counted:
            self.counted.add(job_id)
        return self.add(
            TraceKind.JOB_WAIT,
            job_id,
            job,
            position=0,
            timeout=timeout,
            counted=counted,
            queued=queued,
            max_queued=0,
            **{"async": is_async},
        )

    def async_begin(
        self, job_id: int, job: str = "MIGRATION_OUT", allowed: tuple[str, ...] = ("QUERY",)
    ) -> TraceBuilder:
        names = sorted({*allowed, "DESTROY"})
        return self.add(TraceKind.ASYNC_BEGIN, job_id, job, allowed=names, waited=False)

    def async_end(
        self, job_id: int, job: str = "MIGRATION_OUT", outcome: str = "ok"
    ) -> TraceBuilder:
        return self.add(TraceKind.ASYNC_END, job_id, job, outcome=outcome, error=None)

    def command(self, job_id: int, job: str, command: str = "query-status") -> TraceBuilder:
        self.add(TraceKind.MONITOR_ENTER, job_id, job)
        self.add(TraceKind.COMMAND_SENT, job_id, job, command=command)
        self.add(TraceKind.COMMAND_ANSWERED, job_id, job, command=command, outcome="ok")
        return self.add(TraceKind.MONITOR_EXIT, job_id, job)
