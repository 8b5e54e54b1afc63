from __future__ import annotations

import pytest

from jobctl.host import Entity, LockMode, Need, normalize_needs


def test_entities_are_values() -> None:
    assert Entity("vm", "vm-07") == Entity("vm", "vm-07")
    assert Entity("vm", "vm-07") != Entity("chain", "vm-07")
    assert len({Entity("vm", "a"), Entity("vm", "a")}) == 1
    assert str(Entity("chain", "vm-07")) == "chain:vm-07"


@pytest.mark.parametrize("bad", [("", "x"), ("vm", ""), ("vm", 7), (None, "x")])
def test_entity_fields_must_be_nonempty_strings(bad: tuple[object, object]) -> None:
    with pytest.raises(TypeError, match=r"Entity\.(type|id) must be a non-empty str"):
        Entity(*bad)  # type: ignore[arg-type]


def test_modes_conflict_unless_both_shared() -> None:
    vm = Entity("vm", "a")
    assert not vm.shared().conflicts_with(vm.shared())
    assert vm.shared().conflicts_with(vm.exclusive())
    assert vm.exclusive().conflicts_with(vm.exclusive())
    assert not vm.exclusive().conflicts_with(Entity("vm", "b").exclusive())
    assert LockMode.SHARED.conflicts_with(LockMode.EXCLUSIVE)


def test_normalize_merges_to_the_stronger_mode_and_sorts() -> None:
    a, b = Entity("vm", "a"), Entity("chain", "b")
    assert normalize_needs([a.shared(), b.shared(), a.exclusive(), a.shared()]) == (
        b.shared(),
        a.exclusive(),
    )
    assert normalize_needs([]) == ()


def test_normalize_rejects_what_is_not_a_need() -> None:
    vm = Entity("vm", "a")
    with pytest.raises(TypeError, match=r"use entity\.shared\(\) or entity\.exclusive\(\)"):
        normalize_needs([vm])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="iterable of Need"):
        normalize_needs(vm.shared())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Need values"):
        normalize_needs(["vm:a"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        Need(vm, "shared")  # type: ignore[arg-type]
