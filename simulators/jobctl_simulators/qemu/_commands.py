"""The command handlers: what each simulated QMP command does.

A handler gets the VM, the session and the already checked arguments, runs
under the VM's big lock, returns the ``return`` value or raises
:class:`CommandErrorReply`. Events it emits are queued before its reply.

The handlers see the VM and the session through :class:`CommandedVm` and
:class:`NegotiatingSession`: what commands may touch of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from ._errors import COMMAND_NOT_FOUND, CommandErrorReply
from ._jobs import BlockJobs
from ._migration import Migration
from ._schema import COMMAND_ARGUMENTS

__all__ = ["HANDLERS", "CommandedVm", "Handler", "NegotiatingSession"]


class CommandedVm(Protocol):
    """What the commands act on: the run state and the guest, the block
    layer, the migration, the events, the process's exit.
    (:class:`~jobctl_simulators.qemu.SimulatedQemu` is one.)"""

    autostart: bool

    @property
    def run_state(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def block(self) -> BlockJobs: ...

    @property
    def migration(self) -> Migration: ...

    def vm_stop(self, state: str = ..., *, force: bool = ...) -> None: ...

    def vm_start(self) -> None: ...

    def emit(self, event: str, data: dict[str, Any] | None = ...) -> None: ...

    def request_exit(self, status: int, *, flush: bool = ...) -> None: ...

    def version(self) -> dict[str, Any]: ...

    def blockstats(self, *, query_nodes: bool) -> list[dict[str, Any]]: ...


class NegotiatingSession(Protocol):
    """What ``qmp_capabilities`` needs of the client's session."""

    @property
    def negotiated(self) -> bool: ...

    def negotiate(self, *, oob: bool) -> None: ...


Args = dict[str, Any]
Handler = Callable[[CommandedVm, NegotiatingSession, Args], Awaitable[Any]]

_NEEDS_RESET: Final = frozenset({"internal-error", "io-error", "shutdown", "guest-panicked"})


async def qmp_capabilities(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    if session.negotiated:
        raise CommandErrorReply(
            "Capabilities negotiation is already complete, command ignored", COMMAND_NOT_FOUND
        )
    session.negotiate(oob="oob" in args.get("enable", ()))
    return {}


async def query_status(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return {"status": vm.run_state, "singlestep": False, "running": vm.running}


async def stop(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    if vm.run_state == "inmigrate":
        vm.autostart = False
    else:
        vm.vm_stop("paused")
    return {}


async def cont(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    if vm.run_state in _NEEDS_RESET:
        raise CommandErrorReply("Resetting the Virtual Machine is required")
    if vm.run_state == "finish-migrate":
        raise CommandErrorReply("Migration is not finalized yet")
    if vm.run_state == "inmigrate":
        vm.autostart = True
    else:
        # After a completed migration the images were given up: take their
        # locks back (fails while the destination still holds them).
        vm.block.nodes.activate()
        vm.vm_start()
    return {}


async def quit_(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    vm.request_exit(0)
    return {}


async def query_version(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return vm.version()


async def query_commands(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return [{"name": name} for name in COMMAND_ARGUMENTS]


async def query_block(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return [disk.query_block() for disk in vm.block.disks.values() if disk.device is not None]


async def query_blockstats(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return vm.blockstats(query_nodes=args.get("query-nodes", False))


async def migrate_set_capabilities(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.migration.set_capabilities(args["capabilities"])
    return {}


async def query_migrate_capabilities(
    vm: CommandedVm, session: NegotiatingSession, args: Args
) -> Any:
    return vm.migration.query_capabilities()


async def migrate_set_parameters(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.migration.set_parameters(args)
    return {}


async def query_migrate_parameters(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return vm.migration.query_parameters()


async def migrate(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.migration.start(args["uri"], resume=args.get("resume", False))
    return {}


async def migrate_incoming(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    await vm.migration.start_incoming(args["uri"])
    return {}


async def query_migrate(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return vm.migration.query()


async def migrate_cancel(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.migration.cancel()
    return {}


async def migrate_continue(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.migration.resume_switchover(args["state"])
    return {}


async def blockdev_backup(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.backup(args, drive=False)
    return {}


async def drive_backup(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.backup(args, drive=True)
    return {}


async def blockdev_add(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.nodes.add(args)
    return {}


async def blockdev_del(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.blockdev_del(args["node-name"])
    return {}


async def query_jobs(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return [job.query_jobs() for job in vm.block.jobs.values()]


async def query_block_jobs(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    return [job.query_block_jobs() for job in vm.block.jobs.values()]


async def job_cancel(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.find(args["id"]).cancel()
    return {}


async def job_finalize(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.find(args["id"]).finalize()
    return {}


async def job_dismiss(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.find(args["id"]).dismiss()
    return {}


async def block_job_cancel(vm: CommandedVm, session: NegotiatingSession, args: Args) -> Any:
    vm.block.find_block_job(args["device"]).cancel()
    return {}


HANDLERS: Final[dict[str, Handler]] = {
    "qmp_capabilities": qmp_capabilities,
    "query-status": query_status,
    "stop": stop,
    "cont": cont,
    "quit": quit_,
    "query-version": query_version,
    "query-commands": query_commands,
    "query-block": query_block,
    "query-blockstats": query_blockstats,
    "migrate-set-capabilities": migrate_set_capabilities,
    "query-migrate-capabilities": query_migrate_capabilities,
    "migrate-set-parameters": migrate_set_parameters,
    "query-migrate-parameters": query_migrate_parameters,
    "migrate": migrate,
    "migrate-incoming": migrate_incoming,
    "query-migrate": query_migrate,
    "migrate_cancel": migrate_cancel,
    "migrate-continue": migrate_continue,
    "blockdev-backup": blockdev_backup,
    "drive-backup": drive_backup,
    "blockdev-add": blockdev_add,
    "blockdev-del": blockdev_del,
    "query-jobs": query_jobs,
    "query-block-jobs": query_block_jobs,
    "job-cancel": job_cancel,
    "job-finalize": job_finalize,
    "job-dismiss": job_dismiss,
    "block-job-cancel": block_job_cancel,
}

assert HANDLERS.keys() == COMMAND_ARGUMENTS.keys()
