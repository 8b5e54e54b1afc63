"""A simulated QEMU 7.2 that speaks QMP, for testing without real VMs.

Backend-neutral (anyio: trio or asyncio); every duration is on the event
loop's clock, so tests run in virtual time (``trio.testing.MockClock``).

The pieces::

    host = SimulatedHost(detector=ConcurrencyDetector(strict=True))
    async with SimulatedQemu("src", host=host, disks=[Disk("disk0", device="vd0")]) as src, \\
               SimulatedQemu("dst", host=host, incoming="defer") as dst:
        client = await src.add_monitor().connect_memory()    # an anyio ByteStream
        path = await dst.add_monitor().serve_unix("/tmp/dst.qmp")
        ...                                                  # speak QMP
    host.detector.violation_count

* :class:`SimulatedQemu` - one VM process: run state, monitors
  (:meth:`~SimulatedQemu.add_monitor` returns a :class:`QmpMonitor` with
  ``connect_memory()``, ``serve_unix(path)``, ``serve_tcp(host, port)``),
  migration (:class:`MigrationModel`), block jobs (:class:`Disk`,
  :class:`BackupModel`), faults (:class:`FaultPlan`).
* :class:`SimulatedHost` - VMs of one process: the incoming-migration
  registry keyed by URI, the shared :class:`ConcurrencyDetector`, the clock of
  event timestamps; ``network=True`` for migrations between processes.
* :class:`ConcurrencyDetector` - counts commands a client sent while another
  of its commands was unanswered; ``strict=True`` crashes the VM at the
  first one and raises :class:`ConcurrencyViolationError`.
* Faults: :class:`Latency`, :class:`Stall`, :class:`Drop`,
  :class:`Garbage`, :class:`ErrorReply`, :class:`Die` in
  :class:`FaultRule` s of a :class:`FaultPlan` (scripted, or random from a
  seed; ``jobctl_simulators.qemu.strategies`` has Hypothesis strategies).

Run one from the shell: ``python -m jobctl_simulators.qemu --qmp unix:PATH``
(``--help`` for the options), or in a process of your own with
:func:`main` (``main(["--qmp", "unix:PATH"])`` returns the exit status).

What is faithful to QEMU 7.2 (checked against the real thing by
``tests/conformance``): greeting, negotiation, JSON parse errors, command and
argument errors with QEMU's texts and classes, ``id`` echo, event
timestamps and order (events caused by a command come before its return),
the replies' shapes of the implemented commands, migration and backup-job
state machines and their events. Not modelled: postcopy, multifd, xbzrle,
OOB commands (``oob`` can be negotiated, no command allows it), dirty
bitmaps, block migration, real disk I/O; values (sizes, counters, times) are
plausible, not measured.

Inside, top to bottom (a module imports only modules below it): ``_cli``;
``_vm`` (the process, which puts the rest together); ``_monitor``;
``_session`` (the protocol on one connection); ``_commands``; ``_migration``;
``_host``; then the parts (``_jobs``, ``_block``, ``_links``, ``_faults``,
``_detector``, ``_json``, ``_qapi``, ``_schema``, ``_memory``, ``_ids``, ``_errors``).
A module below ``_vm`` sees the VM through a protocol of what it needs
(``HostedVm``, ``MigratingVm``, ``CommandedVm``, ``SessionVm``, ``MonitorVm``;
:class:`SimulatedQemu` is each of them), never by importing ``_vm``.
"""

from __future__ import annotations

import types as _types

from ._block import Disk
from ._cli import main
from ._detector import (
    ConcurrencyDetector,
    ConcurrencyViolation,
    DetectorStatistics,
    RequestRecord,
)
from ._errors import CommandErrorReply, ConcurrencyViolationError, SimulatorError
from ._faults import (
    Die,
    Drop,
    ErrorReply,
    Fault,
    FaultInjector,
    FaultPlan,
    FaultRule,
    Garbage,
    Latency,
    Stall,
)
from ._host import HostedVm, SimulatedHost
from ._jobs import BackupModel
from ._memory import MemoryByteStream, memory_stream_pair
from ._migration import MigrationModel
from ._monitor import QmpMonitor
from ._schema import COMMAND_ARGUMENTS
from ._vm import CRASH_STATUS, QEMU_VERSION, SimulatedQemu, VmStatistics

#: The names of the simulated QMP commands.
COMMANDS: tuple[str, ...] = tuple(COMMAND_ARGUMENTS)

__all__ = [
    "COMMANDS",
    "CRASH_STATUS",
    "QEMU_VERSION",
    "BackupModel",
    "CommandErrorReply",
    "ConcurrencyDetector",
    "ConcurrencyViolation",
    "ConcurrencyViolationError",
    "DetectorStatistics",
    "Die",
    "Disk",
    "Drop",
    "ErrorReply",
    "Fault",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "Garbage",
    "HostedVm",
    "Latency",
    "MemoryByteStream",
    "MigrationModel",
    "QmpMonitor",
    "RequestRecord",
    "SimulatedHost",
    "SimulatedQemu",
    "SimulatorError",
    "Stall",
    "VmStatistics",
    "main",
    "memory_stream_pair",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
def _private(module: str) -> bool:
    return module.startswith("jobctl") and "._" in module


for _name in __all__:
    _obj = globals().get(_name)  # None: loaded on first use
    if isinstance(_obj, type | _types.FunctionType) and _private(_obj.__module__):
        _obj.__module__ = __name__
del _name, _obj, _private
