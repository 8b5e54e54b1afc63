from __future__ import annotations

import itertools

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl.host import (
    Entity,
    EntityLockBusyError,
    EntityLocks,
    EntityLockTimeoutError,
    LockGrant,
    LockMode,
    Need,
)

from ._support import Overlaps, run_virtual

pytestmark = pytest.mark.anyio

A, B, VM = Entity("disk", "a"), Entity("disk", "b"), Entity("vm", "vm-07")


async def _acquire_in(
    tg: anyio.abc.TaskGroup, locks: EntityLocks, needs: list[Need], owner: str, got: list[str]
) -> list[LockGrant]:
    """Start a task that acquires ``needs`` and appends ``owner`` to ``got``
    when granted; returns a list that will hold its grant."""
    box: list[LockGrant] = []

    async def take() -> None:
        box.append(await locks.acquire(needs, owner=owner))
        got.append(owner)

    tg.start_soon(take)
    await anyio.wait_all_tasks_blocked()
    return box


async def test_shared_holders_coexist_and_block_exclusive() -> None:
    locks = EntityLocks()
    one = locks.acquire_nowait([VM.shared()], owner="backup 1")
    two = locks.acquire_nowait([VM.shared()], owner="backup 2")
    assert locks.holders(VM) == (one, two)
    with pytest.raises(EntityLockBusyError) as caught:
        locks.acquire_nowait([VM.exclusive()], owner="restore")
    message = str(caught.value)
    assert "'restore' could not lock vm:vm-07 (exclusive)" in message
    assert "held shared by 'backup 1'" in message and "held shared by 'backup 2'" in message
    assert not isinstance(caught.value, TimeoutError)  # refused at once: nothing was waited for
    assert [c.owner for c in caught.value.conflicts] == ["backup 1", "backup 2"]
    locks.release(one)
    locks.release(two)
    locks.release(locks.acquire_nowait([VM.exclusive()], owner="restore"))
    stats = locks.statistics()
    assert (stats.locked_entities, stats.grants, stats.waiting) == (0, 0, 0)


async def test_waiter_holds_nothing_until_it_gets_everything() -> None:
    locks = EntityLocks()
    got: list[str] = []
    holder = locks.acquire_nowait([A.exclusive()], owner="holder")
    async with anyio.create_task_group() as tg:
        box = await _acquire_in(tg, locks, [A.exclusive(), B.exclusive()], "both", got)
        assert got == [] and locks.holders(B) == ()
        assert locks.statistics().waiting == 1
        locks.release(holder)
        await anyio.wait_all_tasks_blocked()
        assert got == ["both"]
        assert locks.holders(A) == locks.holders(B) == (box[0],)
        locks.release(box[0])


async def test_a_later_request_passes_only_when_it_does_not_conflict() -> None:
    locks = EntityLocks()
    got: list[str] = []
    holder = locks.acquire_nowait([A.exclusive()], owner="holder")
    async with anyio.create_task_group() as tg:
        waiting = await _acquire_in(tg, locks, [A.shared(), B.shared()], "first", got)
        # B alone, shared: no conflict with the waiter ahead, so it goes.
        locks.release(locks.acquire_nowait([B.shared()], owner="reader"))
        # B exclusive conflicts with the waiter queued ahead: it must wait.
        with pytest.raises(EntityLockBusyError, match="awaited shared by 'first'"):
            locks.acquire_nowait([B.exclusive()], owner="writer")
        locks.release(holder)
        await anyio.wait_all_tasks_blocked()
        assert got == ["first"]
        locks.release(waiting[0])


async def test_shared_stream_cannot_starve_an_exclusive_waiter() -> None:
    locks = EntityLocks()
    got: list[str] = []
    reader = locks.acquire_nowait([VM.shared()], owner="reader 0")
    async with anyio.create_task_group() as tg:
        writer = await _acquire_in(tg, locks, [VM.exclusive()], "writer", got)
        readers = [
            await _acquire_in(tg, locks, [VM.shared()], f"reader {n}", got) for n in range(1, 5)
        ]
        assert got == []  # later readers queue behind the writer
        locks.release(reader)
        await anyio.wait_all_tasks_blocked()
        assert got == ["writer"]
        locks.release(writer[0])
        await anyio.wait_all_tasks_blocked()
        assert sorted(got[1:]) == [f"reader {n}" for n in range(1, 5)]
        assert len(locks.holders(VM)) == 4  # all readers together
        for box in readers:
            locks.release(box[0])


