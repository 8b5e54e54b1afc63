"""Async job persistence: the journal's :class:`jobctl.AsyncJobPersister`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, final

from jobctl._core._info import AsyncJobInfo

from ._fencing import Fence
from ._records import AsyncJobRecord
from ._store import FencedJournalStore, JournalStore

__all__ = ["JournalPersister"]


@final
class JournalPersister:
    """Writes each domain's async job (kind, phase, owner, allowed mask and
    the flow's private data) to the journal at its begin and on every phase
    change, and drops it when the job ends.

    Give it to the domain: ``Domain(name, persister=journal.persister)``. The
    domain awaits each save before the job goes on, so after a crash the
    journal holds the last phase the job entered. Private data must be a
    JSON object (a :class:`TypeError` names the domain otherwise).

    With a ``fence`` (a fenced journal's) each save and clear carries this
    manager's token of the domain, and the store refuses it with
    :class:`StaleEpochError` once another manager owns the domain: the
    async job of a manager that lost the domain stops at its next phase.
    """

    __slots__ = ("_fence", "_fenced", "_session", "_store")

    def __init__(self, store: JournalStore, session: str, *, fence: Fence | None = None) -> None:
        self._store = store
        self._session = session
        self._fence = fence
        self._fenced: FencedJournalStore | None = None
        if fence is not None:
            if not isinstance(store, FencedJournalStore):
                raise TypeError(
                    f"a fenced persister needs a store that keeps leases, not {store!r}"
                )
            self._fenced = store

    async def save_async_job(
        self, domain: str, info: AsyncJobInfo, private: Mapping[str, Any]
    ) -> None:
        """Persist the job's current phase and private data."""
        record = AsyncJobRecord(
            domain=domain,
            job_id=info.id,
            kind=info.kind,
            phase=info.phase,
            owner=info.owner,
            allowed=info.allowed,
            private=private,
            session=self._session,
            saved=time.time(),
        )
        if self._fenced is not None and self._fence is not None:
            await self._fenced.save_async_job(record, fence=self._fence.tokens())
        else:
            await self._store.save_async_job(record)

    async def clear_async_job(self, domain: str, info: AsyncJobInfo) -> None:
        """Drop the domain's record, if it is still this job's."""
        if self._fenced is not None and self._fence is not None:
            await self._fenced.clear_async_job(
                domain, info.id, self._session, fence=self._fence.tokens()
            )
        else:
            await self._store.clear_async_job(domain, info.id, self._session)
