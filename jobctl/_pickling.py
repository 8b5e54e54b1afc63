"""``PicklesAsMade``: an exception whose fields are keyword arguments of its
constructor pickles with them (the standard pickling passes only ``args``)."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["PicklesAsMade"]


class PicklesAsMade:
    """Mixin, before the exception base: ``__reduce__`` rebuilds the error
    from its message and the attributes named in ``_fields``, each passed
    back to the constructor as the keyword of the same name, so an error sent
    to another process (a worker, a pool) arrives as it was raised."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def __reduce__(self) -> tuple[object, ...]:
        fields = {name: getattr(self, name) for name in self._fields}
        return _rebuild, (type(self), str(self), fields)


def _rebuild(cls: type[Any], message: str, fields: dict[str, object]) -> BaseException:
    error: BaseException = cls(message, **fields)
    return error
