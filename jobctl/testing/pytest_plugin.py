"""pytest fixtures for testing job flows built on jobctl.

Enable them with ``pytest_plugins = ["jobctl.testing.pytest_plugin"]`` in
your top-level ``conftest.py`` (or ``pytest -p jobctl.testing.pytest_plugin``),
or import the ones you want into a ``conftest.py``.

* ``jobctl_trace`` - a :class:`~jobctl.testing.TraceRecorder` with its own
  hub; at teardown the recorded trace must keep every invariant.
* ``simulated_host`` - a :class:`~simulators.qemu.SimulatedHost`; at
  teardown its detector must have seen no connection with two commands in
  flight.
* ``simulated_vm`` - (async, for ``@pytest.mark.anyio`` tests) a running
  :class:`~jobctl.testing.SimulatedVM` called ``"vm"`` on that host: the
  simulated QEMU, jobctl's QMP client and a domain traced into
  ``jobctl_trace``. Start more with :func:`~jobctl.testing.open_simulated_vm`.

Hypothesis tests cannot use function-scoped fixtures; there, call
:func:`~jobctl.testing.run_virtual` per example and use
:class:`~jobctl.testing.TraceRecorder` and
:func:`~jobctl.testing.open_simulated_vm` directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from jobctl.testing._recorder import TraceRecorder
from jobctl.testing._simulated import SimulatedVM, open_simulated_vm
from simulators.qemu import ConcurrencyDetector, SimulatedHost

__all__ = ["jobctl_trace", "simulated_host", "simulated_vm"]


@pytest.fixture
def jobctl_trace() -> Iterator[TraceRecorder]:
    """Record a trace; the test fails at teardown if it breaks an invariant."""
    with TraceRecorder() as recorder:
        yield recorder
    recorder.check()


@pytest.fixture
def simulated_host() -> Iterator[SimulatedHost]:
    """A host for simulated VMs; the test fails at teardown if any of their
    monitors ever had two commands in flight."""
    host = SimulatedHost(detector=ConcurrencyDetector())
    yield host
    violations = host.detector.violations()
    if violations:
        pytest.fail(
            "the simulated VMs saw commands sent while another was unanswered: "
            + "; ".join(f"{v.command!r} while {v.pending!r} on {v.connection}" for v in violations),
            pytrace=False,
        )


@pytest.fixture
async def simulated_vm(
    simulated_host: SimulatedHost, jobctl_trace: TraceRecorder
) -> AsyncIterator[SimulatedVM]:
    """A simulated VM called ``"vm"`` with a traced domain over QMP."""
    async with open_simulated_vm("vm", host=simulated_host, trace=jobctl_trace.hub) as vm:
        yield vm
