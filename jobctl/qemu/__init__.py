"""Ready-made QEMU job flows over QMP, built on jobctl's job core.

A :class:`Host` runs machines, real QEMU (:func:`open_qemu_host`) or
simulated (:func:`jobctl.testing.open_simulated_host`); a :class:`VM` is one host's view of
a virtual machine (its :class:`jobctl.Domain` and, while it runs there, its
:class:`Machine`). The flows are async jobs with named phases that wait for
QEMU's events inside interruptible sections, so queries and aborts get
through while they run::

    network = jobctl_simulators.qemu.SimulatedHost(network=True)  # what both hosts share
    async with (
        open_simulated_host("a", sim=network) as a,
        open_simulated_host("b", sim=network) as b,
    ):
        src, dst = VM(Domain("vm1@a"), a), VM(Domain("vm1@b"), b)
        await start(src, MachineSpec(disk=await a.create_disk("vm1", 64)))
        await migrate(src, dst)             # MIGRATION_OUT on src, MIGRATION_IN on dst
        stats = await domstats(dst.domain)  # a QUERY job
        await destroy(dst)

The flows: :func:`start`, :func:`migrate`, :func:`backup`, :func:`save`,
:func:`restore`, :func:`destroy`; :func:`domstats` for queries. Each flow's
result tells how long its domain was closed to queries (:class:`ClosedTime`).
``vm.observed`` is what is known of a VM without asking QEMU
(:class:`ObservedState`, kept by its :class:`Observer`); it never waits.
:class:`QemuRecovery` settles their async jobs after a crash, with
:func:`jobctl.journal.recover`.
``jobctl demo`` runs migrations with domstats in a tight loop
(:mod:`jobctl.demo`); ``examples/migrate_with_domstats.py`` is the
same, written out.
"""

from jobctl._public import publish
from jobctl.qemu._backup import BackupResult, BackupTarget, backup, qcow2_target
from jobctl.qemu._block_jobs import QemuBlockJobs
from jobctl.qemu._domstats import DomainStats, domstats, observed_stats
from jobctl.qemu._errors import (
    BackupError,
    FlowError,
    MachineError,
    MachineSpecError,
    MachineStartError,
    MigrationError,
    NotRunningError,
    RestoreError,
    SaveError,
)
from jobctl.qemu._host import MachineBackend, QemuHost, RunningQemu, open_host
from jobctl.qemu._latency import LatencyHistogram, LatencySummary, percentile
from jobctl.qemu._lifecycle import destroy, start
from jobctl.qemu._machine import DiskImage, Host, Machine, MachineSpec
from jobctl.qemu._migration import MigrationOptions, MigrationResult, migrate
from jobctl.qemu._observed import (
    BlockStats,
    ObservedBlock,
    ObservedJob,
    ObservedMigration,
    ObservedRun,
    ObservedState,
    Observer,
    Stamp,
)
from jobctl.qemu._progress import MigrationProgress
from jobctl.qemu._qemu_host import ProcessBackend, open_qemu_host
from jobctl.qemu._recovery import (
    DESTINATION_PROCESS,
    DESTINATION_QMP,
    PROCESS,
    QMP,
    SOURCE_PROCESS,
    SOURCE_QMP,
    Attach,
    QemuProcess,
    QemuRecovery,
    QemuRecoveryError,
    QemuRecoveryStatistics,
    QemuRef,
    QemuUnreachableError,
    attach_unix,
    process_record,
)
from jobctl.qemu._restore import RestoreResult, restore
from jobctl.qemu._save import SaveResult, save
from jobctl.qemu._vm import VM
from jobctl.qemu._wait import ClosedTime

__all__ = [
    "DESTINATION_PROCESS",
    "DESTINATION_QMP",
    "PROCESS",
    "QMP",
    "SOURCE_PROCESS",
    "SOURCE_QMP",
    "VM",
    "Attach",
    "BackupError",
    "BackupResult",
    "BackupTarget",
    "BlockStats",
    "ClosedTime",
    "DiskImage",
    "DomainStats",
    "FlowError",
    "Host",
    "LatencyHistogram",
    "LatencySummary",
    "Machine",
    "MachineBackend",
    "MachineError",
    "MachineSpec",
    "MachineSpecError",
    "MachineStartError",
    "MigrationError",
    "MigrationOptions",
    "MigrationProgress",
    "MigrationResult",
    "NotRunningError",
    "ObservedBlock",
    "ObservedJob",
    "ObservedMigration",
    "ObservedRun",
    "ObservedState",
    "Observer",
    "ProcessBackend",
    "QemuBlockJobs",
    "QemuHost",
    "QemuProcess",
    "QemuRecovery",
    "QemuRecoveryError",
    "QemuRecoveryStatistics",
    "QemuRef",
    "QemuUnreachableError",
    "RestoreError",
    "RestoreResult",
    "RunningQemu",
    "SaveError",
    "SaveResult",
    "Stamp",
    "attach_unix",
    "backup",
    "destroy",
    "domstats",
    "migrate",
    "observed_stats",
    "open_host",
    "open_qemu_host",
    "percentile",
    "process_record",
    "qcow2_target",
    "restore",
    "save",
    "start",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
