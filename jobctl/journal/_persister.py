"""Async job persistence: the journal's :class:`jobctl.AsyncJobPersister`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, final

from jobctl._core._info import AsyncJobInfo

from ._records import AsyncJobRecord
from ._store import JournalStore

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
    """

    __slots__ = ("_session", "_store")

    def __init__(self, store: JournalStore, session: str) -> None:
        self._store = store
        self._session = session

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
        await self._store.save_async_job(record)

    async def clear_async_job(self, domain: str, info: AsyncJobInfo) -> None:
        """Drop the domain's record, if it is still this job's."""
        await self._store.clear_async_job(domain, info.id, self._session)
