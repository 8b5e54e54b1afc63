"""pytest fixtures for testing job flows built on jobctl.

Enable them with ``pytest_plugins = ["jobctl.testing.pytest_plugin"]`` in
your top-level ``conftest.py`` (or ``pytest -p jobctl.testing.pytest_plugin``),
or import the ones you want into a ``conftest.py``.

* ``jobctl_trace`` - a :class:`~jobctl.testing.TraceRecorder` with its own
  hub; at teardown the recorded trace must keep every invariant.
* ``simulated_host`` - a :class:`~jobctl_simulators.qemu.SimulatedHost`; at
  teardown its detector must have seen no connection with two commands in
  flight.
* ``simulated_faults`` - the :class:`~jobctl_simulators.qemu.FaultPlan` of the
  ``simulated_vm`` fixture's monitor. By default drawn per test
  (:func:`~jobctl.testing.drawn_monitor_faults`, seeded by the test's id,
  so a test replays the same every run): every command answers after a
  drawn latency, sometimes after a stall, so a flow that talks to the
  monitor behind the core's back (a command sent while another is in
  flight) is caught by ``simulated_host``. The draw changes only when the
  monitor answers, never what it answers. Override the fixture to choose
  (``FaultPlan()`` for a monitor that answers at once, or error replies,
  drops and deaths of your own).
* ``simulated_vm`` - (async, for ``@pytest.mark.anyio`` tests) a running
  :class:`~jobctl.testing.SimulatedVM` called ``"vm"`` on that host, its
  monitor faulted by ``simulated_faults``: the simulated QEMU, jobctl's QMP
  client and a domain traced into ``jobctl_trace``. Start more with
  :func:`~jobctl.testing.open_simulated_vm`.

Run such tests in virtual time on both backends with
:func:`~jobctl.testing.virtual_backend`::

    @pytest.fixture(params=["trio", "asyncio"])
    def anyio_backend(request):
        return virtual_backend(request.param)

Hypothesis tests cannot use function-scoped fixtures; there, call
:func:`~jobctl.testing.run_virtual` per example and use
:class:`~jobctl.testing.TraceRecorder` and
:func:`~jobctl.testing.open_simulated_vm` (``load=`` the drawn plan)
directly.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

import pytest

from jobctl.testing._recorder import TraceRecorder
from jobctl.testing._simulated import SimulatedVM, drawn_monitor_faults, open_simulated_vm
from jobctl_simulators.qemu import ConcurrencyDetector, FaultPlan, SimulatedHost

__all__ = ["jobctl_trace", "simulated_faults", "simulated_host", "simulated_vm"]


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


def _default_faults(request: pytest.FixtureRequest) -> FaultPlan:
    return drawn_monitor_faults(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def simulated_faults(request: pytest.FixtureRequest) -> FaultPlan:
    """The ``simulated_vm`` monitor's faults: latencies and stalls drawn
    from a seed that is the test's id, the same every run."""
    return _default_faults(request)


@pytest.fixture
async def simulated_vm(
    request: pytest.FixtureRequest, simulated_host: SimulatedHost, jobctl_trace: TraceRecorder
) -> AsyncIterator[SimulatedVM]:
    """A simulated VM called ``"vm"`` with a traced domain over QMP, its
    monitor answering as ``simulated_faults`` says (the default draw when a
    conftest imported this fixture without that one)."""
    try:
        faults: FaultPlan = request.getfixturevalue("simulated_faults")
    except pytest.FixtureLookupError:
        faults = _default_faults(request)
    async with open_simulated_vm(
        "vm", host=simulated_host, faults=faults, trace=jobctl_trace.hub
    ) as vm:
        yield vm
