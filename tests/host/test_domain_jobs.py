"""Host commands compose with domain jobs: a backup command is a BACKUP
async job on its VM's domain."""

from __future__ import annotations

import anyio
import pytest

from jobctl import AsyncJob, AsyncJobInfo, Domain, JobTimeoutError
from jobctl.host import Command, CommandContext, CommandExecutor, Entity, ExecutionState, Need
from jobctl.testing import ScriptedMonitor

from ._support import virtual_time

pytestmark = pytest.mark.anyio


def _async_job_command(
    dom: Domain, kind: AsyncJob, name: str, needs: list[Need], seen: list[AsyncJobInfo]
) -> Command[str]:
    """A command that runs as ``kind`` async job on ``dom`` (which must be free)."""

    async def body(ctx: CommandContext) -> str:
        async with dom.async_job(kind, owner=ctx.label, timeout=0) as job:
            async with job.monitor() as mon:
                await mon.execute("blockdev-backup" if kind is AsyncJob.BACKUP else "restore")
            async with job.interruptible():
                await anyio.sleep(60)
            info = dom.info().async_job
            assert info is not None
            seen.append(info)
        return ctx.label

    return Command(name, body, needs, kind=kind.value)


@virtual_time
async def test_backup_and_restore_are_async_jobs_serialized_by_the_entity_locks() -> None:
    dom = Domain("vm-07", monitor=ScriptedMonitor())
    vm, chain = Entity("vm", "vm-07"), Entity("chain", "vm-07")
    seen: list[AsyncJobInfo] = []
    async with CommandExecutor(workers=4) as ex:
        backup = ex.submit(
            _async_job_command(
                dom, AsyncJob.BACKUP, "backup", [vm.shared(), chain.exclusive()], seen
            )
        )
        restore = ex.submit(
            _async_job_command(dom, AsyncJob.RESTORE, "restore", [vm.exclusive()], seen)
        )
    assert backup.state is restore.state is ExecutionState.SUCCEEDED
    assert [(i.kind, i.owner) for i in seen] == [
        (AsyncJob.BACKUP, "backup #1"),
        (AsyncJob.RESTORE, "restore #2"),
    ]
    # The restore queued on the entity, never on the domain.
    assert restore.report().started_at == backup.report().finished_at == 60.0
    assert dom.statistics().timeouts == 0


@virtual_time
async def test_without_declared_entities_the_domain_refuses_and_only_that_command_fails() -> None:
    dom = Domain("vm-07", monitor=ScriptedMonitor())
    seen: list[AsyncJobInfo] = []
    async with CommandExecutor(workers=4) as ex:
        backup = ex.submit(_async_job_command(dom, AsyncJob.BACKUP, "backup", [], seen))
        restore = ex.submit(_async_job_command(dom, AsyncJob.RESTORE, "restore", [], seen))
    # Both start at once; whichever reaches the domain second is refused.
    winner, loser = sorted([backup, restore], key=lambda h: h.state is ExecutionState.FAILED)
    assert (winner.state, loser.state) == (ExecutionState.SUCCEEDED, ExecutionState.FAILED)
    error = loser.report().error
    assert isinstance(error, JobTimeoutError)
    assert winner.report().label in str(error)  # the domain names the holder command
