"""The state model folded from trace events (what a late client's snapshot shows)."""

from __future__ import annotations

from typing import Any

import pytest

from jobctl import TraceEvent, TraceKind
from jobctl.feed import FeedState, Subscription

_seq = iter(range(1, 1_000_000))


def ev(
    domain: str,
    kind: TraceKind,
    job_id: int | None = None,
    job: str | None = None,
    t: float = 0.0,
    **detail: Any,
) -> TraceEvent:
    return TraceEvent(next(_seq), t, domain, kind, job_id, job, "owner" if job else None, detail)


def domain_state(state: FeedState, name: str) -> dict[str, Any]:
    (found,) = [d for d in state.snapshot(0.0, Subscription())["domains"] if d["name"] == name]
    assert isinstance(found, dict)
    return found


def test_an_async_job_with_a_window_a_query_and_a_barrier() -> None:
    state = FeedState()
    for event in [
        ev("vm", TraceKind.ASYNC_BEGIN, 1, "MIGRATION_OUT", 1.0, allowed=["QUERY"], waited=False),
        ev("vm", TraceKind.ASYNC_PHASE, 1, "MIGRATION_OUT", 2.0, phase="perform"),
        ev("vm", TraceKind.ASYNC_PROGRESS, 1, "MIGRATION_OUT", 2.5, progress={"done": 1}),
        ev("vm", TraceKind.GATE_OPEN, 1, "MIGRATION_OUT", 3.0),
        ev("vm", TraceKind.JOB_WAIT, 2, "QUERY", 3.5, position=0),
        ev("vm", TraceKind.JOB_BEGIN, 2, "QUERY", 4.0, in_section=True, waited=True),
        ev("vm", TraceKind.MONITOR_ENTER, 2, "QUERY", 4.1),
        ev("vm", TraceKind.COMMAND_SENT, 2, "QUERY", 4.2, command="query-stats"),
        ev("vm", TraceKind.GATE_CLOSE, 1, "MIGRATION_OUT", 5.0),
        ev("vm", TraceKind.BARRIER_START, 1, "MIGRATION_OUT", 5.0, pending=[2]),
    ]:
        state.fold(event)
    vm = domain_state(state, "vm")
    assert vm["async_job"] == {
        "id": 1,
        "job": "MIGRATION_OUT",
        "owner": "owner",
        "since": 1.0,
        "phase": "perform",
        "phase_since": 2.0,
        "allowed": ["QUERY"],
        "progress": {"done": 1},
        "abort_requested": None,
        "destroy_requested": False,
    }
    assert vm["interruptible"] is None
    assert vm["barrier"] == {"since": 5.0, "pending": [2]}
    assert vm["regular_jobs"] == [
        {"id": 2, "job": "QUERY", "owner": "owner", "since": 4.0, "in_section": True}
    ]
    assert vm["waiters"] == []
    assert vm["monitor"] == {"id": 2, "job": "QUERY", "owner": "owner", "since": 4.1}
    assert vm["command"] == {"command": "query-stats", "id": 2, "since": 4.2}

    for event in [
        ev("vm", TraceKind.COMMAND_ANSWERED, 2, "QUERY", 6.0, command="query-stats", outcome="ok"),
        ev("vm", TraceKind.MONITOR_EXIT, 2, "QUERY", 6.1),
        ev("vm", TraceKind.JOB_END, 2, "QUERY", 6.2, outcome="ok"),
        ev("vm", TraceKind.BARRIER_END, 1, "MIGRATION_OUT", 6.2, waited=1.2),
        ev("vm", TraceKind.ABORT_REQUEST, 1, "MIGRATION_OUT", 7.0, reason="operator"),
        ev("vm", TraceKind.ASYNC_END, 1, "MIGRATION_OUT", 8.0, outcome="aborted", error=None),
    ]:
        state.fold(event)
    vm = domain_state(state, "vm")
    assert vm["async_job"] is vm["barrier"] is vm["monitor"] is vm["command"] is None
    assert vm["regular_jobs"] == []
    assert vm["last_barrier"] == {"t": 6.2, "waited": 1.2}
    assert vm["last_async"] == {
        "id": 1,
        "job": "MIGRATION_OUT",
        "owner": "owner",
        "t": 8.0,
        "outcome": "aborted",
        "error": None,
    }
    assert state.seq == event.seq


def test_snapshots_do_not_change_after_they_are_taken() -> None:
    state = FeedState()
    state.fold(ev("vm", TraceKind.ASYNC_BEGIN, 1, "SAVE"))
    before = state.snapshot(0.0, Subscription())
    state.fold(ev("vm", TraceKind.ASYNC_PHASE, 1, "SAVE", phase="write"))
    assert before["domains"][0]["async_job"]["phase"] is None


def test_a_monitor_exit_by_another_job_and_stray_ends_are_ignored() -> None:
    state = FeedState()
    state.fold(ev("vm", TraceKind.MONITOR_ENTER, 1, "QUERY"))
    state.fold(ev("vm", TraceKind.MONITOR_EXIT, 2, "QUERY"))
    state.fold(ev("vm", TraceKind.JOB_END, 9, "QUERY", outcome="ok"))
    state.fold(ev("vm", TraceKind.ASYNC_PHASE, 9, "SAVE", phase="x"))  # no async job
    vm = domain_state(state, "vm")
    assert vm["monitor"]["id"] == 1
    assert vm["async_job"] is None


def test_failed_waits_leave_the_queue() -> None:
    state = FeedState()
    state.fold(ev("vm", TraceKind.JOB_WAIT, 1, "MODIFY", position=0))
    state.fold(ev("vm", TraceKind.JOB_WAIT, 2, "QUERY", position=1))
    state.fold(ev("vm", TraceKind.JOB_WAIT_FAILED, 1, "MODIFY", result="timeout"))
    assert [w["id"] for w in domain_state(state, "vm")["waiters"]] == [2]


def test_idle_domains_are_forgotten_oldest_first_busy_ones_kept() -> None:
    state = FeedState(max_domains=2)
    state.fold(ev("busy", TraceKind.JOB_BEGIN, 1, "QUERY"))
    state.fold(ev("idle-1", TraceKind.GATE_OPEN))
    state.fold(ev("idle-2", TraceKind.GATE_OPEN))
    assert len(state) == 2
    names = [d["name"] for d in state.snapshot(0.0, Subscription())["domains"]]
    assert names == ["busy", "idle-2"]
    state.fold(ev("busy-2", TraceKind.JOB_BEGIN, 2, "QUERY"))
    state.fold(ev("busy-3", TraceKind.JOB_BEGIN, 3, "QUERY"))
    assert len(state) == 3  # all busy: none may be forgotten


def test_snapshots_follow_the_subscription() -> None:
    state = FeedState()
    for name in ("a", "b", "c"):
        state.fold(ev(name, TraceKind.GATE_OPEN))
    snap = state.snapshot(1.5, Subscription(domains=frozenset({"c", "a"})))
    assert [d["name"] for d in snap["domains"]] == ["a", "c"]
    assert snap["t"] == 1.5
    assert snap["subscription"] == {"domains": ["a", "c"], "kinds": None}


def test_max_domains_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_domains"):
        FeedState(max_domains=0)
