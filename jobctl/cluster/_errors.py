"""The exceptions of domain ownership."""

from __future__ import annotations

from typing import ClassVar, final

from jobctl._pickling import PicklesAsMade

__all__ = ["ClusterError", "LeaseLostError"]


class ClusterError(Exception):
    """Base class of every error of :mod:`jobctl.cluster`."""


@final
class LeaseLostError(PicklesAsMade, ClusterError):
    """This manager may no longer act on ``domain``: its lease of ``epoch``
    was taken over (``owner`` at ``current_epoch`` own it now), released, or
    has run out by the local bound and could not be renewed (``owner`` and
    ``current_epoch`` None when the database could not say). A command
    refused with it was not sent."""

    _fields: ClassVar[tuple[str, ...]] = ("domain", "epoch", "owner", "current_epoch")

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
