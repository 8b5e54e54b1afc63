"""A monitor that refuses commands once its manager's lease is gone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, final

from jobctl._core._monitor import Monitor
from jobctl.journal import FencingToken

__all__ = ["FencedMonitor", "MonitorFence"]


class MonitorFence(Protocol):
    """What a :class:`FencedMonitor` asks before each command
    (:class:`Ownership` is one)."""

    async def check(self, domain: str) -> FencingToken:
        """The token to act on ``domain`` with, or raise
        :class:`LeaseLostError`."""
        ...


@final
class FencedMonitor:
    """A :class:`jobctl.Monitor` in front of a domain's monitor (its QMP
    client) that checks this manager's lease of the domain before each
    command: QEMU cannot check a token itself, so the component holding its
    connection does. Once the lease is known lost, or past its local bound
    and not renewable, ``execute`` raises :class:`LeaseLostError` (naming who
    owns the domain now) and the command is not sent.

    ``Domain(name, monitor=FencedMonitor(qmp, ownership, name))``, or
    ``domain.set_monitor(...)`` after attaching a machine. It knows no
    command: it fences any monitor.

    Limit: a command that passed the check is sent; a process stopped between
    the check and the write sends it late. The margin of the lease (see
    :class:`Ownership`) bounds that window for a slow manager, not for a
    stopped one: storage-level fencing (sanlock) covers the disks.
    """

    __slots__ = ("_domain", "_fence", "_monitor", "_sent")

    def __init__(self, monitor: Monitor, fence: MonitorFence, domain: str) -> None:
        self._monitor = monitor
        self._fence = fence
        self._domain = domain
        self._sent = 0

    @property
    def domain(self) -> str:
        """The domain whose lease is checked."""
        return self._domain

    @property
    def sent(self) -> int:
        """Commands that passed the check and went to the monitor."""
        return self._sent

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Check the lease, then run the command on the wrapped monitor."""
        await self._fence.check(self._domain)
        self._sent += 1
        return await self._monitor.execute(command, arguments)

    def __repr__(self) -> str:
        return f"<FencedMonitor {self._domain!r} of {self._monitor!r}>"
