"""The migration-with-domstats demo: ``jobctl demo`` as a library.

:func:`run_demo` runs migrations (or backups, saves) of several VMs with
domstats in a tight loop beside them, on the simulator or on real QEMU
(:func:`open_demo_hosts`), and checks every trace event against the
isolation invariants (:class:`jobctl.testing.InvariantChecker`). It sits
above the flows, the test toolkit and the feed; nothing below imports it.
"""

from jobctl.demo._demo import (
    JOBS,
    NOUNS,
    DemoConfig,
    DemoCounters,
    DemoHosts,
    DemoReport,
    open_demo_hosts,
    run_demo,
)

__all__ = [
    "JOBS",
    "NOUNS",
    "DemoConfig",
    "DemoCounters",
    "DemoHosts",
    "DemoReport",
    "open_demo_hosts",
    "run_demo",
]
