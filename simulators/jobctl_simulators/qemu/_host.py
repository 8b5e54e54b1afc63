"""The simulated host: what simulated VMs in one process share."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol, final

import anyio

from ._block import ImageLocks
from ._detector import ConcurrencyDetector
from ._errors import CommandErrorReply
from ._links import IncomingEnd

__all__ = ["HostedVm", "SimulatedHost"]


class HostedVm(Protocol):
    """A VM as its host's registry knows it: by name.
    (:class:`~jobctl_simulators.qemu.SimulatedQemu` is one.)"""

    @property
    def name(self) -> str:
        """The VM's name: unique among the running VMs of one host."""
        ...


@final
class SimulatedHost:
    """VMs that can see each other: a registry of running VMs by name and of
    incoming migrations by URI (so ``migrate`` finds the destination that
    ran ``migrate-incoming`` on the same URI, without a socket), one
    :class:`ConcurrencyDetector` for all their connections, the image locks
    of their disks (two VMs cannot both write one image file), and the wall
    clock of event timestamps.

    ``epoch`` is the wall-clock time at loop time 0 (``time.time()`` minus the
    loop's clock at first use when None): timestamps are
    ``epoch + anyio.current_time()``, so they follow virtual time too.

    With ``network=True`` an incoming migration also listens on its real TCP
    or unix address, and ``migrate`` to a URI no VM of this host listens on
    connects for real: VMs in different processes (the CLI) can migrate.
    """

    def __init__(
        self,
        *,
        detector: ConcurrencyDetector | None = None,
        epoch: float | None = None,
        network: bool = False,
    ) -> None:
        self.detector = detector if detector is not None else ConcurrencyDetector()
        self.network = network
        #: The image locks of this host's VMs (see :class:`ImageLocks`).
        self.image_locks = ImageLocks()
        self._epoch = epoch
        self._vms: dict[str, HostedVm] = {}
        self._incoming: dict[str, IncomingEnd] = {}

    @property
    def vms(self) -> Mapping[str, HostedVm]:
        """The running VMs by name."""
        return MappingProxyType(self._vms)

    def vm(self, name: str) -> HostedVm:
        """The running VM called ``name``."""
        try:
            return self._vms[name]
        except KeyError:
            raise LookupError(f"no simulated VM {name!r} runs on this host") from None

    def wall_time(self) -> float:
        """Seconds since the Unix epoch, on the event loop's clock."""
        if self._epoch is None:
            self._epoch = time.time() - anyio.current_time()
        return self._epoch + anyio.current_time()

    def _add_vm(self, vm: HostedVm) -> None:
        if vm.name in self._vms:
            raise ValueError(f"a simulated VM called {vm.name!r} already runs on this host")
        self._vms[vm.name] = vm

    def _remove_vm(self, vm: HostedVm) -> None:
        if self._vms.get(vm.name) is vm:
            del self._vms[vm.name]

    def _listen_incoming(self, uri: str, incoming: IncomingEnd) -> None:
        if uri in self._incoming:
            raise CommandErrorReply("Failed to bind socket: Address already in use")
        self._incoming[uri] = incoming

    def _incoming_end(self, uri: str) -> IncomingEnd | None:
        incoming = self._incoming.get(uri)
        if incoming is None or not incoming.waiting:
            return None
        return incoming

    def _forget_incoming(self, uri: str, incoming: IncomingEnd) -> None:
        if self._incoming.get(uri) is incoming:
            del self._incoming[uri]
