"""Entity locks for recovery, from :mod:`jobctl.host`."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import final

from jobctl.host import Entity, EntityLocks, Need

from ._records import EntityRef

__all__ = ["HostEntityLocker"]


@final
class HostEntityLocker:
    """The :class:`EntityLocker` recovery uses, over a host's
    :class:`jobctl.host.EntityLocks`: an :class:`EntityRef` with
    ``shared=True`` is taken SHARED, any other EXCLUSIVE, all at once."""

    __slots__ = ("_locks",)

    def __init__(self, locks: EntityLocks) -> None:
        self._locks = locks

    def hold(
        self, owner: str, entities: Sequence[EntityRef]
    ) -> AbstractAsyncContextManager[object]:
        """Hold the entities for ``owner`` until the block ends."""
        needs: list[Need] = []
        for ref in entities:
            entity = Entity(ref.type, ref.id)
            needs.append(entity.shared() if ref.shared else entity.exclusive())
        return self._locks.hold(needs, owner=owner)
