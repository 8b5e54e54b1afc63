"""The core's wait queue with ranks, and the walks the host's locks use
(``ahead_of``, ``in_order``, ``last_in``)."""

from __future__ import annotations

import pytest

from jobctl._core._queue import WaitQueue


def ranked() -> WaitQueue[str, str]:
    """Items named ``<lane><rank><n>``: their rank is the middle digit."""
    return WaitQueue(rank=lambda item: int(item[1]))


def test_a_ranked_queue_serves_by_rank_then_arrival() -> None:
    queue = ranked()
    for key, item in [("a", "a50"), ("b", "b10"), ("a", "a30"), ("a", "a00"), ("b", "b11")]:
        queue.push(key, item)
    queue.push("a", "a31")
    assert len(queue) == 6
    assert list(queue) == ["a00", "b10", "b11", "a30", "a31", "a50"]
    assert queue.first_in("a") == "a00"
    assert queue.last_in("a") == "a50"
    assert queue.first(["a", "b"]) == "a00"
    assert queue.first(["b"]) == "b10"
    assert (queue.count("a"), queue.count("b"), queue.count("c")) == (4, 2, 0)
    assert list(queue.in_order()) == ["a00", "b10", "b11", "a30", "a31", "a50"]
    with pytest.raises(ValueError, match="queued already"):
        queue.push("a", "a30")
    assert len(queue) == 6


def test_a_new_rank_between_others_keeps_the_ranks_in_order() -> None:
    queue = ranked()
    for item in ["x5", "x1", "x3", "x9", "x2"]:
        queue.push("x", "x" + item[1])
    assert list(queue.ahead_of("x", "x9")) == ["x1", "x2", "x3", "x5"]
    assert queue.first_in("x") == "x1"
    assert queue.last_in("x") == "x9"


def test_removing_the_last_of_a_rank_or_lane_leaves_the_rest_served() -> None:
    queue = ranked()
    queue.push("a", "a00")
    queue.push("a", "a10")
    queue.push("b", "b20")
    assert not queue.remove("a", "a20")  # not there: wrong rank
    assert not queue.remove("c", "a00")  # not there: wrong lane
    assert queue.remove("a", "a00")
    assert queue.first_in("a") == "a10"
    assert queue.first(["a", "b"]) == "a10"
    assert queue.remove("a", "a10")
    assert queue.first_in("a") is None
    assert queue.last_in("a") is None
    assert queue.first(["a", "b"]) == "b20"
    assert list(queue.in_order()) == ["b20"]
    assert len(queue) == 1 and queue.count("a") == 0
    queue.push("a", "a30")
    assert queue.first(["a", "b"]) == "b20"
    assert list(queue) == ["b20", "a30"]


def test_a_rank_emptied_in_the_middle_of_a_lane_can_come_back() -> None:
    queue = ranked()
    for item in ["a00", "a10", "a20"]:
        queue.push("a", item)
    assert queue.remove("a", "a10")
    assert (queue.first_in("a"), queue.last_in("a")) == ("a00", "a20")
    assert list(queue.ahead_of("a", "a20")) == ["a00"]
    queue.push("a", "a11")
    assert list(queue.in_order()) == ["a00", "a11", "a20"]
    assert queue.remove("a", "a00")
    assert queue.first(["a"]) == "a11"


def test_without_a_rank_last_in_is_the_latest_arrival() -> None:
    queue: WaitQueue[str, str] = WaitQueue()
    assert queue.last_in("a") is None
    queue.push("a", "a1")
    queue.push("a", "a2")
    queue.push("b", "b1")
    assert (queue.first_in("a"), queue.last_in("a")) == ("a1", "a2")
    assert queue.remove("a", "a2")
    assert queue.last_in("a") == "a1"


def test_ahead_of_an_item_in_the_lane_stops_at_it() -> None:
    queue = ranked()
    for item in ["a10", "a00", "a11", "a12", "a20"]:
        queue.push("a", item)
    assert list(queue.ahead_of("a", "a11")) == ["a00", "a10"]
    assert list(queue.ahead_of("a", "a00")) == []
    assert list(queue.ahead_of("a", "a20")) == ["a00", "a10", "a11", "a12"]
    # Not queued: what it would wait behind (its rank and below, all of them).
    assert list(queue.ahead_of("a", "a13")) == ["a00", "a10", "a11", "a12"]
    assert list(queue.ahead_of("a", "a03")) == ["a00"]
    assert list(queue.ahead_of("b", "b00")) == []


def test_an_item_filed_in_several_lanes_is_counted_in_each() -> None:
    queue = ranked()
    queue.push("a", "r10")
    queue.push("b", "r10")
    queue.push("b", "s00")
    assert len(queue) == 3
    assert list(queue.ahead_of("a", "s00")) == []
    assert list(queue.ahead_of("b", "r10")) == ["s00"]
    assert queue.remove("a", "r10")
    assert queue.first_in("a") is None and queue.first_in("b") == "s00"
    assert len(queue) == 2


def test_in_order_merges_the_lanes_and_leaves_a_closed_lane_at_its_turn() -> None:
    queue = ranked()
    for key, item in [("a", "a10"), ("b", "b10"), ("a", "a11"), ("c", "c00"), ("b", "b20")]:
        queue.push(key, item)
    queue.push("a", "a20")
    assert list(queue.in_order()) == ["c00", "a10", "b10", "a11", "b20", "a20"]
    closed: set[str] = set()
    asked: list[str] = []

    def is_open(key: str) -> bool:
        asked.append(key)
        return key not in closed

    served = []
    for item in queue.in_order(is_open):
        served.append(item)
        if item == "a10":
            closed.add("a")  # its last worker was just taken
    assert served == ["c00", "a10", "b10", "b20"]
    # Asked before each item served, and once more for the lane it left.
    assert asked == ["c", "a", "b", "a", "b"]
    assert list(queue.in_order(lambda key: key == "b")) == ["b10", "b20"]
    assert list(WaitQueue[str, str]().in_order()) == []


def test_without_a_rank_ahead_of_is_arrival_order() -> None:
    queue: WaitQueue[str, str] = WaitQueue()
    for item in ["p", "q", "r"]:
        queue.push("x", item)
    assert list(queue.ahead_of("x", "r")) == ["p", "q"]
    assert list(queue.ahead_of("x", "new")) == ["p", "q", "r"]  # as if pushed now
    assert list(queue.ahead_of("y", "p")) == []


def test_removing_what_is_not_there_says_so() -> None:
    queue: WaitQueue[str, str] = WaitQueue()
    queue.push("x", "p")
    assert queue.remove("x", "q") is False  # its lane and rank exist, the item does not
    assert queue.remove("y", "p") is False
    assert bool(queue) and len(queue) == 1
    assert queue.remove("x", "p") is True
    assert not queue and len(queue) == 0