async def test_conflicting_waiters_are_granted_in_arrival_order() -> None:
    locks = EntityLocks()
    got: list[str] = []
    holder = locks.acquire_nowait([VM.exclusive()], owner="holder")
    async with anyio.create_task_group() as tg:
        boxes = [await _acquire_in(tg, locks, [VM.exclusive()], f"w{n}", got) for n in range(4)]
        locks.release(holder)
        for n, box in enumerate(boxes):
            await anyio.wait_all_tasks_blocked()
            assert got == [f"w{m}" for m in range(n + 1)]
            locks.release(box[0])


async def test_higher_priority_waiter_goes_first() -> None:
    locks = EntityLocks()
    got: list[str] = []
    holder = locks.acquire_nowait([VM.exclusive()], owner="holder")
    async with anyio.create_task_group() as tg:
        low = await _acquire_in(tg, locks, [VM.exclusive()], "low", got)
        high: list[LockGrant] = []

        async def urgent() -> None:
            high.append(await locks.acquire([VM.exclusive()], owner="high", priority=5))
            got.append("high")

        tg.start_soon(urgent)
        await anyio.wait_all_tasks_blocked()
        locks.release(holder)
        await anyio.wait_all_tasks_blocked()
        assert got == ["high"]
        locks.release(high[0])
        await anyio.wait_all_tasks_blocked()
        assert got == ["high", "low"]
        locks.release(low[0])


async def test_timeout_names_the_holder_and_leaves_no_trace() -> None:
    locks = EntityLocks()
    holder = locks.acquire_nowait([VM.exclusive()], owner="restore vm-07")
    with pytest.raises(EntityLockTimeoutError) as caught:
        await locks.acquire([VM.shared(), A.shared()], owner="backup vm-07", timeout=0.05)
    assert not isinstance(caught.value, EntityLockBusyError)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.owner == "backup vm-07"
    assert "'backup vm-07' could not lock disk:a (shared), vm:vm-07 (shared) within 0.05s" in str(
        caught.value
    )
    assert "vm:vm-07 is held exclusive by 'restore vm-07'" in str(caught.value)
    assert locks.statistics().waiting == 0 and locks.holders(A) == ()
    assert locks.holders(VM) == (holder,)


async def test_timeout_zero_and_nowait_are_busy() -> None:
    locks = EntityLocks()
    holder = locks.acquire_nowait([VM.exclusive()], owner="holder")
    with pytest.raises(EntityLockBusyError):
        await locks.acquire([VM.shared()], owner="x", timeout=0)
    with pytest.raises(EntityLockBusyError):
        async with locks.hold([VM.shared()], owner="x", nowait=True):
            pass  # pragma: no cover
    locks.release(holder)
    async with locks.hold([VM.shared()], owner="x", nowait=True) as grant:
        assert locks.holders(VM) == (grant,)
    assert locks.holders(VM) == ()


async def test_a_cancelled_waiter_unblocks_the_requests_behind_it() -> None:
    locks = EntityLocks()
    got: list[str] = []
    holder = locks.acquire_nowait([A.exclusive()], owner="holder")
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            # "both" waits for A; "b only" conflicts with it on B, so waits too.
            inner = anyio.create_task_group()
            async with inner:
                await _acquire_in(inner, locks, [A.exclusive(), B.exclusive()], "both", got)
                behind = await _acquire_in(tg, locks, [B.exclusive()], "b only", got)
                assert got == []
                scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert got == ["b only"]  # granted while A is still held
        assert locks.holders(A) == (holder,)
        locks.release(behind[0])
    locks.release(holder)
    assert locks.statistics().waiting == locks.statistics().grants == 0


