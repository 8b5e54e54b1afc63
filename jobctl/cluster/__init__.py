"""Several managers, one database: domain ownership with fencing tokens.

Each manager owns its domains through lease rows in the shared PostgreSQL
journal (owner, epoch, expiry on the database's clock): :class:`Ownership`
takes them, renews them in the background and says when one is lost. The
journal writes every change of an owned domain with its epoch
(``Journal(store, fence=ownership)``) and the store refuses a stale one
(:class:`jobctl.journal.StaleEpochError`); :class:`FencedMonitor` refuses
monitor commands once the lease is gone (:class:`LeaseLostError`). A manager
that takes over the domains of one that died or stopped answering runs
``recover(journal, domains=await ownership.take_over())``.

See ``docs/CLUSTER.md`` for the guarantees and their limits.
"""

import types as _types

from ._errors import ClusterError, LeaseLostError
from ._monitor import FencedMonitor, MonitorFence
from ._ownership import LeaseState, LeaseStatus, Ownership

__all__ = [
    "ClusterError",
    "FencedMonitor",
    "LeaseLostError",
    "LeaseState",
    "LeaseStatus",
    "MonitorFence",
    "Ownership",
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
