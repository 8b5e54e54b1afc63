"""SteppedRun: one trio run, driven a step at a time from synchronous code."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from jobctl.testing import SteppedRun, SteppedRunError


async def double_later(x: int) -> int:
    await trio.sleep(2)
    return 2 * x


def test_time_only_moves_during_calls() -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await trio.sleep(1)
            ticks.append(trio.current_time())

    with SteppedRun() as run:
        run.start_soon(ticker)
        run.advance(3.5)
        assert ticks == [1.0, 2.0, 3.0]
        assert run.current_time() == 3.5
        assert run.run(double_later, 21) == 42  # the ticker goes on meanwhile
        assert ticks == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert run.call(len, ticks) == 5
    assert run.closed


def test_a_request_error_is_raised_to_the_caller() -> None:
    async def fail() -> None:
        await trio.sleep(1)
        raise ValueError("boom")

    with SteppedRun() as run:
        with pytest.raises(ValueError, match="boom"):
            run.run(fail)
        assert run.run(double_later, 1) == 2  # the run goes on


def test_a_request_that_never_ends_hits_the_step_limit() -> None:
    with SteppedRun(step_limit=10) as run:
        with pytest.raises(trio.TooSlowError):
            run.run(trio.sleep_forever)
        assert run.current_time() == 10


def test_a_failing_background_task_ends_the_run() -> None:
    async def boom() -> None:
        await trio.sleep(1)
        raise KeyError("background")

    run = SteppedRun()
    run.start_soon(boom)
    with pytest.raises(SteppedRunError, match="failed") as info:
        run.advance(5)
    assert isinstance(info.value.__cause__, BaseExceptionGroup)
    assert run.closed
    with pytest.raises(SteppedRunError, match="closed"):
        run.advance(1)
    run.close()  # idempotent


def test_close_cancels_what_is_left() -> None:
    cancelled: list[bool] = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    run = SteppedRun()
    run.start_soon(forever)
    run.advance(1)
    run.close()
    assert cancelled == [True]


def test_runs_replay() -> None:
    def trace() -> list[str]:
        order: list[str] = []

        async def worker(name: str) -> None:
            for _ in range(3):
                order.append(name)
                await trio.lowlevel.checkpoint()

        with SteppedRun(seed=3) as run:
            for name in "abcd":
                run.start_soon(worker, name)
            run.advance(1)
        return order

    assert trace() == trace()


def test_bad_step_limit() -> None:
    with pytest.raises(ValueError, match="step_limit"):
        SteppedRun(step_limit=0)
