"""Shared helpers for the simulator's tests."""

from __future__ import annotations

from typing import Any

from jobctl_simulators.qemu import SimulatedQemu

from .rawqmp import RawQmp

EVENTS_ON = {"capabilities": [{"capability": "events", "state": True}]}


async def client(
    vm: SimulatedQemu, monitor: str | None = None, *, negotiate: bool = True
) -> RawQmp:
    """A raw client on a (new, or the named) monitor of ``vm``."""
    mon = vm.monitors[monitor] if monitor is not None else vm.add_monitor()
    qmp = RawQmp(await mon.connect_memory())
    if negotiate:
        await qmp.negotiate()
    return qmp


def names(events: list[dict[str, Any]]) -> list[str]:
    """Event names, with the status for MIGRATION and JOB_STATUS_CHANGE."""
    out = []
    for event in events:
        data = event.get("data", {})
        if event["event"] in ("MIGRATION", "JOB_STATUS_CHANGE"):
            out.append(f"{event['event']}:{data['status']}")
        elif event["event"] == "MIGRATION_PASS":
            out.append(f"MIGRATION_PASS:{data['pass']}")
        else:
            out.append(event["event"])
    return out
