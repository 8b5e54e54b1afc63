"""A trace recorder for the core's unit tests (their monitor is
:class:`jobctl.testing.ScriptedMonitor`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jobctl


def echo(command: str, arguments: Mapping[str, Any]) -> Any:
    """A :class:`~jobctl.testing.ScriptedMonitor` responder: the reply says
    what was asked."""
    return {"command": command, "arguments": dict(arguments)}


class Recorder:
    def __init__(self) -> None:
        self.hub = jobctl.TraceHub()
        self.events: list[jobctl.TraceEvent] = []
        self.hub.subscribe(self.events.append)

    def kinds(self, domain: str | None = None) -> list[str]:
        return [e.kind.value for e in self.events if domain is None or e.domain == domain]

    def of(self, kind: jobctl.TraceKind) -> list[jobctl.TraceEvent]:
        return [e for e in self.events if e.kind is kind]
