"""A host command: what to run, which entities it needs, and how it queues."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar, final

import attrs

from jobctl._core._entity import Need

from ._locks import LockGrant, check_timeout, normalize_needs

__all__ = ["Command", "CommandContext"]

T = TypeVar("T")


def _nonempty_str(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"Command.{attribute.name} must be a non-empty str, got {value!r}")


def _callable(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        raise TypeError(
            f"Command.run must be an async callable taking a CommandContext, got {value!r}"
        )


def _int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Command.{attribute.name} must be an int, got {value!r}")


def _bool(instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"Command.{attribute.name} must be a bool, got {value!r}")


def _group(instance: object, attribute: attrs.Attribute[Hashable | None], value: object) -> None:
    if not isinstance(value, Hashable):
        raise TypeError(f"Command.group must be hashable, got {value!r}")


def _timeout(instance: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    check_timeout(value, "Command.lock_timeout")


def _needs(needs: Iterable[Need]) -> tuple[Need, ...]:
    return normalize_needs(needs)


@final
@attrs.frozen(slots=True, eq=False)
class Command(Generic[T]):
    """One unit of host work for :class:`CommandExecutor`.

    * ``run``: ``async def run(ctx: CommandContext) -> T``, called once, on a
      worker, while the command holds every entity in ``needs``.
    * ``needs``: :class:`Need` values (``vm.shared()``, ``chain.exclusive()``);
      the command starts only when it can hold all of them at once.
      Commands that conflict on an entity start in queue order.
    * ``kind``: the name the executor's ``kind_limits`` cap (``"backup"``).
    * ``priority``: the executor's queue is ordered by priority (higher
      first), then submission: a short urgent command passes long ones
      waiting for a worker. In a group, a command's priority counts at most
      as much as the members ahead of it.
    * ``sequential``: the command runs in the executor's one ordered lane:
      one sequential command at a time, in submission order.
    * ``group``: commands with the same group key run one at a time, in
      submission order, as if one worker ran the group (``sequential=True``
      is one group shared by all sequential commands).
    * ``lock_timeout``: None waits for the entities for ever; ``0`` fails at
      once with :class:`EntityLockBusyError` if an entity is taken; ``t``
      fails with :class:`EntityLockTimeoutError` if after ``t`` seconds at
      the head of its group the command is still blocked by an entity.
      (It bounds the wait for entities, not for a free worker.)
    """

    name: str = attrs.field(validator=_nonempty_str)
    run: Callable[[CommandContext], Awaitable[T]] = attrs.field(validator=_callable)
    needs: tuple[Need, ...] = attrs.field(default=(), converter=_needs)
    kind: str = attrs.field(default="command", validator=_nonempty_str, kw_only=True)
    priority: int = attrs.field(default=0, validator=_int, kw_only=True)
    sequential: bool = attrs.field(default=False, validator=_bool, kw_only=True)
    group: Hashable | None = attrs.field(default=None, validator=_group, kw_only=True)
    lock_timeout: float | None = attrs.field(default=None, validator=_timeout, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.sequential and self.group is not None:
            raise ValueError(
                f"command {self.name!r}: sequential=True already puts it in the sequential "
                f"lane; it cannot also be in group {self.group!r}"
            )


@final
class CommandContext:
    """What a running command gets: who it is, what it holds, and a place
    to report progress (seen in its handle and report)."""

    __slots__ = ("command", "grant", "id", "label", "progress")

    def __init__(self, command: Command[Any], id: int, label: str, grant: LockGrant) -> None:
        self.command = command
        self.id = id
        #: ``"<name> #<id>"``: the owner named in lock errors.
        self.label = label
        #: The entity locks this command holds while it runs.
        self.grant = grant
        #: The latest value given to :meth:`set_progress` (None before).
        self.progress: object = None

    def set_progress(self, progress: object) -> None:
        """Record the command's latest progress (any value, e.g. a dict)."""
        self.progress = progress
