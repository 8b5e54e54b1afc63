"""The migration-with-domstats demo: ``jobctl demo`` as a library.

:func:`run_demo` runs migrations (or backups, saves) of several VMs with
domstats in a tight loop beside them, on the simulator or on real QEMU
(:func:`open_demo_hosts`), and checks every trace event against the
isolation invariants (:class:`jobctl.testing.InvariantChecker`). It sits
above the flows, the test toolkit and the feed; nothing below imports it.

:func:`simulated_workload` runs migrations, backups, domstats and aborts on
simulated hosts until cancelled: what ``jobctl serve`` shows in its feed.
"""

from jobctl._public import publish
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
from jobctl.demo._workload import simulated_workload

__all__ = [
    "JOBS",
    "NOUNS",
    "DemoConfig",
    "DemoCounters",
    "DemoHosts",
    "DemoReport",
    "open_demo_hosts",
    "run_demo",
    "simulated_workload",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
