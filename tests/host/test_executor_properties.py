"""The executor's guarantees over random command mixes (virtual time)."""

from __future__ import annotations

import itertools
from collections import defaultdict

import anyio
from hypothesis import given
from hypothesis import strategies as st

from jobctl.host import (
    Command,
    CommandContext,
    CommandExecutor,
    Entity,
    ExecutionState,
    LockMode,
    Need,
    normalize_needs,
)

from ._support import Overlaps, run_virtual

ENTITIES = [Entity("e", str(n)) for n in range(4)]
SEQ = "<sequential>"

command_strategy = st.tuples(
    st.lists(st.builds(Need, st.sampled_from(ENTITIES), st.sampled_from(LockMode)), max_size=2),
    st.sampled_from(["a", "b"]),  # kind
    st.sampled_from([None, None, None, "g1", "g2", SEQ]),  # group
    st.integers(1, 5),  # duration
    st.sampled_from([False, False, False, False, True]),  # the command fails
)
mix_strategy = st.tuples(
    st.lists(command_strategy, min_size=1, max_size=14),
    st.integers(1, 4),  # workers
    st.sampled_from([None, 1, 2]),  # cap on kind "a"
    st.none() | st.lists(st.integers(0, 2), min_size=14, max_size=14),  # priorities
)


@given(mix_strategy)
def test_random_mixes_keep_every_guarantee(
    mix: tuple[
        list[tuple[list[Need], str, str | None, int, bool]], int, int | None, list[int] | None
    ],
) -> None:
    specs, workers, cap, priorities = mix
    overlaps = Overlaps()
    logs: dict[Entity, list[int]] = defaultdict(list)
    seen: dict[int, dict[Entity, int]] = {}
    spans: dict[int, tuple[float, float]] = {}
    running_kinds: dict[str, int] = defaultdict(int)
    peak_kind_a = 0

    def body(index: int, duration: int, fails: bool) -> Command[int]:
        async def run(ctx: CommandContext) -> int:
            nonlocal peak_kind_a
            kind = ctx.command.kind
            running_kinds[kind] += 1
            peak_kind_a = max(peak_kind_a, running_kinds["a"])
            overlaps.enter(str(index), ctx.grant.needs)
            start = anyio.current_time()
            seen[index] = {need.entity: len(logs[need.entity]) for need in ctx.grant.needs}
            try:
                await anyio.sleep(duration)
                if fails:
                    raise RuntimeError(f"command {index} failed")
            finally:
                for need in ctx.grant.needs:
                    if need.mode is LockMode.EXCLUSIVE:
                        logs[need.entity].append(index)
                overlaps.exit(str(index))
                running_kinds[kind] -= 1
                spans[index] = (start, anyio.current_time())
            return index

        needs, kind, group, _, _ = specs[index]
        return Command(
            f"c{index}",
            run,
            needs,
            kind=kind,
            priority=0 if priorities is None else priorities[index],
            sequential=group == SEQ,
            group=None if group == SEQ else group,
        )

    async def check_no_command_waits_needlessly(ex: CommandExecutor) -> None:
        while True:
            await anyio.wait_all_tasks_blocked()
            for item in ex._waiting:
                if item.request is not None and item.request.queued:
                    blocked = (
                        ex.locks._conflicts(item.request)
                        or not item.head
                        or not ex._has_room(item.command.kind)
                    )
                    assert blocked, f"{item.label} waits though it could start"
            await anyio.sleep(0.5)

    async def main() -> list[ExecutionState]:
        limits = None if cap is None else {"a": cap}
        with anyio.fail_after(10_000):
            async with anyio.create_task_group() as tg:
                async with CommandExecutor(workers=workers, kind_limits=limits) as ex:
                    tg.start_soon(check_no_command_waits_needlessly, ex)
                    handles = [
                        ex.submit(body(n, duration, fails))
                        for n, (_, _, _, duration, fails) in enumerate(specs)
                    ]
                tg.cancel_scope.cancel()
        assert ex.locks.statistics().grants == ex.locks.statistics().waiting == 0
        return [h.state for h in handles]

    states = run_virtual(main)

    # Every command ran to its own end; failures stayed their own.
    assert states == [
        ExecutionState.FAILED if fails else ExecutionState.SUCCEEDED for *_, fails in specs
    ]
    # Bounds: no conflicting overlap, at most `workers`, kind caps.
    assert overlaps.conflicts == []
    assert overlaps.peak <= workers
    if cap is not None:
        assert peak_kind_a <= cap
    if priorities is not None:
        # Priorities may reorder conflicting commands: the rest still holds.
        _check_groups(specs, spans)
        return
    # Each command saw exactly what a one-at-a-time run in submission order
    # shows it: the earlier exclusive users of each of its entities.
    for index, (needs, *_rest) in enumerate(specs):
        for need in normalize_needs(needs):
            earlier = sum(
                1
                for other in range(index)
                for other_need in normalize_needs(specs[other][0])
                if other_need.entity == need.entity and other_need.mode is LockMode.EXCLUSIVE
            )
            assert seen[index][need.entity] == earlier, (index, need)
    _check_groups(specs, spans)


def _check_groups(
    specs: list[tuple[list[Need], str, str | None, int, bool]],
    spans: dict[int, tuple[float, float]],
) -> None:
    """Groups (and the sequential lane) run in submission order, one at a time."""
    for group in {spec[2] for spec in specs} - {None}:
        members = [n for n, spec in enumerate(specs) if spec[2] == group]
        for before, after in itertools.pairwise(members):
            assert spans[before][1] <= spans[after][0], (group, before, after)
