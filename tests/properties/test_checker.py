"""The invariant checker on hand-written traces: each invariant fires on a
trace that breaks it, and stays quiet on the legal look-alike."""

from __future__ import annotations

import pytest

from jobctl import TraceKind
from jobctl.testing import InvariantChecker, InvariantViolation, check_invariants

from ._traces import TraceBuilder

M = "MIGRATION_OUT"


def violated(b: TraceBuilder, *, max_wait: float | None = None, complete: bool = True) -> set[int]:
    try:
        check_invariants(b.events, max_wait=max_wait, complete=complete)
    except InvariantViolation as exc:
        return set(exc.invariants)
    return set()


def migration_with_query() -> TraceBuilder:
    """A legal trace: a QUERY runs inside the migration's section."""
    b = TraceBuilder()
    b.async_begin(1).command(1, M, "migrate")
    b.at(1).add(TraceKind.GATE_OPEN, 1, M)
    b.begin(2, "QUERY", in_section=True).command(2, "QUERY")
    b.at(2).end(2, "QUERY")
    b.add(TraceKind.GATE_CLOSE, 1, M)
    b.command(1, M, "query-migrate").async_end(1)
    return b


def test_a_legal_trace_passes() -> None:
    assert violated(migration_with_query()) == set()


# -- 1: the monitor ------------------------------------------------------------


def test_two_holders_break_1() -> None:
    b = TraceBuilder().begin(1, "QUERY").begin(2, "QUERY")
    b.add(TraceKind.MONITOR_ENTER, 1, "QUERY").add(TraceKind.MONITOR_ENTER, 2, "QUERY")
    assert 1 in violated(b, complete=False)


def test_a_second_command_in_flight_breaks_1() -> None:
    b = TraceBuilder().begin(1, "QUERY").add(TraceKind.MONITOR_ENTER, 1, "QUERY")
    b.add(TraceKind.COMMAND_SENT, 1, "QUERY", command="a")
    b.add(TraceKind.COMMAND_SENT, 1, "QUERY", command="b")
    assert 1 in violated(b, complete=False)


def test_a_command_without_the_monitor_breaks_1() -> None:
    b = TraceBuilder().begin(1, "QUERY").add(TraceKind.COMMAND_SENT, 1, "QUERY", command="a")
    assert violated(b, complete=False) == {1}


def test_leaving_the_monitor_before_the_reply_breaks_1() -> None:
    b = TraceBuilder().begin(1, "QUERY").add(TraceKind.MONITOR_ENTER, 1, "QUERY")
    b.add(TraceKind.COMMAND_SENT, 1, "QUERY", command="a")
    b.add(TraceKind.MONITOR_EXIT, 1, "QUERY")
    assert 1 in violated(b, complete=False)


# -- 2: no regular job beside the async job outside its sections -----------------


def test_async_begin_beside_a_regular_job_breaks_2() -> None:
    b = TraceBuilder().begin(1, "QUERY").async_begin(2)
    assert 2 in violated(b, complete=False)


def test_async_monitor_inside_its_section_breaks_2() -> None:
    b = TraceBuilder().async_begin(1).add(TraceKind.GATE_OPEN, 1, M)
    b.add(TraceKind.MONITOR_ENTER, 1, M)
    assert violated(b, complete=False) == {2}


# -- 3: begin inside a section, of an allowed kind -------------------------------


def test_begin_outside_a_section_breaks_3() -> None:
    b = TraceBuilder().async_begin(1).begin(2, "QUERY")
    assert 3 in violated(b, complete=False)


def test_begin_of_a_kind_not_allowed_breaks_3() -> None:
    b = TraceBuilder().async_begin(1, allowed=("QUERY",)).add(TraceKind.GATE_OPEN, 1, M)
    b.begin(2, "MODIFY", in_section=True)
    assert violated(b, complete=False) == {3, 12}  # the model would not begin it either


def test_destroy_is_always_allowed() -> None:
    b = TraceBuilder().async_begin(1, allowed=()).add(TraceKind.GATE_OPEN, 1, M)
    b.add(TraceKind.DESTROY_REQUEST, 1, M).begin(2, "DESTROY", in_section=True)
    assert violated(b, complete=False) == set()


def test_a_wrong_in_section_flag_breaks_3() -> None:
    b = TraceBuilder().begin(1, "QUERY", in_section=True)
    assert violated(b, complete=False) == {3}


