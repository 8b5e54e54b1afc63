"""Fencing tokens: which manager may write a domain's part of the journal.

A manager owns a domain through a lease row in the database (owner, epoch,
expiry on the database's clock). Every journal write for an owned domain
carries the writer's :class:`FencingToken`; the store compares it with the
lease row in the same transaction, so a manager whose lease was taken over
(a stale epoch) cannot write, however late its write arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, final

import attrs

from ._errors import StaleEpochError

__all__ = ["Fence", "FencingToken", "LeaseGrant", "LeaseRecord", "stale_epoch"]


@final
@attrs.frozen
class FencingToken:
    """The right to act on ``domain``: held by ``owner`` in ``epoch``. Epochs
    of one domain only grow: each new owner gets a larger one."""

    domain: str
    owner: str
    epoch: int


@final
@attrs.frozen
class LeaseGrant:
    """A lease the database granted or renewed."""

    token: FencingToken
    #: When the lease expires, in seconds since the epoch on the database's clock.
    expires: float
    #: Seconds left at the moment the database wrote the row, on its clock.
    remaining: float


@final
@attrs.frozen
class LeaseRecord:
    """A domain's lease row as the database holds it now."""

    domain: str
    #: None when the last owner released it.
    owner: str | None
    epoch: int
    #: Seconds since the epoch, on the database's clock.
    expires: float
    #: Whether ``expires`` has passed on the database's clock (or the lease
    #: was released): anyone may take the domain.
    expired: bool

    @property
    def token(self) -> FencingToken | None:
        """The current owner's token, if the lease has an owner."""
        return None if self.owner is None else FencingToken(self.domain, self.owner, self.epoch)


class Fence(Protocol):
    """Where a fenced journal finds the tokens it writes with: one manager's
    leases (``jobctl.cluster.Ownership`` is one)."""

    def tokens(self) -> Mapping[str, FencingToken]:
        """The token of each domain this manager holds now, by domain."""
        ...


def stale_epoch(
    domain: str,
    token: FencingToken | None,
    owner: str | None,
    epoch: int | None,
    what: str = "journal write",
) -> StaleEpochError:
    """The error for a ``what`` on ``domain`` carrying ``token`` (None: no
    token) when the lease row says ``owner`` at ``epoch`` (None, None: no
    lease was ever taken; owner None: released)."""
    if token is None:
        mine = f"a {what} for domain {domain!r} carries no epoch"
    else:
        mine = f"{what} for domain {domain!r}: epoch {token.epoch} of {token.owner!r} is stale"
    if epoch is None:
        now = "no manager has ever owned the domain"
    elif owner is None:
        now = f"nobody owns the domain now (epoch {epoch} was released)"
    else:
        now = f"the domain is owned by {owner!r} at epoch {epoch}"
    return StaleEpochError(
        f"{mine}: {now}",
        domain=domain,
        epoch=None if token is None else token.epoch,
        owner=owner,
        current_epoch=epoch,
    )
