"""An in-memory monitor and a trace recorder for the core's unit tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

import jobctl


class MemoryMonitor:
    """Answers every command after ``latency`` seconds; counts overlaps."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.in_flight = 0
        self.max_in_flight = 0
        self.commands: list[str] = []
        self.closed = False
        self.gate: anyio.Event | None = None

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        if self.closed:
            raise jobctl.MonitorClosedError("monitor closed")
        self.commands.append(command)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.latency:
                await anyio.sleep(self.latency)
            else:
                await anyio.lowlevel.checkpoint()
        finally:
            self.in_flight -= 1
        return {"command": command, "arguments": dict(arguments or {})}


class Recorder:
    def __init__(self) -> None:
        self.hub = jobctl.TraceHub()
        self.events: list[jobctl.TraceEvent] = []
        self.hub.subscribe(self.events.append)

    def kinds(self, domain: str | None = None) -> list[str]:
        return [e.kind.value for e in self.events if domain is None or e.domain == domain]

    def of(self, kind: jobctl.TraceKind) -> list[jobctl.TraceEvent]:
        return [e for e in self.events if e.kind is kind]
