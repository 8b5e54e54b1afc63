"""Entities and the modes in which a command needs them.

An :class:`Entity` is anything a host command can conflict on: a VM, a disk,
an incremental backup chain, a storage domain. It is a plain value (a type
and an id), so two commands that name the same VM name the same entity
without sharing any object.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import final

import attrs

__all__ = ["Entity", "LockMode", "Need", "normalize_needs"]


@enum.unique
class LockMode(enum.Enum):
    """How a command needs an entity.

    Any number of SHARED holders may hold an entity together; an EXCLUSIVE
    holder holds it alone.
    """

    SHARED = "shared"
    EXCLUSIVE = "exclusive"

    def conflicts_with(self, other: LockMode) -> bool:
        """Whether two holders in these modes may not hold one entity together."""
        return self is LockMode.EXCLUSIVE or other is LockMode.EXCLUSIVE


def _nonempty_str(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"Entity.{attribute.name} must be a non-empty str, got {value!r}")


@final
@attrs.frozen(slots=True, order=True, cache_hash=True)
class Entity:
    """Something host commands can conflict on, named by ``type`` and ``id``.

    ``Entity("vm", "vm-07")`` and ``Entity("chain", "vm-07")`` are different
    entities; two ``Entity("vm", "vm-07")`` values are the same one.
    """

    type: str = attrs.field(validator=_nonempty_str)
    id: str = attrs.field(validator=_nonempty_str)

    def shared(self) -> Need:
        """This entity, needed in :attr:`LockMode.SHARED` mode."""
        return Need(self, LockMode.SHARED)

    def exclusive(self) -> Need:
        """This entity, needed in :attr:`LockMode.EXCLUSIVE` mode."""
        return Need(self, LockMode.EXCLUSIVE)

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


@final
@attrs.frozen(slots=True)
class Need:
    """One entity and the mode a command needs it in."""

    entity: Entity = attrs.field(validator=attrs.validators.instance_of(Entity))
    mode: LockMode = attrs.field(validator=attrs.validators.instance_of(LockMode))

    def conflicts_with(self, other: Need) -> bool:
        """Whether holders of these two needs may not run together."""
        return self.entity == other.entity and self.mode.conflicts_with(other.mode)

    def __str__(self) -> str:
        return f"{self.entity} ({self.mode.value})"


def normalize_needs(needs: Iterable[Need]) -> tuple[Need, ...]:
    """``needs`` as a tuple sorted by entity, one :class:`Need` per entity.

    An entity named twice is needed in the stronger of its modes (EXCLUSIVE
    wins). Anything that is not a :class:`Need` raises :class:`TypeError`
    naming it, and so does a bare :class:`Entity` (say ``.shared()`` or
    ``.exclusive()``).
    """
    if isinstance(needs, (str, bytes, Need, Entity)):
        raise TypeError(f"needs must be an iterable of Need, got {needs!r}")
    modes: dict[Entity, LockMode] = {}
    for need in needs:
        if not isinstance(need, Need):
            hint = (
                " (use entity.shared() or entity.exclusive())" if isinstance(need, Entity) else ""
            )
            raise TypeError(f"needs must hold Need values, got {need!r}{hint}")
        if modes.get(need.entity) is not LockMode.EXCLUSIVE:
            modes[need.entity] = need.mode
    return tuple(Need(entity, modes[entity]) for entity in sorted(modes))
