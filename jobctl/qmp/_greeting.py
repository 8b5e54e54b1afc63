"""The greeting QEMU sends when a QMP connection opens."""

from __future__ import annotations

from typing import Any, final

import attrs

from jobctl.qmp._errors import QMPProtocolError
from jobctl.qmp._show import show

__all__ = ["QMPGreeting", "parse_greeting"]


@final
@attrs.frozen
class QMPGreeting:
    """What the server said about itself.

    ``version`` is QEMU's ``(major, minor, micro)``, ``package`` its build
    string, ``capabilities`` what it offers (the client enables none of them).
    """

    version: tuple[int, int, int]
    package: str
    capabilities: frozenset[str]


def parse_greeting(message: dict[str, Any]) -> QMPGreeting:
    """Read ``{"QMP": {"version": {...}, "capabilities": [...]}}``.

    Raises :class:`QMPProtocolError` naming what is missing or malformed.
    """
    body = message.get("QMP")
    if type(body) is not dict:
        raise QMPProtocolError(f"expected a QMP greeting, got {show(message)}")

    def member(parent: object, path: str, key: str) -> Any:
        if type(parent) is not dict:
            raise _malformed(f"'{path}' is a {type(parent).__name__}, not an object", message)
        if key not in parent:
            raise _malformed(f"no '{path}.{key}'", message)
        return parent[key]

    version = member(body, "QMP", "version")
    qemu = member(version, "QMP.version", "qemu")
    numbers = tuple(member(qemu, "QMP.version.qemu", key) for key in ("major", "minor", "micro"))
    package = version.get("package", "")
    capabilities = member(body, "QMP", "capabilities")
    if not all(type(n) is int for n in numbers):
        raise _malformed("the version numbers are not all integers", message)
    if type(package) is not str:
        raise _malformed("'QMP.version.package' is not a string", message)
    if type(capabilities) is not list or not all(type(c) is str for c in capabilities):
        raise _malformed("'QMP.capabilities' is not a list of strings", message)
    major, minor, micro = numbers
    return QMPGreeting(
        version=(major, minor, micro), package=package, capabilities=frozenset(capabilities)
    )


def _malformed(why: str, message: dict[str, Any]) -> QMPProtocolError:
    return QMPProtocolError(f"malformed QMP greeting ({why}): {show(message)}")