def test_a_mask_change_applies_to_later_begins() -> None:
    b = TraceBuilder().async_begin(1, allowed=("QUERY",)).add(TraceKind.GATE_OPEN, 1, M)
    b.add(TraceKind.ASYNC_ALLOWED, 1, M, allowed=["DESTROY", "MODIFY"])
    b.begin(2, "MODIFY", in_section=True)
    assert violated(b, complete=False) == set()


# -- 4: the barrier --------------------------------------------------------------


def section_left_with_query_running() -> TraceBuilder:
    b = TraceBuilder().async_begin(1).add(TraceKind.GATE_OPEN, 1, M)
    b.begin(2, "QUERY", in_section=True)
    b.add(TraceKind.GATE_CLOSE, 1, M).add(TraceKind.BARRIER_START, 1, M, pending=[2])
    return b


def test_waiting_at_the_barrier_passes() -> None:
    b = section_left_with_query_running()
    b.at(1).end(2, "QUERY").add(TraceKind.BARRIER_END, 1, M, waited=1.0)
    b.command(1, M).async_end(1)
    assert violated(b) == set()


def test_acting_before_the_barrier_ends_breaks_4() -> None:
    b = section_left_with_query_running().command(1, M)
    assert 4 in violated(b, complete=False)


def test_ending_without_the_barrier_breaks_4() -> None:
    b = section_left_with_query_running().async_end(1, outcome="ok")
    assert 4 in violated(b, complete=False)


def test_a_cancelled_async_job_may_abandon_its_barrier() -> None:
    b = section_left_with_query_running().async_end(1, outcome="cancelled")
    b.add(TraceKind.BARRIER_END, 1, M, waited=0.0, abandoned=[2]).end(2, "QUERY")
    assert violated(b) == set()


def test_a_wrong_barrier_report_breaks_4() -> None:
    b = TraceBuilder().async_begin(1).add(TraceKind.GATE_OPEN, 1, M)
    b.begin(2, "QUERY", in_section=True).end(2, "QUERY")
    b.add(TraceKind.GATE_CLOSE, 1, M).add(TraceKind.BARRIER_START, 1, M, pending=[2])
    assert violated(b, complete=False) == {4}


def test_a_foreign_command_inside_a_stretch_breaks_4() -> None:
    b = section_left_with_query_running()
    b.add(TraceKind.MONITOR_ENTER, 1, M).add(TraceKind.COMMAND_SENT, 1, M, command="a")
    b.add(TraceKind.COMMAND_ANSWERED, 1, M, command="a", outcome="ok")
    b.add(TraceKind.MONITOR_EXIT, 1, M)
    b.command(2, "QUERY")
    b.add(TraceKind.MONITOR_ENTER, 1, M).add(TraceKind.COMMAND_SENT, 1, M, command="b")
    checker = InvariantChecker()
    checker.feed_all(b.events)
    assert any("landed between two commands" in v.message for v in checker.violations)


# -- 5: compatibility ----------------------------------------------------------


def test_queries_share() -> None:
    b = TraceBuilder().begin(1, "QUERY").begin(2, "QUERY").end(1, "QUERY").end(2, "QUERY")
    assert violated(b) == set()


@pytest.mark.parametrize(("first", "second"), [("QUERY", "MODIFY"), ("MODIFY", "QUERY")])
def test_exclusive_jobs_do_not_share_5(first: str, second: str) -> None:
    b = TraceBuilder().begin(1, first).begin(2, second)
    assert violated(b, complete=False) == {5, 12}


def test_two_async_jobs_break_5() -> None:
    b = TraceBuilder().async_begin(1).async_begin(2, "SAVE")
    assert 5 in violated(b, complete=False)


# -- 6: liveness and FIFO ------------------------------------------------------


def test_barging_past_a_waiter_breaks_6() -> None:
    b = TraceBuilder().begin(1, "QUERY").wait(2, "MODIFY").wait(3, "QUERY")
    b.add(TraceKind.JOB_BEGIN, 3, "QUERY", in_section=False, waited=True)
    assert violated(b, complete=False) == {6, 12}


def test_overtaking_a_parked_waiter_is_fair() -> None:
    b = TraceBuilder().async_begin(1, allowed=("QUERY",)).wait(2, "MODIFY").wait(3, "QUERY")
    b.add(TraceKind.GATE_OPEN, 1, M)
    b.add(TraceKind.JOB_BEGIN, 3, "QUERY", in_section=True, waited=True)
    assert violated(b, complete=False) == set()


