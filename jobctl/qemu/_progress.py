"""A migration's progress, read from ``query-migrate``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, final

import attrs

__all__ = ["ACTIVE_STATUSES", "TERMINAL_STATUSES", "MigrationProgress"]

#: Statuses after which a migration changes no more.
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
#: Statuses of a migration under way (QEMU 7.2's MigrationStatus).
ACTIVE_STATUSES: Final = frozenset(
    {
        "setup",
        "active",
        "pre-switchover",
        "device",
        "cancelling",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "wait-unplug",
        "colo",
    }
)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


@final
@attrs.frozen
class MigrationProgress:
    """One ``query-migrate`` answer. Times are in milliseconds, sizes in bytes;
    a member QEMU did not report is ``None``."""

    status: str
    total_time: int | None = None
    setup_time: int | None = None
    downtime: int | None = None
    expected_downtime: int | None = None
    transferred: int | None = None
    remaining: int | None = None
    total: int | None = None
    mbps: float | None = None
    dirty_sync_count: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the members, by their names (docs/JSON.md)."""
        return attrs.asdict(self)

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> MigrationProgress:
        """Parse a ``query-migrate`` reply. A QEMU that never migrated answers
        ``{}``: its status is ``"none"``."""
        if type(reply) is not dict and not isinstance(reply, Mapping):
            raise TypeError(f"query-migrate answered {reply!r}, not an object")
        ram = reply.get("ram")
        if type(ram) is not dict and not isinstance(ram, Mapping):
            ram = {}
        mbps = ram.get("mbps")
        status = reply.get("status")
        error = reply.get("error-desc")
        return cls(
            status=status if isinstance(status, str) else "none",
            total_time=_int(reply.get("total-time")),
            setup_time=_int(reply.get("setup-time")),
            downtime=_int(reply.get("downtime")),
            expected_downtime=_int(reply.get("expected-downtime")),
            transferred=_int(ram.get("transferred")),
            remaining=_int(ram.get("remaining")),
            total=_int(ram.get("total")),
            mbps=float(mbps) if isinstance(mbps, int | float) else None,
            dirty_sync_count=_int(ram.get("dirty-sync-count")),
            error=error if isinstance(error, str) else None,
        )

    @property
    def active(self) -> bool:
        """Whether the migration is under way."""
        return self.status in ACTIVE_STATUSES

    @property
    def percent(self) -> float | None:
        """How much of the RAM was sent, 0 to 100 (a guess: pages dirtied
        again are sent again)."""
        if not self.total or self.remaining is None:
            return None
        return max(0.0, min(100.0, 100.0 * (self.total - self.remaining) / self.total))

    def as_dict(self) -> dict[str, Any]:
        """The members QEMU reported, for ``ajob.set_progress`` and JSON."""
        data = {key: value for key, value in attrs.asdict(self).items() if value is not None}
        percent = self.percent
        if percent is not None:
            data["percent"] = round(percent, 1)
        return data
