"""One manager's domain leases: taken, renewed in the background, watched."""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import final

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from jobctl.journal import (
    FencedJournalStore,
    FencingToken,
    JournalError,
    LeaseGrant,
    LeaseHeldError,
    StaleEpochError,
)

from ._errors import ClusterError, LeaseLostError

__all__ = ["LeaseState", "LeaseStatus", "Ownership"]


class LeaseState(enum.Enum):
    """Where one of this manager's leases stands."""

    #: Renewed in time: the manager may act on the domain.
    HELD = "held"
    #: Not renewed within its duration minus the margin, by the local clock
    #: (the database may be unreachable): commands are refused until a
    #: renewal succeeds.
    EXPIRED = "expired"
    #: Another manager took the domain, or it was released: final.
    LOST = "lost"


@final
@attrs.frozen
class LeaseStatus:
    """A lease of this manager, as it knows it now."""

    token: FencingToken
    state: LeaseState
    #: The local monotonic time until which the lease surely holds: when it
    #: was asked for, plus what the database granted, minus the margin.
    valid_until: float
    #: Once LOST: who owns the domain now and in which epoch (None: nobody,
    #: or unknown).
    owner: str | None = None
    current_epoch: int | None = None

    @property
    def domain(self) -> str:
        """The domain."""
        return self.token.domain


@final
class _Lease:
    __slots__ = ("current_epoch", "lost", "lost_event", "owner", "token", "valid_until")

    def __init__(self, token: FencingToken, valid_until: float) -> None:
        self.token = token
        self.valid_until = valid_until
        self.lost = False
        self.owner: str | None = None
        self.current_epoch: int | None = None
        self.lost_event = anyio.Event()


