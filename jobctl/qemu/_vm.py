"""A VM as one host's manager sees it: its job state and, while it runs here, its QEMU."""

from __future__ import annotations

from typing import final

from jobctl._core._domain import Domain
from jobctl.qemu._errors import FlowError, NotRunningError
from jobctl.qemu._machine import Host, Machine

__all__ = ["VM"]


@final
class VM:
    """One host's view of a virtual machine.

    ``domain`` holds the VM's jobs on ``host``; while the VM runs there,
    ``machine`` is its QEMU and the domain's monitor is that machine's QMP
    client. A migration moves the VM from one host's ``VM`` to another's:
    the destination attaches the new machine, the source detaches its own.
    """

    __slots__ = ("_machine", "domain", "host")

    def __init__(self, domain: Domain, host: Host, machine: Machine | None = None) -> None:
        if not isinstance(domain, Domain):
            raise TypeError(f"a VM needs a jobctl.Domain, not {domain!r}")
        self.domain = domain
        self.host = host
        self._machine: Machine | None = None
        if machine is not None:
            self.attach(machine)

    @property
    def name(self) -> str:
        """The domain's name."""
        return self.domain.name

    @property
    def machine(self) -> Machine | None:
        """The VM's QEMU on this host, if it runs here."""
        return self._machine

    def attach(self, machine: Machine) -> None:
        """Make ``machine`` the VM's QEMU here: the domain's monitor becomes
        its QMP client. Raises :class:`FlowError` if another machine that is
        still running is attached."""
        current = self._machine
        if current is not None and current is not machine and not current.stopped:
            raise FlowError(f"{self.name!r} already runs {current!r}; cannot attach {machine!r}")
        if machine.stopped:
            raise FlowError(f"cannot attach {machine!r} to {self.name!r}: it is not running")
        self._machine = machine
        self.domain.set_monitor(machine.qmp)

    def detach(self) -> Machine | None:
        """Forget the VM's QEMU here (it does not stop it); returns it."""
        machine, self._machine = self._machine, None
        self.domain.set_monitor(None)
        return machine

    def running_machine(self) -> Machine:
        """The attached machine; raises :class:`NotRunningError` if there is
        none or it stopped."""
        machine = self._machine
        if machine is None or machine.stopped:
            raise NotRunningError(f"VM {self.name!r} is not running on host {self.host.name!r}")
        return machine

    def __repr__(self) -> str:
        where = "not running" if self._machine is None else repr(self._machine)
        return f"<VM {self.name!r} on {self.host.name!r}: {where}>"
