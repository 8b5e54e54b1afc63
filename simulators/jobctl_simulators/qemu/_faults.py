"""Fault injection: what can go wrong between a client and QEMU.

A :class:`FaultPlan` is a frozen value: scripted :class:`FaultRule` s (this
command, its n-th time, this fault) and, optionally, random faults drawn from
a seeded generator, so a run is reproducible from its seed. Each VM turns its
plan into a :class:`FaultInjector`, which is asked once per well-formed
request, after QEMU's own checks (negotiation, unknown command) and before the
command runs.

The faults:

* :class:`Latency` - the reply comes ``seconds`` late; the command ran at once
  and its events were sent on time.
* :class:`Stall` - the VM's main loop freezes for ``seconds`` before running
  the command: every command of every monitor waits (like the migration
  switchover).
* :class:`Drop` - the connection closes instead of answering (after running
  the command, or without running it).
* :class:`Garbage` - bytes that are not QMP are sent instead of the reply; the
  command ran and the connection stays open.
* :class:`ErrorReply` - an error reply instead of running the command.
* :class:`Die` - the QEMU process dies on receiving the command: every
  connection of the VM closes, and the CLI process exits.

These values are the one vocabulary of faults: ``jobctl.testing``
re-exports them, and its in-memory ``ScriptedMonitor`` takes the same rules
(a monitor of one connection: a stall and a late reply look alike there).
Each prints as the Python that builds it, leaving out fields at their
defaults: ``FaultRule(Stall(0.35), command='migrate', nth=2)``.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Iterable
from typing import Any, Final, final

import attrs

from ._errors import GENERIC_ERROR

__all__ = [
    "Die",
    "Drop",
    "ErrorReply",
    "Fault",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "Garbage",
    "Latency",
    "Stall",
]


class _Printed:
    """Prints as the Python that builds it: the first ``_positional`` fields
    by position, the others by name and only when they differ from their
    defaults (Hypothesis's pretty printer too)."""

    __slots__ = ()
    _positional = 0

    def __repr__(self) -> str:
        parts: list[str] = []
        cls: Any = type(self)  # an attrs class: every subclass is one
        for index, field in enumerate(attrs.fields(cls)):
            value = getattr(self, field.name)
            if index < self._positional:
                parts.append(repr(value))
            elif field.default is attrs.NOTHING or value != field.default:
                parts.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@final
@attrs.frozen(repr=False)
class Latency(_Printed):
    """Answer ``seconds`` late (the command itself runs at once)."""

    _positional = 1

    seconds: float = attrs.field(validator=_non_negative)


@final
@attrs.frozen(repr=False)
class Stall(_Printed):
    """Freeze the whole VM for ``seconds`` before running the command."""

    _positional = 1

    seconds: float = attrs.field(validator=_non_negative)


@final
@attrs.frozen(repr=False)
class Drop(_Printed):
    """Close the connection instead of answering; ``execute`` says whether the
    command ran first."""

    execute: bool = True


@final
@attrs.frozen(repr=False)
class Garbage(_Printed):
    """Send ``data`` instead of the reply (the command ran)."""

    data: bytes = b"\x00\xff garbage {\n"

    def __attrs_post_init__(self) -> None:
        if not self.data:
            raise ValueError("Garbage.data must not be empty")


@final
@attrs.frozen(repr=False)
class ErrorReply(_Printed):
    """Answer with this error instead of running the command."""

    desc: str = "injected fault"
    error_class: str = GENERIC_ERROR


@final
@attrs.frozen(repr=False)
class Die(_Printed):
    """The process dies. ``exit_status`` follows :mod:`subprocess`: negative
    means killed by that signal (the CLI really kills itself with it)."""

    exit_status: int = -9


Fault = Latency | Stall | Drop | Garbage | ErrorReply | Die

#: What :meth:`FaultPlan.random` draws from unless told otherwise.
DEFAULT_RANDOM_FAULTS: Final[tuple[Fault, ...]] = (
    Latency(0.05),
    Latency(1.0),
    Stall(0.35),
    Drop(),
    Drop(execute=False),
    Garbage(),
    ErrorReply(),
    Die(),
)


@final
@attrs.frozen(repr=False)
class FaultRule(_Printed):
    """Inject ``fault`` into ``command`` (any command if None), on its
    ``nth`` occurrence (1-based, counted per VM among the commands this rule
    matches) or on every occurrence if ``nth`` is None."""

    _positional = 1

    fault: Fault
    command: str | None = None
    nth: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.nth is not None and self.nth < 1:
            raise ValueError(f"FaultRule.nth counts from 1, got {self.nth}")

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        """Parse ``COMMAND[#N]=KIND[:ARG]`` (``*`` for any command), e.g.
        ``query-migrate#3=drop``, ``*=latency:0.2``, ``migrate=error:boom``,
        ``quit=die:-9``, ``stop=drop:before``, ``cont=garbage``, ``*=stall:0.35``."""
        target, sep, fault_spec = spec.partition("=")
        if not sep or not target or not fault_spec:
            raise ValueError(f"fault spec {spec!r} is not COMMAND[#N]=KIND[:ARG]")
        name, hash_sign, nth_text = target.partition("#")
        nth: int | None = None
        if hash_sign:
            if not nth_text.isdigit():
                raise ValueError(f"fault spec {spec!r}: occurrence {nth_text!r} is not a number")
            nth = int(nth_text)
        kind, _, arg = fault_spec.partition(":")
        fault: Fault
        try:
            if kind == "latency":
                fault = Latency(float(arg))
            elif kind == "stall":
                fault = Stall(float(arg))
            elif kind == "drop" and arg in ("", "before"):
                fault = Drop(execute=arg != "before")
            elif kind == "garbage" and not arg:
                fault = Garbage()
            elif kind == "error":
                fault = ErrorReply(arg) if arg else ErrorReply()
            elif kind == "die":
                fault = Die(int(arg)) if arg else Die()
            else:
                raise ValueError(f"unknown fault {fault_spec!r}")
        except ValueError as exc:
            raise ValueError(f"fault spec {spec!r}: {exc}") from None
        return cls(fault, None if name == "*" else name, nth)


#: How many injected faults a :class:`FaultInjector` remembers by default.
DEFAULT_HISTORY: Final = 1000


def _probability(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


def _rule_tuple(rules: Iterable[FaultRule]) -> tuple[FaultRule, ...]:
    return tuple(rules)


def _fault_tuple(faults: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(faults)


def _command_set(commands: Iterable[str] | None) -> frozenset[str] | None:
    return None if commands is None else frozenset(commands)


@final
@attrs.frozen(repr=False)
class FaultPlan(_Printed):
    """Scripted rules, plus random faults with ``probability`` per command
    drawn from ``random.Random(seed)``. Random faults spare
    ``qmp_capabilities`` unless ``random_commands`` names it."""

    rules: tuple[FaultRule, ...] = attrs.field(default=(), converter=_rule_tuple)
    seed: int = 0
    probability: float = attrs.field(default=0.0, validator=_probability)
    random_faults: tuple[Fault, ...] = attrs.field(
        default=DEFAULT_RANDOM_FAULTS, converter=_fault_tuple
    )
    random_commands: frozenset[str] | None = attrs.field(default=None, converter=_command_set)

    def __attrs_post_init__(self) -> None:
        if self.probability > 0 and not self.random_faults:
            raise ValueError("a FaultPlan with a probability needs random_faults")

    @classmethod
    def random(
        cls,
        seed: int,
        probability: float = 0.05,
        faults: Iterable[Fault] = DEFAULT_RANDOM_FAULTS,
        commands: Iterable[str] | None = None,
    ) -> FaultPlan:
        """Random faults only: reproducible from ``seed``."""
        return cls(
            seed=seed, probability=probability, random_faults=faults, random_commands=commands
        )

    @classmethod
    def parse(cls, specs: Iterable[str]) -> FaultPlan:
        """Scripted rules from :meth:`FaultRule.parse` specs."""
        return cls([FaultRule.parse(spec) for spec in specs])

    def injector(self, *, history: int = DEFAULT_HISTORY) -> FaultInjector:
        """A fresh injector for one VM, remembering the last ``history`` faults."""
        return FaultInjector(self, history=history)


@final
class FaultInjector:
    """Decides, command by command, which fault (if any) one VM suffers.

    Memory is bounded: :attr:`injected` keeps the last ``history`` faults,
    :attr:`injected_total` counts them all.
    """

    def __init__(self, plan: FaultPlan, *, history: int = DEFAULT_HISTORY) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history!r}")
        self.plan = plan
        self._rules = list(plan.rules)
        self._matches = [0] * len(self._rules)
        self._random = random.Random(plan.seed)
        #: The last ``history`` faults injected, oldest first: (command, fault).
        self.injected: collections.deque[tuple[str, Fault]] = collections.deque(maxlen=history)
        #: How many faults were injected in all.
        self.injected_total = 0

    def add(self, rule: FaultRule) -> None:
        """Script one more rule while the VM runs (its count starts now)."""
        self._rules.append(rule)
        self._matches.append(0)

    def decide(self, command: str) -> Fault | None:
        """The fault for this request of ``command``, if any."""
        fault = self._scripted(command) or self._drawn(command)
        if fault is not None:
            self.injected.append((command, fault))
            self.injected_total += 1
        return fault

    def _scripted(self, command: str) -> Fault | None:
        chosen: Fault | None = None
        for index, rule in enumerate(self._rules):
            if rule.command is not None and rule.command != command:
                continue
            self._matches[index] += 1
            if chosen is None and (rule.nth is None or rule.nth == self._matches[index]):
                chosen = rule.fault
        return chosen

    def _drawn(self, command: str) -> Fault | None:
        plan = self.plan
        if plan.probability <= 0:
            return None
        if plan.random_commands is None:
            if command == "qmp_capabilities":
                return None
        elif command not in plan.random_commands:
            return None
        # Draw both numbers every time, so one command's outcome does not
        # shift the stream for the next ones.
        roll = self._random.random()
        pick = self._random.randrange(len(plan.random_faults))
        return plan.random_faults[pick] if roll < plan.probability else None
