"""The stateful suite: Hypothesis drives one domain rule by rule.

Rules request regular jobs, run an async job's flow one order at a time
(sections, commands, phases, mask changes), abort, destroy, cancel, break
the monitor and let virtual time pass. After every rule the trace so far
must keep the invariants, and the checker's model of the domain, built
from the trace alone, must agree with ``Domain.info()``. The machine is in
``_machine.py``; each example is one trio run kept alive across its rules
by :class:`jobctl.testing.SteppedRun`.
"""

from __future__ import annotations

from hypothesis import settings

from ._machine import STEPS, DomainMachine

DomainMachine.TestCase.settings = settings(stateful_step_count=STEPS)
TestDomainMachine = DomainMachine.TestCase