def test_destroy_goes_first() -> None:
    b = TraceBuilder().begin(1, "MODIFY").wait(2, "QUERY").wait(3, "DESTROY")
    b.end(1, "MODIFY").add(TraceKind.JOB_BEGIN, 3, "DESTROY", in_section=False, waited=True)
    assert violated(b, complete=False) == set()


def test_waiting_longer_than_max_wait_breaks_6() -> None:
    b = TraceBuilder().begin(1, "MODIFY").wait(2, "QUERY", timeout=5.0)
    b.at(5).add(TraceKind.JOB_WAIT_FAILED, 2, "QUERY", result="timeout").end(1, "MODIFY")
    assert violated(b, max_wait=4) == {6}
    assert violated(b, max_wait=5) == set()


def test_an_unresolved_wait_breaks_6_at_the_end() -> None:
    b = TraceBuilder().begin(1, "MODIFY").wait(2, "QUERY").end(1, "MODIFY")
    # ... and the model would have granted it when MODIFY ended (12).
    assert violated(b) == {6, 12}
    assert violated(b, complete=False) == set()


# -- 7: idle at the end --------------------------------------------------------


def test_leftovers_break_7_at_the_end() -> None:
    b = TraceBuilder().async_begin(1).add(TraceKind.MONITOR_ENTER, 1, M)
    b.add(TraceKind.COMMAND_SENT, 1, M, command="migrate")
    with pytest.raises(InvariantViolation) as info:
        check_invariants(b.events)
    assert info.value.invariants == {7}
    assert len(info.value.violations) == 3  # the job, the monitor, the command


def test_ending_with_the_monitor_held_breaks_7() -> None:
    b = TraceBuilder().begin(1, "QUERY").add(TraceKind.MONITOR_ENTER, 1, "QUERY").end(1, "QUERY")
    assert 7 in violated(b)


# -- readability and the model -----------------------------------------------


def test_a_violation_reads_well() -> None:
    b = section_left_with_query_running().command(1, M)
    with pytest.raises(InvariantViolation) as info:
        check_invariants(b.events, complete=False)
    text = str(info.value)
    assert text.startswith("invariant 4 (the barrier")
    assert "on domain 'vm'" in text
    assert "QUERY#2" in text and "MIGRATION_OUT#1" in text
    assert "seq=5" in text  # the gate.close event is shown
    assert info.value.invariant == 4


def test_the_checker_only_watches_its_domains() -> None:
    b = TraceBuilder("other").begin(1, "QUERY").begin(2, "MODIFY")
    checker = InvariantChecker(domains=["vm"])
    checker.feed_all(b.events)
    checker.finish()
    assert checker.violations == ()


def test_the_model_follows_the_trace() -> None:
    b = section_left_with_query_running()
    checker = InvariantChecker()
    checker.feed_all(b.events)
    model = checker.model("vm")
    assert model.regular_jobs == {2}
    assert model.async_job == 1
    assert not model.interruptible
    assert model.barrier_pending == {2}
    assert not model.idle
    assert checker.model("never-seen").idle


def test_a_malformed_event_is_reported_not_raised() -> None:
    b = TraceBuilder().add(TraceKind.JOB_BEGIN, None, None, in_section=False)
    checker = InvariantChecker()
    checker.feed_all(b.events)
    (violation,) = checker.violations
    assert violation.message == "an event without a job id"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_wait"):
        InvariantChecker(max_wait=-1)
    with pytest.raises(ValueError, match="at least one violation"):
        InvariantViolation([])


# -- 8 to 12: the reference model's decisions ---------------------------------


def destroy_in_a_section() -> TraceBuilder:
    b = TraceBuilder().async_begin(1).add(TraceKind.GATE_OPEN, 1, M)
    b.add(TraceKind.DESTROY_REQUEST, 1, M).add(TraceKind.DESTROY_DELIVERED, 1, M)
    return b.begin(2, "DESTROY", in_section=True)


def test_a_delivered_destroy_that_ends_the_job_at_once_passes() -> None:
    b = destroy_in_a_section().add(TraceKind.GATE_CLOSE, 1, M)
    b.add(TraceKind.BARRIER_START, 1, M, pending=[2])
    b.async_end(1, outcome="destroyed").add(TraceKind.BARRIER_END, 1, M, waited=0.0)
    b.end(2, "DESTROY")
    assert violated(b) == set()


