"""Domains over simulated VMs: the simulated QEMU, jobctl's QMP client and a
:class:`~jobctl.Domain`, wired together in memory."""

from __future__ import annotations

import contextlib
import enum
import random
from collections.abc import AsyncIterator, Iterable
from typing import Final, final

import attrs

from jobctl._core._domain import Domain
from jobctl._core._trace import TraceHub
from jobctl.qmp import QMPClient, open_qmp_stream
from jobctl.testing._plans import DomainPlan
from jobctl_simulators.qemu import (
    Disk,
    Fault,
    FaultPlan,
    FaultRule,
    Latency,
    MigrationModel,
    SimulatedHost,
    SimulatedQemu,
    Stall,
)

__all__ = ["SimulatedVM", "drawn_monitor_faults", "fault_plan", "open_simulated_vm"]

#: How many commands a plan's latencies are scripted for (later ones answer at once).
_SCRIPTED_COMMANDS: Final = 256

#: What :func:`drawn_monitor_faults` draws each command's delay from: faults
#: that change when the monitor answers, never what it answers.
_TIMING_FAULTS: Final[tuple[Fault, ...]] = (
    Latency(0.0),
    Latency(0.05),
    Latency(0.1),
    Latency(0.5),
    Latency(1.0),
    Stall(0.25),
)


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET


@final
@attrs.frozen
class SimulatedVM:
    """A running simulated VM, the QMP client connected to it, and the
    domain whose monitor that client is."""

    qemu: SimulatedQemu
    qmp: QMPClient
    domain: Domain


def fault_plan(latency: Iterable[float] = (0.0,), faults: Iterable[FaultRule] = ()) -> FaultPlan:
    """The simulator's :class:`~jobctl_simulators.qemu.FaultPlan` for a scenario's
    monitor, which answers as a :class:`~jobctl.testing.ScriptedMonitor`
    with this ``latency`` and ``faults`` would: command ``n`` (counting from
    0 after the handshake) answers after ``latency[n % len(latency)]``, and
    the rules count commands from the first after the handshake (for a rule
    of any command, a rule without ``nth`` is one for each of the first 256
    commands)."""
    latencies = tuple(latency)
    rules: list[FaultRule] = []
    for rule in faults:
        if rule.command is not None:
            rules.append(rule)
        elif rule.nth is not None:
            rules.append(attrs.evolve(rule, nth=rule.nth + 1))  # 1 is qmp_capabilities
        else:
            rules.extend(FaultRule(rule.fault, nth=n + 2) for n in range(_SCRIPTED_COMMANDS))
    if any(latencies):
        rules.extend(
            FaultRule(Latency(latencies[n % len(latencies)]), nth=n + 2)
            for n in range(_SCRIPTED_COMMANDS)
        )
    return FaultPlan(rules)


def drawn_monitor_faults(seed: int) -> FaultPlan:
    """A reproducible monitor for an example test: each of the first 256
    commands after the handshake answers after a latency drawn from
    ``random.Random(seed)`` (0 to 1 s), sometimes after a stall of the
    whole VM (later ones answer at once). Only *when* the
    monitor answers is drawn, never *what* it answers, so a correct flow
    gets the same results, while a flow that talks to the monitor behind the
    core's back (a command sent while another is in flight) is seen by the
    simulator's detector. This is what the ``simulated_vm`` fixture uses."""
    rng = random.Random(seed)
    return FaultPlan(
        [
            FaultRule(rng.choice(_TIMING_FAULTS), nth=n + 2)  # 1 is qmp_capabilities
            for n in range(_SCRIPTED_COMMANDS)
        ]
    )


@contextlib.asynccontextmanager
async def open_simulated_vm(
    name: str,
    *,
    host: SimulatedHost | None = None,
    load: DomainPlan | None = None,
    faults: FaultPlan | None = None,
    trace: TraceHub | None = None,
    wait_timeout: float | _Unset | None = _UNSET,
    max_queued: int | _Unset = _UNSET,
    incoming: str | None = None,
    migration: MigrationModel | None = None,
    disks: Iterable[Disk] = (),
    start_paused: bool = False,
) -> AsyncIterator[SimulatedVM]:
    """Start a simulated VM called ``name``, connect jobctl's QMP client to
    its monitor in memory, and make a :class:`~jobctl.Domain` of the same
    name with that client as its monitor (and ``trace``, ``wait_timeout``
    (30 s unless given), ``max_queued`` (0 unless given)). Leaving the block
    closes the client and kills the VM.

    ``load``, a drawn :class:`~jobctl.testing.DomainPlan` to play beside
    your flow (:func:`~jobctl.testing.play_plan`), makes the VM's monitor
    answer after the load's latency and suffer its faults
    (:func:`fault_plan`), and gives the domain the load's ``wait_timeout``
    and ``max_queued``, as :func:`~jobctl.testing.run_scenario` does; with
    ``load``, giving ``faults``, ``wait_timeout`` or ``max_queued`` too is a
    ``TypeError``.

    ``host`` (one per test, so VMs see each other for migrations) holds the
    :class:`~jobctl_simulators.qemu.ConcurrencyDetector` that checks, from the
    VM's side, that no connection ever had two commands in flight.
    ``faults``, ``incoming`` (``"defer"`` or a URI to listen on),
    ``migration``, ``disks`` and ``start_paused`` are those of
    :class:`~jobctl_simulators.qemu.SimulatedQemu`.
    """
    if load is not None:
        given = [
            label
            for label, unset in (
                ("faults", faults is None),
                ("wait_timeout", wait_timeout is _UNSET),
                ("max_queued", max_queued is _UNSET),
            )
            if not unset
        ]
        if given:
            raise TypeError(
                f"open_simulated_vm({name!r}): load= sets the monitor's faults and the "
                f"domain's wait_timeout and max_queued; do not also give {', '.join(given)}"
            )
        faults = fault_plan(load.latency, load.faults)
        wait_timeout = load.wait_timeout
        max_queued = load.max_queued
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
                name,
                monitor=qmp,
                trace=trace,
                wait_timeout=30.0 if wait_timeout is _UNSET else wait_timeout,
                max_queued=0 if max_queued is _UNSET else max_queued,
            )
            yield SimulatedVM(qemu, qmp, domain)
