"""Scenario plans: frozen, readable descriptions of what the actors of a run do.

A plan is data only; :mod:`jobctl.testing._runner` plays it. Reprs leave out
fields at their defaults and are valid Python (with ``from jobctl import *``
and ``from jobctl.testing import *``), so a shrunk failing scenario can be
pasted into a regression test as is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, final

import attrs

from jobctl._core._kinds import AsyncJob, Job
from jobctl_simulators.qemu import FaultRule, Latency, Stall

__all__ = [
    "AbortPlan",
    "Allow",
    "AsyncJobPlan",
    "Commands",
    "DomainPlan",
    "Fail",
    "Phase",
    "RegularJobPlan",
    "Scenario",
    "Step",
    "Window",
]


def _value_repr(value: object) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, frozenset):
        if not value:
            return "frozenset()"
        inner = ", ".join(sorted(_value_repr(v) for v in value))
        return f"frozenset({{{inner}}})"
    if isinstance(value, tuple):
        inner = ", ".join(_value_repr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _compact_repr(self: Any, positional: int = 0) -> str:
    """``Cls(a, b, key=value)``: the first ``positional`` fields by position,
    the others only when they differ from their defaults."""
    parts: list[str] = []
    for index, field in enumerate(attrs.fields(type(self))):
        value = getattr(self, field.name)
        if index < positional:
            parts.append(_value_repr(value))
            continue
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if default is not attrs.NOTHING and value == default:
            continue
        parts.append(f"{field.name}={_value_repr(value)}")
    return f"{type(self).__name__}({', '.join(parts)})"


class _Readable:
    """Compact repr, used by Hypothesis's pretty printer as well."""

    __slots__ = ()
    _positional = 0

    def __repr__(self) -> str:
        return _compact_repr(self, self._positional)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value!r}")


def _job_kinds(kinds: Iterable[Job]) -> frozenset[Job]:
    result = frozenset(kinds)
    for kind in result:
        if not isinstance(kind, Job):
            raise TypeError(f"expected jobctl.Job kinds, not {kind!r}")
    return result


def _optional_job_kinds(kinds: Iterable[Job] | None) -> frozenset[Job] | None:
    return None if kinds is None else _job_kinds(kinds)


def _steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


def _regular_plans(plans: Iterable[RegularJobPlan]) -> tuple[RegularJobPlan, ...]:
    return tuple(plans)


def _async_plans(plans: Iterable[AsyncJobPlan]) -> tuple[AsyncJobPlan, ...]:
    return tuple(plans)


def _abort_plans(plans: Iterable[AbortPlan]) -> tuple[AbortPlan, ...]:
    return tuple(plans)


def _latencies(latency: Iterable[float]) -> tuple[float, ...]:
    result = tuple(latency)
    if not result or any(not x >= 0 for x in result):
        raise ValueError(f"latency must be a non-empty sequence of numbers >= 0, not {latency!r}")
    return result


def _faults(faults: Iterable[FaultRule]) -> tuple[FaultRule, ...]:
    return tuple(faults)


def _extra_delay(rule: FaultRule) -> float:
    return rule.fault.seconds if isinstance(rule.fault, Latency | Stall) else 0.0


def _domains(domains: Iterable[DomainPlan]) -> tuple[DomainPlan, ...]:
    return tuple(domains)


@final
@attrs.frozen(repr=False)
class RegularJobPlan(_Readable):
    """A regular job: requested at ``start``, it holds the domain ``hold``
    seconds after running ``commands`` monitor commands. ``cancel_after``
    cancels its task that long after ``start``, wherever it is then."""

    _positional = 2
    owner: str
    kind: Job
    start: float = attrs.field(default=0.0, validator=_non_negative)
    hold: float = attrs.field(default=0.0, validator=_non_negative)
    commands: int = attrs.field(default=0, validator=_non_negative)
    nowait: bool = False
    #: The wait timeout; None means the domain's ``wait_timeout``.
    timeout: float | None = attrs.field(default=None, validator=_non_negative)
    cancel_after: float | None = attrs.field(default=None, validator=_non_negative)


@final
@attrs.frozen(repr=False)
class Phase(_Readable):
    """The async job names a new phase."""

    _positional = 1
    name: str


@final
@attrs.frozen(repr=False)
class Commands(_Readable):
    """The async job enters the monitor and runs ``count`` commands."""

    _positional = 1
    count: int = attrs.field(validator=_non_negative)


@final
@attrs.frozen(repr=False)
class Window(_Readable):
    """An interruptible section that lasts ``seconds``. With ``misuse`` the
    job also tries to enter the monitor inside it, which the core must refuse
    with :class:`~jobctl.JobStateError`."""

    _positional = 1
    seconds: float = attrs.field(validator=_non_negative)
    misuse: bool = False


