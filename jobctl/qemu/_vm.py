"""A VM as one host's manager sees it: its job state and, while it runs here, its QEMU."""

from __future__ import annotations

from typing import final

from jobctl._core._domain import Domain
from jobctl.cluster import FencedMonitor, MonitorFence
from jobctl.qemu._errors import FlowError, NotRunningError
from jobctl.qemu._machine import Host, Machine
from jobctl.qemu._observed import ObservedState, Observer

__all__ = ["VM"]


@final
class VM:
    """One host's view of a virtual machine.

    ``domain`` holds the VM's jobs on ``host``; while the VM runs there,
    ``machine`` is its QEMU and the domain's monitor is that machine's QMP
    client. A migration moves the VM from one host's ``VM`` to another's:
    the destination attaches the new machine, the source detaches its own.

    ``observer`` keeps what is known of the VM's QEMU without asking it
    (:class:`Observer`): read it with :attr:`observed`, which never waits.

    With ``fence`` (a :class:`jobctl.cluster.Ownership`, when several
    managers share the VM), every machine attached here is fenced: the
    domain's monitor is a :class:`jobctl.cluster.FencedMonitor` over the
    machine's QMP client, so once this manager's lease of the domain is lost
    its jobs' commands are refused (:class:`jobctl.cluster.LeaseLostError`)
    before they reach QEMU.
    """

    __slots__ = ("_machine", "domain", "fence", "host", "observer")

    def __init__(
        self,
        domain: Domain,
        host: Host,
        machine: Machine | None = None,
        *,
        fence: MonitorFence | None = None,
    ) -> None:
        if not isinstance(domain, Domain):
            raise TypeError(f"a VM needs a jobctl.Domain, not {domain!r}")
        self.domain = domain
        self.host = host
        #: The lease every command to an attached machine is checked against.
        self.fence = fence
        #: What is known of the VM without asking QEMU (see :attr:`observed`).
        self.observer = Observer(domain)
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

    @property
    def observed(self) -> ObservedState:
        """The VM's observed state, now: run state, migration, block
        counters and the current async job, each with when it was observed.
        Never awaits and never enters the monitor (see :class:`Observer`)."""
        return self.observer.state()

    def attach(self, machine: Machine) -> None:
        """Make ``machine`` the VM's QEMU here: the domain's monitor becomes
        its QMP client (fenced, with :attr:`fence`). Raises
        :class:`FlowError` if another machine that is still running is
        attached."""
        current = self._machine
        if current is not None and current is not machine and not current.stopped:
            raise FlowError(f"{self.name!r} already runs {current!r}; cannot attach {machine!r}")
        if machine.stopped:
            raise FlowError(f"cannot attach {machine!r} to {self.name!r}: it is not running")
        self._machine = machine
        self.domain.set_monitor(
            machine.qmp
            if self.fence is None
            else FencedMonitor(machine.qmp, self.fence, self.domain.name)
        )
        if current is not machine:
            self.observer.watch(machine)

    def detach(self) -> Machine | None:
        """Forget the VM's QEMU here (it does not stop it); returns it."""
        machine, self._machine = self._machine, None
        self.domain.set_monitor(None)
        self.observer.saw_shutoff()
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
