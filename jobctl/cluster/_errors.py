"""The exceptions of domain ownership."""

from __future__ import annotations

from typing import final

__all__ = ["ClusterError", "LeaseLostError"]


class ClusterError(Exception):
    """Base class of every error of :mod:`jobctl.cluster`."""


@final
class LeaseLostError(ClusterError):
    """This manager may no longer act on ``domain``: its lease of ``epoch``
    was taken over (``owner`` at ``current_epoch`` own it now), released, or
    has run out by the local bound and could not be renewed (``owner`` and
    ``current_epoch`` None when the database could not say). A command
    refused with it was not sent."""

    def __init__(
        self,
        message: str,
        *,
        domain: str,
        epoch: int,
        owner: str | None,
        current_epoch: int | None,
    ) -> None:
        super().__init__(message)
        self.domain = domain
        self.epoch = epoch
        self.owner = owner
        self.current_epoch = current_epoch

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled as made (to another process), not from its message alone.
        fields = {
            "domain": self.domain,
            "epoch": self.epoch,
            "owner": self.owner,
            "current_epoch": self.current_epoch,
        }
        return _rebuild, (type(self), str(self), fields)


def _rebuild(cls: type[LeaseLostError], message: str, fields: dict[str, object]) -> Exception:
    return cls(message, **fields)  # type: ignore[arg-type]