@final
class Ownership:
    """The domains one manager owns, through lease rows in a shared database.

    ``owner`` names this manager, uniquely among the running managers (a
    host name plus a process id, say). A lease lasts ``duration`` seconds on
    the database's clock and is renewed every ``renew_interval`` seconds by
    :meth:`run`, the background renewer (start it in a task group). By the
    local clock a lease counts only until the moment it was asked for plus
    what the database granted minus ``margin``: a manager that was stopped,
    or cannot reach the database, stops acting before another manager may
    take the domain over (the margin covers the clocks' rate difference and
    the time a command takes to reach its target).

    Give it to the journal (``Journal(store, fence=ownership)``): every write
    of an owned domain carries its token. Put :class:`FencedMonitor` in front
    of each owned domain's monitor. A lost lease is final: its status says
    who owns the domain now, :meth:`wait_lost` returns it, and
    :meth:`check` raises :class:`LeaseLostError`.
    """

    def __init__(
        self,
        store: FencedJournalStore,
        owner: str,
        *,
        duration: float = 10.0,
        margin: float | None = None,
        renew_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(store, FencedJournalStore):
            raise TypeError(
                f"domain ownership needs a store that keeps leases (PostgresJournalStore),"
                f" not {store!r}"
            )
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"an owner is a non-empty string, not {owner!r}")
        if not (isinstance(duration, int | float) and math.isfinite(duration) and duration > 0):
            raise ValueError(f"a lease duration is a positive number of seconds, not {duration!r}")
        margin = duration / 5 if margin is None else margin
        if not 0 <= margin < duration:
            raise ValueError(f"margin must be >= 0 and below the duration {duration}, not {margin}")
        renew_interval = (duration - margin) / 3 if renew_interval is None else renew_interval
        if not 0 < renew_interval < duration - margin:
            raise ValueError(
                f"renew_interval must be positive and below duration - margin"
                f" ({duration - margin}), not {renew_interval}"
            )
        self._store = store
        self._owner = owner
        self._duration = float(duration)
        self._margin = float(margin)
        self._interval = float(renew_interval)
        self._clock = clock
        self._leases: dict[str, _Lease] = {}

    @property
    def owner(self) -> str:
        """This manager's name in the lease rows."""
        return self._owner

    @property
    def duration(self) -> float:
        """How long a lease lasts on the database's clock, in seconds."""
        return self._duration

    def __repr__(self) -> str:
        held = sum(1 for lease in self._leases.values() if not lease.lost)
        return f"<Ownership {self._owner!r}: {held} domains held>"

    # -- taking and giving up --------------------------------------------------------

    def _bound(self, asked: float, grant: LeaseGrant) -> float:
        return asked + min(grant.remaining, self._duration) - self._margin

    async def acquire(self, domain: str) -> FencingToken:
        """Take ``domain`` (it must be free or expired on the database's
        clock: :class:`jobctl.journal.LeaseHeldError` names its holder
        otherwise) and return the token, with an epoch above every earlier
        one of the domain."""
        known = self._leases.get(domain)
        if known is not None and known.lost:
            raise ClusterError(
                f"{self._owner!r} lost domain {domain!r} (epoch {known.token.epoch}) and has not"
                " forgotten it: stop its flows on the domain, call forget(), then take it again"
            )
        asked = self._clock()
        grant = await self._store.acquire_lease(domain, self._owner, self._duration)
        self._leases[domain] = _Lease(grant.token, self._bound(asked, grant))
        return grant.token

    async def release(self, domain: str) -> None:
        """Give ``domain`` up at once, so another manager may take it without
        waiting for the lease to run out. A lease already lost is forgotten."""
        lease = self._leases.pop(domain, None)
        if lease is None or lease.lost:
            return
        lease.lost = True
        lease.lost_event.set()
        with contextlib.suppress(StaleEpochError):
            await self._store.release_lease(lease.token)

    def forget(self, domain: str) -> None:
        """Drop a lost lease, so the domain may be taken again. Call it once
        this manager's flows on the domain have stopped: while a lost lease
        is remembered, :meth:`take_over` skips the domain and :meth:`acquire`
        refuses it, so that a flow of the old epoch can never write with the
        new one. A held lease is left alone (:meth:`release` it)."""
        lease = self._leases.get(domain)
        if lease is not None and lease.lost:
            del self._leases[domain]

    async def orphans(self) -> tuple[str, ...]:
        """Domains whose lease ran out on the database's clock or was
        released, and that this manager neither holds nor remembers losing
        (see :meth:`forget`): the ones to take over."""
        return tuple(
            record.domain
            for record in await self._store.leases()
            if record.expired and record.domain not in self._leases
        )

    async def take_over(self, domains: Iterable[str] | None = None) -> tuple[str, ...]:
        """Acquire each of ``domains`` (default: :meth:`orphans`) that is still
        free; return the ones taken, for ``recover(journal, domains=...)``.
        One another manager took first, or one this manager lost and has
        not forgotten, is skipped."""
        candidates = await self.orphans() if domains is None else tuple(domains)
        candidates = tuple(d for d in candidates if d not in self._leases)
        taken = []
        for domain in candidates:
            try:
                await self.acquire(domain)
            except LeaseHeldError:
                continue
            taken.append(domain)
        return tuple(taken)

    # -- what is held ----------------------------------------------------------------

    def tokens(self) -> Mapping[str, FencingToken]:
        """The token of every domain held and not known lost (the journal's
        fence): a lease past its local bound keeps its token, so the
        database, which knows, decides on the writes."""
        return {domain: lease.token for domain, lease in self._leases.items() if not lease.lost}

    def status(self, domain: str) -> LeaseStatus | None:
        """The domain's lease as this manager knows it now (None: not one of
        its domains)."""
        lease = self._leases.get(domain)
        if lease is None:
            return None
        if lease.lost:
            state = LeaseState.LOST
        elif self._clock() >= lease.valid_until:
            state = LeaseState.EXPIRED
        else:
            state = LeaseState.HELD
        return LeaseStatus(lease.token, state, lease.valid_until, lease.owner, lease.current_epoch)

    def statuses(self) -> tuple[LeaseStatus, ...]:
        """Every lease of this manager, by domain."""
        found = (self.status(domain) for domain in sorted(self._leases))
        return tuple(status for status in found if status is not None)

    async def wait_lost(self, domain: str) -> LeaseStatus:
        """Wait until the domain's lease is lost; return its status, which
        names the new owner. :class:`KeyError` if it is not held."""
        lease = self._leases.get(domain)
        if lease is None:
            raise KeyError(f"{self._owner!r} holds no lease of domain {domain!r}")
        await lease.lost_event.wait()
        status = self.status(domain)
        return status if status is not None else LeaseStatus(lease.token, LeaseState.LOST, 0.0)

    def _lose(self, lease: _Lease, exc: StaleEpochError) -> None:
        lease.lost = True
        lease.owner = exc.owner
        lease.current_epoch = exc.current_epoch
        lease.lost_event.set()

    def _lost_error(self, lease: _Lease) -> LeaseLostError:
        token = lease.token
        if lease.current_epoch is None and lease.owner is None:
            now = "nobody owns it now"
        elif lease.owner is None:
            now = f"nobody owns it now (epoch {lease.current_epoch} was released)"
        else:
            now = f"it is owned by {lease.owner!r} at epoch {lease.current_epoch}"
        return LeaseLostError(
            f"{self._owner!r} lost domain {token.domain!r} (its epoch {token.epoch}): {now}",
            domain=token.domain,
            epoch=token.epoch,
            owner=lease.owner,
            current_epoch=lease.current_epoch,
        )

    # -- renewing --------------------------------------------------------------------

    async def _renew(self, lease: _Lease) -> None:
        asked = self._clock()
        try:
            grant = await self._store.renew_lease(lease.token, self._duration)
        except StaleEpochError as exc:
            self._lose(lease, exc)
            return
        if not lease.lost:
            lease.valid_until = self._bound(asked, grant)

    async def renew(self) -> None:
        """Renew every held lease once, now, in one transaction. A lease
        another manager took becomes LOST; if the database cannot be asked,
        the leases keep their local bounds and the database error propagates."""
        leases = {lease.token.domain: lease for lease in self._leases.values() if not lease.lost}
        if not leases:
            await anyio.lowlevel.checkpoint()
            return
        asked = self._clock()
        grants, stale = await self._store.renew_leases(
            [lease.token for lease in leases.values()], self._duration
        )
        for grant in grants:
            lease = leases[grant.token.domain]
            if not lease.lost and lease.token == grant.token:
                lease.valid_until = self._bound(asked, grant)
        for exc in stale:
            lease = leases[exc.domain]
            if not lease.lost:
                self._lose(lease, exc)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The background renewer: renew every lease each ``renew_interval``
        seconds, until cancelled. A database that does not answer is tried
        again at the next round (the leases run out by their local bound
        meanwhile, and commands are refused)."""
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            try:
                await self.renew()
            except JournalError:
                continue

    async def check(self, domain: str) -> FencingToken:
        """The token to act on ``domain`` with, now: :class:`LeaseLostError`
        if the lease is lost, or past its local bound and a renewal now
        fails (naming the owner now when the database says it)."""
        lease = self._leases.get(domain)
        if lease is None:
            raise LeaseLostError(
                f"{self._owner!r} holds no lease of domain {domain!r}",
                domain=domain,
                epoch=0,
                owner=None,
                current_epoch=None,
            )
        if not lease.lost and self._clock() >= lease.valid_until:
            try:
                await self._renew(lease)
            except JournalError as exc:
                raise LeaseLostError(
                    f"{self._owner!r}'s lease of domain {domain!r} (epoch {lease.token.epoch})"
                    f" ran out by the local clock and cannot be renewed: {exc}",
                    domain=domain,
                    epoch=lease.token.epoch,
                    owner=None,
                    current_epoch=None,
                ) from None
        if lease.lost:
            raise self._lost_error(lease)
        return lease.token