async def test_hold_releases_when_the_block_raises() -> None:
    locks = EntityLocks()
    with pytest.raises(RuntimeError, match="inside"):
        async with locks.hold([VM.exclusive()], owner="x"):
            raise RuntimeError("inside")
    assert locks.holders(VM) == ()


async def test_release_twice_or_elsewhere_is_a_state_error() -> None:
    locks, other = EntityLocks(), EntityLocks()
    grant = locks.acquire_nowait([VM.shared()], owner="x")
    with pytest.raises(RuntimeError, match="is not held"):
        other.release(grant)
    locks.release(grant)
    with pytest.raises(RuntimeError, match=r"grant #\d+ of vm:vm-07 \(shared\) to 'x' is not held"):
        locks.release(grant)


async def test_bad_arguments_are_named() -> None:
    locks = EntityLocks()
    with pytest.raises(TypeError, match="owner must be a non-empty str"):
        locks.acquire_nowait([VM.shared()], owner="")
    with pytest.raises(TypeError, match="priority must be an int"):
        locks.acquire_nowait([VM.shared()], owner="x", priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"use entity\.shared"):
        await locks.acquire([VM], owner="x")  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        await locks.acquire([VM.shared()], owner="x", timeout=-1)
    with pytest.raises(ValueError, match="nowait=True or a timeout"):
        async with locks.hold([VM.shared()], owner="x", nowait=True, timeout=1):
            pass  # pragma: no cover
    assert locks.statistics().grants == 0


# -- the guarantees, over random request streams ---------------------------------

ENTITIES = [Entity("e", str(n)) for n in range(4)]
needs_strategy = st.lists(
    st.builds(Need, st.sampled_from(ENTITIES), st.sampled_from(LockMode)),
    min_size=1,
    max_size=3,
)
requests_strategy = st.lists(
    st.tuples(
        needs_strategy,
        st.integers(0, 3),  # arrival time
        st.integers(1, 4),  # hold time
        st.sampled_from([0, 0, 0, 1]),  # priority
    ),
    min_size=1,
    max_size=12,
)


@given(requests_strategy)
def test_random_streams_are_safe_fair_and_never_deadlock(
    requests: list[tuple[list[Need], int, int, int]],
) -> None:
    locks = EntityLocks()
    overlaps = Overlaps()
    arrivals = itertools.count()
    arrival_of: dict[str, int] = {}
    grants: dict[str, LockGrant] = {}

    def no_queued_request_could_go() -> None:
        for queued in locks._queue:
            assert locks._conflicts(queued), f"{queued.owner} waits though nothing blocks it"

    async def client(n: int, needs: list[Need], arrive: int, hold: int, priority: int) -> None:
        name = f"r{n}"
        await anyio.sleep(arrive)
        arrival_of[name] = next(arrivals)
        grant = await locks.acquire(needs, owner=name, priority=priority)
        grants[name] = grant
        overlaps.enter(name, grant.needs)
        await anyio.sleep(hold)
        overlaps.exit(name)
        locks.release(grant)

    async def checker() -> None:
        for _ in range(40):
            await anyio.wait_all_tasks_blocked()
            no_queued_request_could_go()
            await anyio.sleep(0.5)

    async def main() -> None:
        with anyio.fail_after(1000):  # a deadlock would hang: fail instead
            async with anyio.create_task_group() as tg:
                tg.start_soon(checker)
                for n, (needs, arrive, hold, priority) in enumerate(requests):
                    tg.start_soon(client, n, needs, arrive, hold, priority)

    run_virtual(main)
    assert len(grants) == len(requests)  # everyone got in: no deadlock, no starvation
    assert overlaps.conflicts == []
    priority = {f"r{n}": request[3] for n, request in enumerate(requests)}
    for first, second in itertools.permutations(grants, 2):
        conflict = any(
            a.conflicts_with(b) for a in grants[first].needs for b in grants[second].needs
        )
        if (
            conflict
            and priority[first] == priority[second]
            and arrival_of[first] < arrival_of[second]
        ):
            # FIFO among conflicts: the earlier request was granted first.
            assert grants[first].id < grants[second].id, (first, second)
    assert locks.statistics().grants == locks.statistics().waiting == 0
