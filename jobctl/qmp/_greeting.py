"""The greeting QEMU sends when a QMP connection opens."""

from __future__ import annotations

from typing import Any, final

import attrs

from jobctl.qmp._errors import QMPProtocolError

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
    if not isinstance(body, dict):
        raise QMPProtocolError(f"expected a QMP greeting, got {_short(message)}")
    try:
        version = body["version"]
        qemu = version["qemu"]
        numbers = (qemu["major"], qemu["minor"], qemu["micro"])
        package = version.get("package", "")
        capabilities = body["capabilities"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise QMPProtocolError(f"malformed QMP greeting (no {exc}): {_short(message)}") from None
    if (
        not all(type(n) is int for n in numbers)
        or not isinstance(package, str)
        or not isinstance(capabilities, list)
        or not all(isinstance(c, str) for c in capabilities)
    ):
        raise QMPProtocolError(f"malformed QMP greeting: {_short(message)}")
    return QMPGreeting(version=numbers, package=package, capabilities=frozenset(capabilities))


def _short(message: dict[str, Any]) -> str:
    text = repr(message)
    return text if len(text) <= 200 else text[:200] + "..."
