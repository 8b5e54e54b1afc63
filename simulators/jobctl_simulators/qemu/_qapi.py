"""QAPI argument checking with QEMU 7.2's error texts.

QEMU checks a command's ``arguments`` with its QObject input visitor: members
in schema order (a missing one is reported before an unexpected one), then
the keys nobody asked for. The texts are the visitor's, for example::

    Parameter 'uri' is missing
    Parameter 'foo' is unexpected
    Invalid parameter type for 'capabilities[0].state', expected: boolean
    Parameter 'max-bandwidth' expects uint64
    Parameter 'compress-level' expects uint8_t
    Parameter 'sync' does not accept value 'bogus'

Note the quirks kept on purpose: integer range and enum errors name the bare
member (``'null'`` inside a list), the others the full path; ``uint*`` and
``size`` accept negative numbers (wrapping, as QEMU does for compatibility).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, final

import attrs

from ._errors import CommandErrorReply

__all__ = [
    "Alternate",
    "Array",
    "Bool",
    "Enum",
    "Int",
    "Member",
    "QType",
    "Str",
    "Struct",
    "UInt",
    "Union",
    "Unmodelled",
    "check_arguments",
]

_Path = tuple[str | int, ...]

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT64_MAX: Final = (1 << 64) - 1


def _full_name(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "null"


def _bare_name(path: _Path) -> str:
    return path[-1] if path and isinstance(path[-1], str) else "null"


def _wrong_type(path: _Path, expected: str) -> CommandErrorReply:
    return CommandErrorReply(
        f"Invalid parameter type for '{_full_name(path)}', expected: {expected}"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class QType(Protocol):
    """A QAPI type: checks a JSON value and returns it."""

    @property
    def json_type(self) -> str:
        """The introspection ``json-type`` (or meta-type) name."""
        ...

    def check(self, value: object, path: _Path) -> Any:
        """Return ``value`` if it conforms; raise :class:`CommandErrorReply` otherwise."""
        ...


@final
@attrs.frozen
class Str:
    json_type: str = "string"

    def check(self, value: object, path: _Path) -> Any:
        if not isinstance(value, str):
            raise _wrong_type(path, "string")
        return value


@final
@attrs.frozen
class Bool:
    json_type: str = "boolean"

    def check(self, value: object, path: _Path) -> Any:
        if not isinstance(value, bool):
            raise _wrong_type(path, "boolean")
        return value


@final
@attrs.frozen
class Int:
    """``int``/``int64``."""

    json_type: str = "int"

    def check(self, value: object, path: _Path) -> Any:
        if not _is_int(value) or not _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            raise _wrong_type(path, "integer")
        return value


@final
@attrs.frozen
class UInt:
    """``uint8`` .. ``uint64`` and ``size``: negative int64 values wrap, as in QEMU."""

    bits: int = 64
    json_type: str = "int"

    def check(self, value: object, path: _Path) -> Any:
        if not _is_int(value) or not _INT64_MIN <= value <= _UINT64_MAX:  # type: ignore[operator]
            raise CommandErrorReply(f"Parameter '{_full_name(path)}' expects uint64")
        assert isinstance(value, int)
        wrapped = value & _UINT64_MAX
        if wrapped >= 1 << self.bits:
            raise CommandErrorReply(f"Parameter '{_bare_name(path)}' expects uint{self.bits}_t")
        return wrapped


@final
@attrs.frozen
class Enum:
    name: str
    values: tuple[str, ...]
    json_type: str = "enum"

    def check(self, value: object, path: _Path) -> Any:
        if not isinstance(value, str):
            raise _wrong_type(path, "string")
        if value not in self.values:
            raise CommandErrorReply(
                f"Parameter '{_bare_name(path)}' does not accept value '{value}'"
            )
        return value


@final
@attrs.frozen
class Alternate:
    """An alternate of JSON kinds, e.g. ``StrOrNull``; ``object`` is the
    type of its object branch (``object_type``), if it has one (``BlockdevRef``)."""

    name: str
    accepts_str: bool = True
    accepts_null: bool = True
    object_type: QType | None = None
    json_type: str = "alternate"

    def check(self, value: object, path: _Path) -> Any:
        if (self.accepts_str and isinstance(value, str)) or (self.accepts_null and value is None):
            return value
        if self.object_type is not None and isinstance(value, dict):
            return self.object_type.check(value, path)
        raise CommandErrorReply(
            f"Invalid parameter type for '{_bare_name(path)}', expected: {self.name}"
        )


@final
@attrs.frozen
class Unmodelled:
    """A member the simulator accepts in the schema but does not model:
    giving it is an error that says so."""

    json_type: str = "unmodelled"

    def check(self, value: object, path: _Path) -> Any:
        raise CommandErrorReply(f"the simulator does not model '{_full_name(path)}'")


@final
@attrs.frozen
class Array:
    element: QType
    json_type: str = "array"

    def check(self, value: object, path: _Path) -> Any:
        if not isinstance(value, list):
            raise _wrong_type(path, "array")
        return [self.element.check(item, (*path, index)) for index, item in enumerate(value)]


@final
@attrs.frozen
class Member:
    name: str
    type: QType
    optional: bool = False


def _members(spec: Mapping[str, QType]) -> tuple[Member, ...]:
    return tuple(
        Member(name.removeprefix("*"), qtype, optional=name.startswith("*"))
        for name, qtype in spec.items()
    )


@final
@attrs.frozen
class Struct:
    """A struct; build it with :meth:`of` from ``{"name": T, "*optional": T}``
    in schema order (base members first)."""

    members: tuple[Member, ...]
    json_type: str = "object"

    @classmethod
    def of(cls, spec: Mapping[str, QType], *, base: Struct | None = None) -> Struct:
        return cls((*(base.members if base else ()), *_members(spec)))

    def check(self, value: object, path: _Path) -> Any:
        if not isinstance(value, dict):
            raise _wrong_type(path, "object")
        result: dict[str, Any] = {}
        for member in self.members:
            if member.name not in value:
                if member.optional:
                    continue
                raise CommandErrorReply(
                    f"Parameter '{_full_name((*path, member.name))}' is missing"
                )
            result[member.name] = member.type.check(value[member.name], (*path, member.name))
        for key in value:
            if key not in result:
                raise CommandErrorReply(f"Parameter '{_full_name((*path, key))}' is unexpected")
        return result

    def names(self) -> Sequence[str]:
        return [member.name for member in self.members]


@final
@attrs.frozen(eq=False)
class Union:
    """A flat union: the ``base`` members (``tag`` among them, an
    :class:`Enum`), then the members of the variant the tag names. Variants
    are filled in after construction (they may refer to the union itself);
    a tag value without a variant is one the simulator does not model."""

    name: str
    base: Struct
    tag: str
    variants: dict[str, Struct] = attrs.field(factory=dict)
    json_type: str = "object"

    def check(self, value: object, path: _Path) -> Any:
        if not isinstance(value, dict):
            raise _wrong_type(path, "object")
        tag = value.get(self.tag)
        variant = self.variants.get(tag) if isinstance(tag, str) else None
        if variant is None:
            checked = Struct(tuple(m for m in self.base.members if m.name == self.tag))
            checked.check({self.tag: tag} if self.tag in value else {}, path)
            raise CommandErrorReply(
                f"the simulator does not model {self.tag} '{tag}' of {self.name}"
            )
        return Struct((*self.base.members, *variant.members)).check(value, path)


def check_arguments(schema: Struct | Union, arguments: dict[str, Any]) -> dict[str, Any]:
    """Check a command's ``arguments`` (already known to be an object)."""
    result: dict[str, Any] = schema.check(arguments, ())
    return result