def test_a_destroy_that_does_not_preempt_breaks_8() -> None:
    b = TraceBuilder().async_begin(1).add(TraceKind.GATE_OPEN, 1, M)
    b.begin(2, "DESTROY", in_section=True)
    assert violated(b, complete=False) == {8}


def test_an_async_job_running_on_after_destroy_breaks_8() -> None:
    b = destroy_in_a_section().at(1.0).add(TraceKind.GATE_CLOSE, 1, M)
    assert violated(b, complete=False) == {8}


def test_an_async_job_acting_after_destroy_breaks_8() -> None:
    b = destroy_in_a_section().end(2, "DESTROY").add(TraceKind.GATE_CLOSE, 1, M)
    b.add(TraceKind.ASYNC_PHASE, 1, M, phase="cleanup")  # naming a clean-up phase is fine
    assert violated(b, complete=False) == set()
    b.add(TraceKind.MONITOR_ENTER, 1, M, waited=False)
    b.add(TraceKind.COMMAND_SENT, 1, M, command="migrate_cancel")
    assert violated(b, complete=False) == {8}


def test_a_late_delivery_breaks_8() -> None:
    b = TraceBuilder().async_begin(1).add(TraceKind.GATE_OPEN, 1, M)
    b.add(TraceKind.DESTROY_REQUEST, 1, M).begin(2, "DESTROY", in_section=True)
    b.at(0.5).add(TraceKind.DESTROY_DELIVERED, 1, M)
    assert 8 in violated(b, complete=False)


def test_a_destroyed_end_without_delivery_breaks_8() -> None:
    b = TraceBuilder().async_begin(1).add(TraceKind.GATE_OPEN, 1, M)
    b.add(TraceKind.DESTROY_REQUEST, 1, M).begin(2, "DESTROY", in_section=True)
    b.end(2, "DESTROY").add(TraceKind.GATE_CLOSE, 1, M).async_end(1, outcome="destroyed")
    assert violated(b) == {8}


def test_an_aborted_end_needs_a_delivered_abort_8() -> None:
    def trace(delivered: bool) -> TraceBuilder:
        b = TraceBuilder().async_begin(1, allowed=("ABORT",)).add(TraceKind.GATE_OPEN, 1, M)
        b.add(TraceKind.ABORT_REQUEST, 1, M, reason="user").begin(2, "ABORT", in_section=True)
        if delivered:
            b.add(TraceKind.ABORT_DELIVERED, 1, M, reason="user")
        else:
            b.add(TraceKind.ABORT_FAILED, 1, M, reason="user", error="ScriptedReplyError: no")
        b.end(2, "ABORT").add(TraceKind.GATE_CLOSE, 1, M)
        return b.async_end(1, outcome="aborted")

    assert violated(trace(True)) == set()
    assert violated(trace(False)) == {8}


def monitor_waiters() -> TraceBuilder:
    b = TraceBuilder().begin(1, "QUERY").begin(2, "QUERY").begin(3, "QUERY")
    b.add(TraceKind.MONITOR_ENTER, 1, "QUERY", waited=False)
    b.add(TraceKind.MONITOR_WAIT, 2, "QUERY", position=0)
    b.add(TraceKind.MONITOR_WAIT, 3, "QUERY", position=1)
    return b.add(TraceKind.MONITOR_EXIT, 1, "QUERY")


def test_the_monitor_in_arrival_order_passes() -> None:
    b = monitor_waiters().add(TraceKind.MONITOR_ENTER, 2, "QUERY", waited=True)
    assert violated(b, complete=False) == set()


def test_the_monitor_out_of_order_breaks_9() -> None:
    b = monitor_waiters().add(TraceKind.MONITOR_ENTER, 3, "QUERY", waited=True)
    assert violated(b, complete=False) == {9}


def test_a_monitor_never_handed_on_breaks_9() -> None:
    b = monitor_waiters().end(1, "QUERY")
    assert violated(b, complete=False) == {9}


def test_waiting_for_a_free_monitor_breaks_9() -> None:
    b = TraceBuilder().begin(1, "QUERY").add(TraceKind.MONITOR_WAIT, 1, "QUERY", position=0)
    assert violated(b, complete=False) == {9}


