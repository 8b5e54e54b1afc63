"""A workload that never ends, so that ``jobctl serve`` has something to show.

The real flows on simulated QEMU: ``domains`` VMs (``vm-1`` ...) run on
two simulated hosts (:func:`~jobctl.demo.open_demo_hosts`), each host's
view of a VM a :class:`~jobctl.Domain` of its own (``vm-1@host-a``,
``vm-1@host-b``). Per VM, until cancelled:

* live migrations back and forth between the hosts
  (:func:`jobctl.qemu.migrate`: MIGRATION_OUT and MIGRATION_IN, waiting in
  interruptible sections), now and then a backup
  (:func:`jobctl.qemu.backup`) instead, with a pause of one to three seconds
  between two;
* a domstats poller (:func:`jobctl.qemu.domstats`, QUERY jobs) every 0.2 to
  0.5 seconds, wherever the VM runs;

and, for all of them, an operator who now and then aborts the migration or
backup a VM runs (``Domain.abort``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import suppress
from typing import Final, NoReturn, final

import anyio

from jobctl import Domain, JobAbortedError, JobError, TraceHub
from jobctl.demo._demo import open_demo_hosts
from jobctl.qemu import (
    VM,
    BackupTarget,
    FlowError,
    Host,
    MachineSpec,
    MigrationOptions,
    backup,
    domstats,
    migrate,
    start,
)
from jobctl.qmp import QMPError

__all__ = ["simulated_workload"]

_log: Final = logging.getLogger("jobctl.demo")

#: Every command the simulated QEMU answers takes this long, as a real one's
#: would, so that the page has monitor time to draw.
COMMAND_LATENCY: Final = 0.01
_MiB: Final = 1 << 20
#: The migration's bandwidth limit: a VM of 2 to 6 GiB of RAM migrates in 2
#: to 6 s; a backup copies its disk (as large) at the simulator's 1 GiB/s.
_BANDWIDTH: Final = 1024 * _MiB
#: How often the flows leave their sections to poll QEMU for progress.
_POLL_INTERVAL: Final = 0.5
#: The share of a VM's jobs that are backups; the others are migrations.
_BACKUPS: Final = 0.25
#: Once cancelled, how long the flows may take to clean up and the simulated
#: QEMUs to stop (a clean stop takes a few commands' time).
STOP_TIMEOUT: Final = 30.0
#: What a flow that stopped early raises: an abort, a timeout, a QEMU that
#: refused or went away.
_FAILURES: Final = (JobError, FlowError, QMPError)


@final
class _Guest:
    """One VM, seen from both hosts; ``here`` is where it runs."""

    __slots__ = ("here", "spec", "there")

    def __init__(self, here: VM, there: VM, spec: MachineSpec) -> None:
        self.here = here
        self.there = there
        self.spec = spec

    def migrated(self) -> None:
        self.here, self.there = self.there, self.here


async def _start_guest(
    index: int,
    hosts: tuple[Host, Host],
    hub: TraceHub | None,
    rng: random.Random,
    on_vm: Callable[[VM], object] | None,
) -> _Guest:
    name = f"vm-{index}"
    here, there = (VM(Domain(f"{name}@{host.name}", trace=hub), host) for host in hosts)
    if on_vm is not None:
        on_vm(here)
        on_vm(there)
    size = rng.randint(2, 6) * 1024
    spec = MachineSpec(
        ram_mib=size,
        disk=await hosts[0].create_disk(name, size),
        backup_disk=await hosts[0].create_disk(f"{name}-backup", size),
    )
    guest = _Guest(here, there, spec)
    await start(here, spec, owner="start")
    return guest


async def _jobs(guest: _Guest, rng: random.Random) -> NoReturn:
    options = MigrationOptions(bandwidth=_BANDWIDTH, poll_interval=_POLL_INTERVAL)
    while True:
        await anyio.sleep(rng.uniform(1.0, 3.0))
        vm = guest.here
        try:
            if rng.random() < _BACKUPS:
                target = BackupTarget(guest.spec.backup_node)
                await backup(vm, target, owner="backup", poll_interval=_POLL_INTERVAL)
            else:
                await migrate(vm, guest.there, options, owner="migrate")
                guest.migrated()
        except _FAILURES as exc:
            if not isinstance(exc, JobAbortedError):
                _log.warning("%s: %s: %s", vm.name, type(exc).__name__, exc)
        if guest.here.machine is None or guest.here.machine.stopped:
            # The VM runs nowhere (its QEMU failed): boot it again.
            try:
                await start(guest.here, guest.spec, owner="start")
            except _FAILURES as exc:
                _log.warning("%s: %s: %s", guest.here.name, type(exc).__name__, exc)


async def _domstats(guest: _Guest, rng: random.Random) -> NoReturn:
    while True:
        await anyio.sleep(rng.uniform(0.2, 0.5))
        # Timed out behind a job, or the VM moved away under the query.
        with suppress(*_FAILURES):
            await domstats(guest.here.domain, owner="domstats", timeout=5.0)


async def _operator(guests: list[_Guest], rng: random.Random) -> NoReturn:
    while True:
        await anyio.sleep(rng.uniform(8.0, 20.0))
        dom = rng.choice(guests).here.domain
        if dom.info().async_job is None:
            continue
        # Too late (the job ended or cannot be aborted now), or refused.
        with suppress(*_FAILURES):
            await dom.abort("operator", timeout=5.0)


async def simulated_workload(
    hub: TraceHub | None = None,
    *,
    domains: int = 3,
    seed: int | None = None,
    on_vm: Callable[[VM], object] | None = None,
) -> NoReturn:
    """Run the workload on ``domains`` VMs until cancelled.

    Their domains' trace goes to ``hub`` (default
    :data:`jobctl.default_trace_hub`). ``seed`` draws the VMs' sizes and
    every pause and choice; the interleaving follows the clock. Cancelled,
    the flows clean up (a migration or a backup is cancelled in QEMU) while
    their QEMUs still run, then every simulated QEMU stops, within
    :data:`STOP_TIMEOUT` seconds. ``on_vm`` is called with each VM (each
    host's view of it) as it is made, before its first job
    (``jobctl.metrics.JobMetrics.add``, say).
    """
    if isinstance(domains, bool) or not isinstance(domains, int) or domains < 1:
        raise ValueError(f"domains must be an int of at least 1, not {domains!r}")
    flows = anyio.CancelScope()
    # The hosts outlive the flows: the caller's cancellation reaches the
    # flows only, and the hosts close once the flows have ended.
    hosts = anyio.CancelScope(shield=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_run, flows, hosts, hub, domains, random.Random(seed), on_vm)
        try:
            await anyio.sleep_forever()
        finally:
            flows.cancel()
            hosts.deadline = anyio.current_time() + STOP_TIMEOUT
    raise AssertionError("unreachable")  # pragma: no cover


async def _run(
    flows: anyio.CancelScope,
    hosts: anyio.CancelScope,
    hub: TraceHub | None,
    domains: int,
    rng: random.Random,
    on_vm: Callable[[VM], object] | None,
) -> None:
    with hosts:
        async with open_demo_hosts(command_latency=COMMAND_LATENCY) as demo:
            with flows:
                guests = [
                    await _start_guest(index, demo.hosts, hub, random.Random(rng.random()), on_vm)
                    for index in range(1, domains + 1)
                ]
                async with anyio.create_task_group() as tg:
                    for guest in guests:
                        tg.start_soon(_jobs, guest, random.Random(rng.random()))
                        tg.start_soon(_domstats, guest, random.Random(rng.random()))
                    tg.start_soon(_operator, guests, random.Random(rng.random()))
