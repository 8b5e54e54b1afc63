"""``open_host_pair``: two hosts that can migrate to each other, simulated or real."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import final

import attrs

from jobctl.qemu._machine import Host
from jobctl.qemu._qemu_host import open_qemu_host
from jobctl_simulators.qemu import MigrationModel, SimulatedHost

from ._sim_host import open_simulated_host

__all__ = ["HostPair", "open_host_pair"]


@final
@attrs.frozen
class HostPair:
    """Two hosts that can migrate to each other (:func:`open_host_pair`)."""

    a: Host
    b: Host
    #: The simulated network both hosts share, whose
    #: :attr:`~jobctl_simulators.qemu.SimulatedHost.detector` counts commands
    #: that overlapped on a monitor; None on real QEMU.
    simulator: SimulatedHost | None

    @property
    def hosts(self) -> tuple[Host, Host]:
        """``(a, b)``."""
        return self.a, self.b


@asynccontextmanager
async def open_host_pair(
    names: tuple[str, str] = ("a", "b"),
    *,
    qemu: bool = False,
    migration: MigrationModel | None = None,
    command_latency: float = 0.0002,
) -> AsyncIterator[HostPair]:
    """Two hosts named ``names`` that can migrate to each other.

    Simulated by default: both share one :class:`~jobctl_simulators.qemu.SimulatedHost`
    network, with the simulator's ``migration`` model and ``command_latency``
    seconds per command (see :func:`open_simulated_host`). With ``qemu``,
    real QEMU (:func:`~jobctl.qemu.open_qemu_host`) on a temporary storage
    directory both hosts share, so a disk created on one is there on the
    other; ``migration`` and ``command_latency`` are the simulator's and do
    not apply. Leaving the block stops every machine and removes the
    temporary files.
    """
    first, second = names
    if qemu:
        with tempfile.TemporaryDirectory(prefix="jobctl-storage-") as storage:
            async with (
                open_qemu_host(first, storage=storage) as a,
                open_qemu_host(second, storage=storage) as b,
            ):
                yield HostPair(a, b, None)
        return
    network = SimulatedHost(network=True)
    async with (
        open_simulated_host(
            first, sim=network, migration=migration, command_latency=command_latency
        ) as a,
        open_simulated_host(
            second, sim=network, migration=migration, command_latency=command_latency
        ) as b,
    ):
        yield HostPair(a, b, network)
