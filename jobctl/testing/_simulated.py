"""Domains over simulated VMs: the simulated QEMU, jobctl's QMP client and a
:class:`~jobctl.Domain`, wired together in memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Final, final

import attrs

from jobctl._domain import Domain
from jobctl._trace import TraceHub
from jobctl.qmp import QMPClient, open_qmp_stream
from jobctl.testing._monitor import FaultKind, MonitorFault
from simulators.qemu import (
    Die,
    Disk,
    Drop,
    ErrorReply,
    Fault,
    FaultPlan,
    FaultRule,
    Latency,
    MigrationModel,
    SimulatedHost,
    SimulatedQemu,
    Stall,
)

__all__ = ["SimulatedVM", "fault_plan", "open_simulated_vm"]

#: How many commands a plan's latencies are scripted for (later ones answer at once).
_SCRIPTED_COMMANDS: Final = 256


@final
@attrs.frozen
class SimulatedVM:
    """A running simulated VM, the QMP client connected to it, and the
    domain whose monitor that client is."""

    qemu: SimulatedQemu
    qmp: QMPClient
    domain: Domain


def fault_plan(latency: Iterable[float] = (0.0,), faults: Iterable[MonitorFault] = ()) -> FaultPlan:
    """The simulator's :class:`~simulators.qemu.FaultPlan` for a scenario's
    monitor: command ``n`` (counting from 0 after the handshake) answers
    after ``latency[n % len(latency)]`` and suffers the fault scripted for it
    (an error reply, a stall of the whole VM, a dropped connection, or the
    VM's death)."""
    latencies = tuple(latency)
    rules: list[FaultRule] = []
    for fault in faults:
        injected: Fault
        if fault.kind is FaultKind.ERROR:
            injected = ErrorReply("scripted error reply")
        elif fault.kind is FaultKind.STALL:
            injected = Stall(fault.seconds)
        elif fault.kind is FaultKind.DROP:
            injected = Drop()
        else:
            injected = Die()
        rules.append(FaultRule(injected, nth=fault.at + 2))  # 1 is qmp_capabilities
    if any(latencies):
        rules.extend(
            FaultRule(Latency(latencies[n % len(latencies)]), nth=n + 2)
            for n in range(_SCRIPTED_COMMANDS)
        )
    return FaultPlan(rules)


@contextlib.asynccontextmanager
async def open_simulated_vm(
    name: str,
    *,
    host: SimulatedHost | None = None,
    faults: FaultPlan | None = None,
    trace: TraceHub | None = None,
    wait_timeout: float | None = 30.0,
    max_queued: int = 0,
    incoming: str | None = None,
    migration: MigrationModel | None = None,
    disks: Iterable[Disk] = (),
    start_paused: bool = False,
) -> AsyncIterator[SimulatedVM]:
    """Start a simulated VM called ``name``, connect jobctl's QMP client to
    its monitor in memory, and make a :class:`~jobctl.Domain` of the same
    name with that client as its monitor (and ``trace``, ``wait_timeout``,
    ``max_queued``). Leaving the block closes the client and kills the VM.

    ``host`` (one per test, so VMs see each other for migrations) holds the
    :class:`~simulators.qemu.ConcurrencyDetector` that checks, from the
    VM's side, that no connection ever had two commands in flight.
    ``faults``, ``incoming`` (``"defer"`` or a URI to listen on),
    ``migration``, ``disks`` and ``start_paused`` are those of
    :class:`~simulators.qemu.SimulatedQemu`.
    """
    vm = SimulatedQemu(
        name,
        host=host,
        faults=faults,
        incoming=incoming,
        migration=migration,
        disks=disks,
        start_paused=start_paused,
    )
    async with vm as qemu:
        stream = await qemu.add_monitor().connect_memory()
        async with open_qmp_stream(stream, timeout=10.0) as qmp:
            domain = Domain(
                name, monitor=qmp, trace=trace, wait_timeout=wait_timeout, max_queued=max_queued
            )
            yield SimulatedVM(qemu, qmp, domain)