@final
@attrs.frozen(repr=False)
class Allow(_Readable):
    """The async job changes its allowed mask."""

    _positional = 1
    kinds: frozenset[Job] = attrs.field(converter=_job_kinds)


@final
@attrs.frozen(repr=False)
class Fail(_Readable):
    """The async job's body raises :class:`PlannedFailure`."""


#: One step of an async job's flow.
Step = Phase | Commands | Window | Allow | Fail


@final
@attrs.frozen(repr=False)
class AsyncJobPlan(_Readable):
    """An async job requested at ``start`` that runs ``steps`` in order.
    With ``abort_hook``, ``Domain.abort`` sends ``migrate_cancel``;
    ``cancel_after`` cancels its task that long after ``start``."""

    _positional = 2
    owner: str
    kind: AsyncJob
    start: float = attrs.field(default=0.0, validator=_non_negative)
    steps: tuple[Step, ...] = attrs.field(default=(), converter=_steps)
    #: None means jobctl's default mask.
    allowed: frozenset[Job] | None = attrs.field(default=None, converter=_optional_job_kinds)
    abort_hook: bool = True
    timeout: float | None = attrs.field(default=None, validator=_non_negative)
    cancel_after: float | None = attrs.field(default=None, validator=_non_negative)


@final
@attrs.frozen(repr=False)
class AbortPlan(_Readable):
    """``Domain.abort(reason)`` called at ``at``."""

    _positional = 1
    at: float = attrs.field(validator=_non_negative)
    reason: str = "test"
    timeout: float | None = attrs.field(default=None, validator=_non_negative)


@final
@attrs.frozen(repr=False)
class DomainPlan(_Readable):
    """One domain and everything that happens on it. The monitor answers
    after ``latency`` (used command by command, in turn) with ``faults``
    (:class:`~jobctl_simulators.qemu.FaultRule` s: ``nth`` counts the domain's
    commands from 1)."""

    _positional = 1
    name: str
    jobs: tuple[RegularJobPlan, ...] = attrs.field(default=(), converter=_regular_plans)
    async_jobs: tuple[AsyncJobPlan, ...] = attrs.field(default=(), converter=_async_plans)
    aborts: tuple[AbortPlan, ...] = attrs.field(default=(), converter=_abort_plans)
    latency: tuple[float, ...] = attrs.field(default=(0.0,), converter=_latencies)
    faults: tuple[FaultRule, ...] = attrs.field(default=(), converter=_faults)
    wait_timeout: float = attrs.field(default=30.0, validator=_non_negative)
    max_queued: int = attrs.field(default=0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        owners = [j.owner for j in self.jobs] + [a.owner for a in self.async_jobs]
        if len(set(owners)) != len(owners):
            raise ValueError(f"owners must be unique within domain {self.name!r}: {owners}")

    def max_wait(self) -> float:
        """The longest any request of this plan may wait."""
        timeouts = [p.timeout for p in self.jobs]
        timeouts += [p.timeout for p in self.async_jobs]
        timeouts += [p.timeout for p in self.aborts]
        return max([self.wait_timeout, *(t for t in timeouts if t is not None)])

    def horizon(self) -> float:
        """A time by which every actor must have finished, however the
        interleaving went (deadlock otherwise)."""
        latency = max(self.latency) + max(map(_extra_delay, self.faults), default=0.0)
        actors = len(self.jobs) + len(self.async_jobs) + len(self.aborts)
        work = sum(j.hold + j.commands * latency for j in self.jobs)
        for ajob in self.async_jobs:
            for step in ajob.steps:
                if isinstance(step, Window):
                    work += step.seconds + latency
                elif isinstance(step, Commands):
                    work += step.count * latency
            work += 2 * latency  # the abort hook's command
        starts = [p.start for p in self.jobs] + [p.start for p in self.async_jobs]
        starts += [a.at for a in self.aborts]
        return max(starts, default=0.0) + work + (actors + 1) * (self.max_wait() + 1.0)


@final
@attrs.frozen(repr=False)
class Scenario(_Readable):
    """Several independent domains, run together."""

    _positional = 1
    domains: tuple[DomainPlan, ...] = attrs.field(converter=_domains)

    def __attrs_post_init__(self) -> None:
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise ValueError(f"domain names must be unique: {names}")

    def max_wait(self) -> float:
        """The longest any request of any of its domains may wait (the
        largest :meth:`DomainPlan.max_wait`; 0 with no domain).
        """
        return max((d.max_wait() for d in self.domains), default=0.0)

    def horizon(self) -> float:
        """A time by which every actor of every domain must have finished,
        however the interleaving went (deadlock otherwise): the domains run
        independently, so it is the largest :meth:`DomainPlan.horizon`.
        """
        return max((d.horizon() for d in self.domains), default=0.0)
