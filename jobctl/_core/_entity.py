"""Entities, and the modes in which work needs them.

An :class:`Entity` is anything work can conflict on: a VM, a disk, an
incremental backup chain, a storage domain. It is a plain value (a type and
an id), so two commands that name the same VM name the same entity without
sharing any object. A :class:`Need` is an entity and the :class:`LockMode`
the work needs it in.

One model for every layer: :mod:`jobctl.host` locks needs
(``EntityLocks``), and :mod:`jobctl.journal` records each command's needs
and hands them back to recovery, which takes the same locks again.
"""

from __future__ import annotations

import enum
from typing import final

import attrs

__all__ = ["Entity", "LockMode", "Need"]


@enum.unique
class LockMode(enum.Enum):
    """How work needs an entity.

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
    """Something work can conflict on, named by ``type`` and ``id``.

    ``Entity("vm", "vm-07")`` and ``Entity("chain", "vm-07")`` are different
    entities; two ``Entity("vm", "vm-07")`` values are the same one.
    Entities order by type, then id.
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
    """One entity and the mode work needs it in (``vm.shared()``,
    ``chain.exclusive()``)."""

    entity: Entity = attrs.field(validator=attrs.validators.instance_of(Entity))
    mode: LockMode = attrs.field(validator=attrs.validators.instance_of(LockMode))

    def conflicts_with(self, other: Need) -> bool:
        """Whether holders of these two needs may not run together."""
        return self.entity == other.entity and self.mode.conflicts_with(other.mode)

    def __str__(self) -> str:
        return f"{self.entity} ({self.mode.value})"
