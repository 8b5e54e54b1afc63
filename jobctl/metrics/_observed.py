"""A VM's observed state as metrics (:attr:`jobctl.qemu.VM.observed`).

What jobctl last learnt of each VM's QEMU without asking it: the run state,
the migration and its figures, the block devices' counters, the phase of the
async job; and, for each observation, how old it is. A value never observed
has no sample (rather than a made-up zero); its age neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from jobctl.qemu import ObservedState

__all__ = ["observed_families"]

_MS: Final = 1e-3


def _gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=("domain", *labels))


def _counter(name: str, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=("domain", "device"))


def observed_families(states: Sequence[ObservedState]) -> list[Metric]:
    """The observed-state families, one sample set per VM of ``states``
    (snapshots taken on the event loop's thread, so ages are on its clock)."""
    status = InfoMetricFamily(
        "jobctl_vm_status", "The VM's QEMU run state as last observed.", labels=("domain",)
    )
    running = _gauge("jobctl_vm_running", "Whether the VM's guest ran when last observed (1).")
    migration = InfoMetricFamily(
        "jobctl_vm_migration", "The VM's migration status as last observed.", labels=("domain",)
    )
    figures = {
        "transferred": _gauge(
            "jobctl_vm_migration_transferred_bytes", "RAM the migration has sent (query-migrate)."
        ),
        "remaining": _gauge(
            "jobctl_vm_migration_remaining_bytes", "RAM the migration has still to send."
        ),
        "total": _gauge("jobctl_vm_migration_total_bytes", "The guest RAM the migration sends."),
        "passes": _gauge("jobctl_vm_migration_passes", "Passes the migration made over RAM."),
        "dirty_rate": _gauge(
            "jobctl_vm_migration_dirty_bytes_per_second", "The rate the guest dirties its RAM."
        ),
    }
    expected_downtime = _gauge(
        "jobctl_vm_migration_expected_downtime_seconds",
        "The downtime QEMU expects for the migration's switchover.",
    )
    downtime = _gauge(
        "jobctl_vm_migration_downtime_seconds", "The downtime of the completed migration."
    )
    block = {
        "rd_bytes": _counter("jobctl_vm_block_read_bytes", "Bytes read by a block device."),
        "wr_bytes": _counter("jobctl_vm_block_written_bytes", "Bytes written by a block device."),
        "rd_operations": _counter("jobctl_vm_block_reads", "Reads by a block device."),
        "wr_operations": _counter("jobctl_vm_block_writes", "Writes by a block device."),
        "flush_operations": _counter("jobctl_vm_block_flushes", "Flushes by a block device."),
    }
    phase_age = _gauge(
        "jobctl_vm_job_phase_seconds",
        "How long the VM's async job has been in its phase (when a jobctl flow named it).",
    )
    age = _gauge(
        "jobctl_vm_observation_age_seconds",
        "How old each observation of the VM is: run, migration, migration_figures, block.",
        "observation",
    )
    for state in states:
        d = (state.domain,)
        run = state.run
        if run is not None:
            status.add_metric(d, {"status": run.status})
            running.add_metric(d, run.running)
            age.add_metric((*d, "run"), state.age(run.observed))
        mig = state.migration
        if mig is not None:
            migration.add_metric(d, {"status": mig.status})
            age.add_metric((*d, "migration"), state.age(mig.observed))
            if mig.figures is not None:
                age.add_metric((*d, "migration_figures"), state.age(mig.figures))
            for field, family in figures.items():
                figure = getattr(mig, field)
                if figure is not None:
                    family.add_metric(d, figure)
            if mig.expected_downtime is not None:
                expected_downtime.add_metric(d, mig.expected_downtime * _MS)
            if mig.downtime is not None:
                downtime.add_metric(d, mig.downtime * _MS)
        blk = state.block
        if blk is not None:
            age.add_metric((*d, "block"), state.age(blk.observed))
            for device in blk.devices:
                for field, counter in block.items():
                    counter.add_metric((*d, device.device), getattr(device, field))
        job = state.job
        if job is not None and job.phase_since is not None and state.monotonic is not None:
            phase_age.add_metric(d, max(0.0, state.monotonic - job.phase_since))
    return [
        status,
        running,
        migration,
        *figures.values(),
        expected_downtime,
        downtime,
        *block.values(),
        phase_age,
        age,
    ]
