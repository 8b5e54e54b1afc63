"""The simulated QEMU process: run state, monitors, events, the big lock."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Final, final

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from ._block import BlockNodes, Disk, file_node_stats
from ._detector import ConcurrencyDetector
from ._errors import CommandErrorReply, ConcurrencyViolationError, SimulatorError
from ._faults import FaultInjector, FaultPlan
from ._host import SimulatedHost
from ._jobs import BackupModel, BlockJob, BlockJobs
from ._migration import Migration, MigrationModel
from ._monitor import QmpMonitor
from ._session import Connections

__all__ = ["QEMU_VERSION", "SimulatedQemu", "VmStatistics"]

#: What ``query-version`` and the greeting report.
QEMU_VERSION: Final = {"micro": 0, "minor": 2, "major": 7}

#: Exit status of a VM that crashed on a concurrency violation (SIGABRT, as
#: a QEMU assertion failure would).
CRASH_STATUS: Final = -6


@final
@attrs.frozen
class VmStatistics:
    """Counters of one :class:`SimulatedQemu` since it was made (a snapshot:
    :meth:`SimulatedQemu.statistics` makes a new one each call).

    ``run_state`` is the run state then; ``monitors`` how many monitors it
    has; ``connections`` counts every client they served,
    ``open_connections`` those still open;
    ``commands`` the well-formed commands of known names it took, faulted or
    not (input refused with an error reply is not counted); ``events``
    every event emitted;
    ``faults_injected`` the faults its :class:`FaultPlan` fired.
    """

    run_state: str
    monitors: int
    connections: int
    open_connections: int
    commands: int
    events: int
    faults_injected: int


@final
class SimulatedQemu:
    """A simulated ``qemu-system-x86_64`` with QMP monitors.

    Use it as an async context manager: entering starts the "process" (a task
    group of its own), leaving kills it if it still runs::

        async with SimulatedQemu("src", host=host) as vm:
            client = await vm.add_monitor().connect_memory()

    The VM exits by itself on ``quit`` (status 0), when an incoming migration
    fails (status 1), on a :class:`~jobctl_simulators.qemu.Die` fault or
    :meth:`kill`: every connection closes, listeners stop,
    :attr:`exit_status` is set and :meth:`wait_exited` returns. The block
    goes on; leaving it afterwards is fine.

    If the host's :class:`ConcurrencyDetector` is strict, a violation crashes
    the VM (status -6) and :class:`ConcurrencyViolationError` is raised out of
    the ``async with`` block, cancelling its body.

    ``incoming`` is QEMU's ``-incoming``: ``"defer"`` (then
    ``migrate-incoming``) or a ``tcp:``/``unix:`` URI to listen on at once;
    the VM then starts in run state ``inmigrate``. ``start_paused`` is
    ``-S`` (``prelaunch`` until ``cont``).
    """

    def __init__(
        self,
        name: str = "vm",
        *,
        host: SimulatedHost | None = None,
        migration: MigrationModel | None = None,
        backup: BackupModel | None = None,
        disks: Iterable[Disk] = (),
        incoming: str | None = None,
        start_paused: bool = False,
        faults: FaultPlan | None = None,
        package: str = "simulated",
        exit_flush_timeout: float = 1.0,
        command_latency: float = 0.0,
    ) -> None:
        if not name:
            raise ValueError("a simulated VM needs a name")
        if not (command_latency >= 0 and math.isfinite(command_latency)):
            raise ValueError(
                f"command_latency must be a finite number >= 0, got {command_latency!r}"
            )
        self.name = name
        self.host = host if host is not None else SimulatedHost()
        self.package = package
        self.faults: FaultInjector = (faults or FaultPlan()).injector()
        self.migration = Migration(self, migration or MigrationModel())
        #: Seconds every command's reply takes (after the command ran; a
        #: :class:`~jobctl_simulators.qemu.Latency` fault adds to it).
        self.command_latency = command_latency
        nodes = BlockNodes(disks, self.host.image_locks, self)
        self.block = BlockJobs(nodes, backup or BackupModel(), self.emit, self._spawn_job)
        self._incoming_uri = incoming
        if incoming is not None:
            self._run_state = "inmigrate"
        else:
            self._run_state = "prelaunch" if start_paused else "running"
        self.autostart = not start_paused
        self.bql = anyio.Lock()
        self._exit_flush_timeout = exit_flush_timeout
        self._monitors: dict[str, QmpMonitor] = {}
        self._connections = Connections()
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._events = 0
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._exit_requested = anyio.Event()
        self._requested_status: int | None = None
        self._flush_on_exit = True
        self._exited = anyio.Event()
        self.exiting = False
        #: None while the VM runs; then its exit status (negative: killed by that signal).
        self.exit_status: int | None = None
        #: The error that crashed the VM, if any.
        self.failure: BaseException | None = None
        #: Nodes whose image another node of the host held when the VM
        #: started: real QEMU would refuse to start; the simulator starts
        #: without their locks.
        self.lock_conflicts: list[str] = []

    def __repr__(self) -> str:
        return f"<SimulatedQemu {self.name!r} {self.run_state} exit_status={self.exit_status}>"

    # -- lifetime -------------------------------------------------------------

    async def __aenter__(self) -> SimulatedQemu:
        if self._stack is not None:
            raise SimulatorError(f"simulated VM {self.name!r} was already started")
        self.host._add_vm(self)
        if self._incoming_uri is None:  # an incoming VM's images stay inactive
            self.lock_conflicts = self.block.nodes.activate_at_start()
        stack = contextlib.AsyncExitStack()
        self._stack = stack
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(self._run_process)
        except BaseException:
            self.host._remove_vm(self)
            self.block.nodes.close()
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._stack is not None
        self.kill()
        try:
            return bool(await self._stack.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            failure = self.failure
            if failure is None or _first(group, type(failure)) is not failure:
                raise
            # The crash closed the connections: what the block raised after
            # that is a consequence, noted on the failure itself.
            for other in _leaves(group):
                if other is not failure:
                    failure.add_note(f"meanwhile the async with block raised {other!r}")
            raise failure from None
        finally:
            self.host._remove_vm(self)

    async def _run_process(self, *, task_status: TaskStatus[None]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._incoming_uri not in (None, "defer"):
                    try:
                        await self.migration.start_incoming(self._incoming_uri)
                    except CommandErrorReply as exc:
                        raise SimulatorError(f"-incoming {self._incoming_uri}: {exc.desc}") from exc
                task_status.started()
                await self._exit_requested.wait()
                self.exiting = True
                if self._flush_on_exit:
                    with anyio.move_on_after(self._exit_flush_timeout):
                        for session in self._connections.open:
                            session.close_after_flush()
                        for session in self._connections.open:
                            await session.closed.wait()
                self.exit_status = self._requested_status
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            violation = _first(group, ConcurrencyViolationError)
            if violation is None or not _only(group, violation):
                raise
            self.failure = violation
            self.exit_status = CRASH_STATUS
            raise violation from None
        finally:
            self.exiting = True
            if self.exit_status is None:
                requested = self._requested_status
                self.exit_status = requested if requested is not None else -9
            self._tg = None
            self.block.nodes.close()
            incoming = self.migration.incoming
            if incoming is not None:
                self.host._forget_incoming(incoming.address.uri, incoming)
            self._exited.set()

    def request_exit(self, status: int, *, flush: bool = True) -> None:
        """End the process with ``status``; with ``flush``, queued output
        (events, the last reply) reaches the clients first."""
        if self._exit_requested.is_set():
            return
        self._requested_status = status
        self._flush_on_exit = flush
        self.exiting = True
        self._exit_requested.set()

    def kill(self, exit_status: int = -9) -> None:
        """The process dies at once (default: SIGKILL)."""
        self.request_exit(exit_status, flush=False)

    async def wait_exited(self) -> int:
        """Wait for the process to end; return its exit status."""
        await self._exited.wait()
        assert self.exit_status is not None
        return self.exit_status

    @property
    def alive(self) -> bool:
        """The process runs (started and not exiting)."""
        return self._tg is not None and not self.exiting

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of the VM process."""
        if self._tg is None or self.exiting:
            raise SimulatorError(f"simulated VM {self.name!r} is not running")
        self._tg.start_soon(fn, *args)

    async def start_task(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``fn(*args, task_status=...)`` as a task of the VM process
        and wait until it calls ``task_status.started()``: unlike
        :meth:`spawn`, the task is sure to have begun (and so to run its
        cleanup) even if the VM exits at once."""
        if self._tg is None or self.exiting:
            raise SimulatorError(f"simulated VM {self.name!r} is not running")
        await self._tg.start(fn, *args)

    def _spawn_job(self, job: BlockJob) -> None:
        self.spawn(job.run, self.block.model)

    def stall(self, seconds: float) -> None:
        """Freeze the main loop (hold the big lock) for ``seconds``: every
        command of every monitor waits."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"stall seconds must be a finite number >= 0, got {seconds!r}")

        async def hold() -> None:
            async with self.bql:
                await anyio.sleep(seconds)

        self.spawn(hold)

    # -- monitors and events ---------------------------------------------------

    def add_monitor(self, name: str | None = None) -> QmpMonitor:
        """A new ``-qmp`` monitor (named ``qmp0``, ``qmp1``, ... by default)."""
        name = name if name is not None else f"qmp{len(self._monitors)}"
        if name in self._monitors:
            raise ValueError(f"VM {self.name!r} already has a monitor {name!r}")
        monitor = QmpMonitor(self, name, self._connections)
        self._monitors[name] = monitor
        return monitor

    @property
    def monitors(self) -> dict[str, QmpMonitor]:
        """The VM's monitors by name (a copy: adding to it adds no monitor)."""
        return dict(self._monitors)

    def greeting(self) -> dict[str, Any]:
        """The QMP greeting a client gets on connecting: the version and the
        ``oob`` capability, as QEMU 7.2 sends it.
        """
        return {"QMP": {"version": self.version(), "capabilities": ["oob"]}}

    def version(self) -> dict[str, Any]:
        """``query-version``'s return: the simulated QEMU version and ``package``."""
        return {"qemu": dict(QEMU_VERSION), "package": self.package}

    def add_event_listener(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``listener(event_message)`` for every event; returns a
        function that removes it. The listener must not block."""
        self._event_listeners.append(listener)
        return lambda: self._event_listeners.remove(listener)

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        """Send an event to every negotiated connection (QEMU's timestamp)."""
        now = self.host.wall_time()
        seconds = math.floor(now)
        message: dict[str, Any] = {
            "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1e6)},
            "event": event,
        }
        if data is not None:
            message["data"] = data
        self._events += 1
        self._connections.send_event(message)
        for listener in list(self._event_listeners):
            listener(message)

    # -- run state --------------------------------------------------------------

    @property
    def run_state(self) -> str:
        """QEMU's run state (``query-status``'s ``status``)."""
        return self._run_state

    @property
    def running(self) -> bool:
        """The guest runs (run state ``running``)."""
        return self._run_state == "running"

    def set_run_state(self, state: str) -> None:
        """Set the run state to ``state`` as it is, with no event (unlike
        :meth:`vm_stop` and :meth:`vm_start`).
        """
        self._run_state = state

    def vm_stop(self, state: str = "paused", *, force: bool = False) -> None:
        """Stop the guest (STOP) if it runs; ``force`` sets the state anyway."""
        if self.running:
            self._run_state = state
            self.emit("STOP")
        elif force:
            self._run_state = state

    def vm_start(self) -> None:
        """Run the guest (RESUME) unless it runs."""
        if not self.running:
            self._run_state = "running"
            self.emit("RESUME")

    # -- block ----------------------------------------------------------------

    def blockstats(self, *, query_nodes: bool) -> list[dict[str, Any]]:
        """``query-blockstats``'s return: with ``query_nodes``, one entry per
        protocol node and per disk node; else one per disk attached to a
        device, its protocol node as ``parent``.
        """
        entries: list[dict[str, Any]] = []
        for disk in self.block.disks.values():
            file_node = self.block.nodes.file_nodes[disk.node_name]
            if query_nodes:
                entries.append(file_node_stats(file_node))
                entries.append(disk.query_blockstats(file_node, as_backend=False))
            elif disk.device is not None:
                entries.append(disk.query_blockstats(file_node, as_backend=True))
        return entries

    # -- observation ------------------------------------------------------------

    @property
    def detector(self) -> ConcurrencyDetector:
        """The host's :class:`ConcurrencyDetector` (shared by every VM of the host)."""
        return self.host.detector

    def statistics(self) -> VmStatistics:
        """The VM's counters now (see :class:`VmStatistics`)."""
        return VmStatistics(
            run_state=self._run_state,
            monitors=len(self._monitors),
            connections=sum(monitor.connections for monitor in self._monitors.values()),
            open_connections=len(self._connections.open),
            commands=self._connections.commands,
            events=self._events,
            faults_injected=self.faults.injected_total,
        )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _first(
    group: BaseExceptionGroup[BaseException], kind: type[BaseException]
) -> BaseException | None:
    return next((exc for exc in _leaves(group) if isinstance(exc, kind)), None)


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    return all(leaf is exc for leaf in _leaves(group))
