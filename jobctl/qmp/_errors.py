"""The exceptions of the QMP client.

Everything the client raises about a connection is a :class:`QMPError`:

* an error reply from QEMU is a :class:`QMPCommandError`, typed by QEMU's
  error ``class`` when it is one QEMU defines;
* a connection that is gone is a :class:`QMPClosedError`; when it was closed
  because the peer broke the protocol, a :class:`QMPProtocolError`;
* a per-call ``timeout=`` that expired is a :class:`QMPTimeoutError`, and
  opening a client that took too long a :class:`QMPConnectTimeoutError`
  (both builtin :class:`TimeoutError` too).

These classes know nothing of jobs: a job that drives a :class:`QMPClient`
as its monitor gets them from the monitor as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, final

from jobctl.qmp._show import clip

__all__ = [
    "CommandNotFoundError",
    "DeviceNotActiveError",
    "DeviceNotFoundError",
    "GenericError",
    "KVMMissingCapError",
    "QMPClosedError",
    "QMPCommandError",
    "QMPConnectTimeoutError",
    "QMPError",
    "QMPProtocolError",
    "QMPTimeoutError",
    "command_error",
]


class QMPError(Exception):
    """Base class of every error the QMP client raises about its connection
    (not :class:`TypeError` or :class:`ValueError` for a request it cannot
    encode)."""


class QMPClosedError(QMPError):
    """The connection is gone: end of stream, a reset, a broken reply, a dead
    process, or the client's block was left. Every waiter on the connection
    fails with it at once, and so does every later call; the message says
    why."""


class QMPCommandError(QMPError):
    """QEMU answered a command with an error reply.

    ``error_class`` and ``desc`` are QEMU's ``class`` and ``desc`` members;
    ``command`` is the command that failed. Replies whose class QEMU defines
    raise the matching subclass; any other class raises this type.
    """

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        # The peer chose these strings: the message quotes them cut short.
        super().__init__(f"{command}: {clip(error_class, 100)}: {clip(desc, 1000)}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


@final
class GenericError(QMPCommandError):
    """QEMU's ``GenericError``: most failures, described only by ``desc``."""


@final
class CommandNotFoundError(QMPCommandError):
    """QEMU's ``CommandNotFound``: the command does not exist (or is not
    available in the current mode)."""


@final
class DeviceNotActiveError(QMPCommandError):
    """QEMU's ``DeviceNotActive``: the device exists but is not active."""


@final
class DeviceNotFoundError(QMPCommandError):
    """QEMU's ``DeviceNotFound``: no device by that name."""


@final
class KVMMissingCapError(QMPCommandError):
    """QEMU's ``KVMMissingCap``: KVM lacks a capability the command needs."""


#: QEMU's error classes (qapi/error.json ``QapiErrorClass``) and their types.
_BY_CLASS: Final[Mapping[str, type[QMPCommandError]]] = {
    "GenericError": GenericError,
    "CommandNotFound": CommandNotFoundError,
    "DeviceNotActive": DeviceNotActiveError,
    "DeviceNotFound": DeviceNotFoundError,
    "KVMMissingCap": KVMMissingCapError,
}


def command_error(command: str, error_class: str, desc: str) -> QMPCommandError:
    """The typed exception for an error reply of ``command``."""
    return _BY_CLASS.get(error_class, QMPCommandError)(command, error_class, desc)


@final
class QMPProtocolError(QMPClosedError):
    """The peer broke the QMP protocol, so the client closed the connection.

    The message names what was wrong (bad JSON, an oversized line, a reply
    for an id nobody waits for, a malformed greeting, reply or event, a
    refused ``qmp_capabilities``), quoting the peer's data cut to a few
    hundred characters. A kind of :class:`QMPClosedError`: it is what every
    waiter on the connection gets.
    """


@final
class QMPTimeoutError(QMPError, TimeoutError):
    """A call's ``timeout=`` expired before its reply arrived.

    ``sent`` tells whether the command had been written: if so it is still in
    flight, and the client writes no other command until its reply arrives
    (or the connection closes).
    """

    def __init__(self, command: str, timeout: float, *, sent: bool) -> None:
        where = (
            "it is still in flight; the next command waits for its reply"
            if sent
            else "it was not sent"
        )
        super().__init__(f"{command}: no reply within {timeout:g}s ({where})")
        self.command = command
        self.timeout = timeout
        self.sent = sent


@final
class QMPConnectTimeoutError(QMPError, TimeoutError):
    """Opening a client took longer than its ``timeout=``.

    ``where`` names the socket (or stream), ``timeout`` is the limit in
    seconds, ``stage`` is ``"connect"`` (nothing accepted the connection) or
    ``"greeting"`` (connected, but no greeting and negotiation: a QEMU whose
    monitor another client holds greets only once that one leaves).
    """

    def __init__(self, where: str, timeout: float, stage: str) -> None:
        what = (
            f"could not connect to {where}"
            if stage == "connect"
            else f"no QMP greeting and negotiation from {where}"
        )
        super().__init__(
            f"{what} within {timeout:g} s (pass a larger timeout=, or None to wait without limit)"
        )
        self.where = where
        self.timeout = timeout
        self.stage = stage