def test_a_timeout_on_time_passes_and_early_or_late_breaks_10() -> None:
    def trace(at: float) -> TraceBuilder:
        b = TraceBuilder().begin(1, "MODIFY").wait(2, "QUERY", timeout=2.0)
        return b.at(at).add(TraceKind.JOB_WAIT_FAILED, 2, "QUERY", result="timeout")

    assert violated(trace(2.0), complete=False) == set()
    assert violated(trace(1.5), complete=False) == {10}
    assert violated(trace(3.0), complete=False) == {10}


def test_a_wait_past_its_deadline_breaks_10_at_the_next_event() -> None:
    b = TraceBuilder().begin(1, "MODIFY").wait(2, "QUERY", timeout=2.0)
    b.at(2.5).add(TraceKind.JOB_END, 1, "MODIFY", outcome="ok")
    assert 10 in violated(b, complete=False)


def full_queue(max_queued: int) -> TraceBuilder:
    b = TraceBuilder().begin(1, "MODIFY")
    b.add(
        TraceKind.JOB_WAIT,
        2,
        "QUERY",
        position=0,
        timeout=None,
        counted=True,
        queued=0,
        max_queued=max_queued,
        **{"async": False},
    )
    return b.add(
        TraceKind.JOB_REFUSED,
        3,
        "QUERY",
        reason="queue_full",
        queued=1,
        max_queued=max_queued,
        **{"async": False},
    )


def test_refusing_at_max_queued_passes_and_below_it_breaks_11() -> None:
    assert violated(full_queue(1), complete=False) == set()
    assert violated(full_queue(2), complete=False) == {11}


def test_statistics_that_disagree_with_the_trace_break_11() -> None:
    import jobctl

    b = TraceBuilder().begin(1, "QUERY").end(1, "QUERY")
    checker = InvariantChecker()
    checker.feed_all(b.events)
    stats = jobctl.Domain("vm").statistics()
    checker.check_statistics("vm", stats)  # begins=0, the trace says 1
    (violation,) = checker.violations
    assert violation.invariant == 11
    assert "begins=0 (the trace says 1)" in violation.message


def test_refusing_a_request_that_could_begin_breaks_12() -> None:
    b = TraceBuilder().add(TraceKind.JOB_REFUSED, 1, "QUERY", reason="busy", **{"async": False})
    assert violated(b, complete=False) == {12}


def test_a_lost_wakeup_breaks_12() -> None:
    b = TraceBuilder().begin(1, "MODIFY").wait(2, "QUERY").end(1, "MODIFY")
    b.begin(3, "MODIFY")  # the core went on without granting QUERY#2
    assert 12 in violated(b, complete=False)


def test_a_granted_waiter_is_the_one_the_model_grants() -> None:
    b = TraceBuilder().begin(1, "MODIFY").wait(2, "QUERY").wait(3, "QUERY").end(1, "MODIFY")
    b.add(TraceKind.JOB_BEGIN, 2, "QUERY", in_section=False, waited=True)
    b.add(TraceKind.JOB_BEGIN, 3, "QUERY", in_section=False, waited=True)
    assert violated(b, complete=False) == set()


def test_a_raising_listeners_event_is_not_a_violation() -> None:
    b = TraceBuilder().add(TraceKind.LISTENER_FAILED, None, None, error="RuntimeError: x")
    assert violated(b) == set()


# -- 13: the trace schema's closed vocabularies -----------------------------------


def test_a_legal_end_of_each_kind_passes_13() -> None:
    b = TraceBuilder().begin(1, "QUERY")
    b.add(TraceKind.JOB_END, 1, "QUERY", outcome="cancelled")
    assert violated(b) == set()


@pytest.mark.parametrize(
    ("outcome", "async_outcome"),
    [("CANCELLED", "ok"), (None, "ok"), ("ok", "XXdestroyedXX"), ("ok", None)],
)
def test_an_outcome_outside_the_schema_breaks_13(outcome: str | None, async_outcome: str) -> None:
    b = TraceBuilder().begin(1, "QUERY").add(TraceKind.JOB_END, 1, "QUERY", outcome=outcome)
    b.async_begin(2).add(TraceKind.ASYNC_END, 2, "MIGRATION_OUT", outcome=async_outcome, error=None)
    assert 13 in violated(b)


def test_a_wait_result_outside_the_schema_breaks_13() -> None:
    b = TraceBuilder().begin(1, "MODIFY").wait(2, "MODIFY", timeout=1.0)
    b.at(0.5).add(TraceKind.JOB_WAIT_FAILED, 2, "MODIFY", result="gone", waited=0.5)
    b.end(1, "MODIFY")
    assert violated(b) == {13}
