"""The simulator's exceptions.

A QMP error *reply* is not an exception of the simulator: it is data sent to
the client. :class:`CommandErrorReply` carries one from a command handler to
the dispatcher. Everything else here is raised to the code that drives the
simulator (tests, the demo, the CLI).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CommandErrorReply",
    "ConcurrencyViolationError",
    "SimulatorError",
]

GENERIC_ERROR: Final = "GenericError"
COMMAND_NOT_FOUND: Final = "CommandNotFound"
DEVICE_NOT_ACTIVE: Final = "DeviceNotActive"


class SimulatorError(Exception):
    """Base class of the errors the simulator raises to its driver."""


class ConcurrencyViolationError(SimulatorError):
    """A client sent a command while another command of the same connection
    was still unanswered, and the :class:`~jobctl_simulators.qemu.ConcurrencyDetector`
    is strict.

    Raised out of the serving task: the VM that saw it crashes (every
    connection closes) and the error leaves the VM's ``async with`` block.
    """

    def __init__(self, connection: str, command: str, pending: str, at: float) -> None:
        super().__init__(
            f"concurrency violation on {connection}: {command!r} arrived at t={at:.6f} "
            f"while {pending!r} was still unanswered"
        )
        self.connection = connection
        self.command = command
        self.pending = pending
        self.at = at


class CommandErrorReply(Exception):
    """The error reply a simulated command returns, raised by its handler:
    ``{"error": {"class": error_class, "desc": desc}}``."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_json(self) -> dict[str, str]:
        """The ``error`` member of the reply."""
        return {"class": self.error_class, "desc": self.desc}
