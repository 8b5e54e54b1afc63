"""Live migration, modelled on QEMU 7.2's precopy on the event loop's clock.

Source (``migrate``): ``setup`` (MIGRATION event before the command returns),
then the dirty bitmap sync that starts pass 1 (MIGRATION_PASS 1), ``active``.
RAM is sent at ``min(max-bandwidth, link_speed)`` in windows of ``tick``
seconds (QEMU's BUFFER_DELAY); after the first full window the migration
knows its threshold, ``bandwidth x downtime-limit``. When what is left falls
below it, a bitmap sync (the next MIGRATION_PASS) adds what the running guest
dirtied (``dirty_rate``) meanwhile; if that is still below the threshold the
switchover begins, else another pass. A guest that dirties faster than the
bandwidth never converges, as in QEMU.

Switchover: the big QEMU lock is taken, so **every command of every monitor
stalls** until it ends; the guest stops (STOP); with the
``pause-before-switchover`` capability the state is ``pre-switchover`` (lock
released) until ``migrate-continue``, then ``device``; the last sync
(MIGRATION_PASS) and the rest of RAM plus the device state are sent - the
downtime, ``device_state_time + rest / link_speed``. Then ``completed`` is
announced *before* the totals are computed under the lock again, so a
``query-migrate`` that was stalled by the switchover answers ``completed``
with ``total-time`` and ``downtime`` 0, as QEMU can. Finally the run state is
``postmigrate``.

Destination (``-incoming defer`` + ``migrate-incoming``, or ``-incoming URI``):
``setup`` while listening, ``active`` once the source connects, at the end
RESUME (if the source guest ran and autostart is on) and ``completed``. If the
stream breaks (source cancelled, failed or died) the destination announces
``failed`` and exits with status 1, like QEMU.

``migrate_cancel``: ``cancelling`` before the return, then ``cancelled``;
a guest the migration had stopped runs again (RESUME).
MIGRATION and MIGRATION_PASS events are sent only while the ``events``
capability is on.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol, final

import anyio
import attrs
from anyio.abc import ByteStream, Listener, TaskStatus

from ._errors import CommandErrorReply, SimulatorError
from ._host import SimulatedHost
from ._jobs import BlockJobs
from ._links import (
    Link,
    LocalLink,
    MigrationAddress,
    MigrationFailure,
    StreamLink,
    parse_migration_uri,
    read_stream_messages,
)
from ._schema import MIGRATION_CAPABILITIES

__all__ = ["MigratingVm", "Migration", "MigrationModel"]

MiB: Final = 1 << 20

_RUNNING_STATES: Final = frozenset({"setup", "active", "pre-switchover", "device", "cancelling"})
_ACTIVE_STATES: Final = frozenset({"active", "pre-switchover", "device", "cancelling"})

#: QEMU 7.2's defaults, in the order ``query-migrate-parameters`` shows them.
DEFAULT_PARAMETERS: Final[dict[str, Any]] = {
    "cpu-throttle-tailslow": False,
    "xbzrle-cache-size": 67108864,
    "cpu-throttle-initial": 20,
    "announce-max": 550,
    "decompress-threads": 2,
    "compress-threads": 8,
    "compress-level": 1,
    "multifd-channels": 2,
    "multifd-zstd-level": 1,
    "announce-initial": 50,
    "block-incremental": False,
    "compress-wait-thread": True,
    "downtime-limit": 300,
    "tls-authz": "",
    "multifd-compression": "none",
    "announce-rounds": 5,
    "announce-step": 100,
    "tls-creds": "",
    "multifd-zlib-level": 1,
    "max-cpu-throttle": 99,
    "max-postcopy-bandwidth": 0,
    "tls-hostname": "",
    "throttle-trigger-threshold": 50,
    "max-bandwidth": 134217728,
    "x-checkpoint-delay": 20000,
    "cpu-throttle-increment": 10,
}


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@final
@attrs.frozen
class MigrationModel:
    """The numbers behind a simulated migration (sizes in bytes, rates in
    bytes/s, times in seconds). The bandwidth limit is QMP's
    ``max-bandwidth`` (QEMU's default 128 MiB/s; 0 means no limit);
    ``link_speed`` is the network's, and the rate of the switchover, when
    QEMU lifts the limit."""

    ram_size: int = attrs.field(default=64 * MiB, validator=_positive)
    dirty_rate: float = attrs.field(default=0.0, validator=_non_negative)
    link_speed: float = attrs.field(default=1.25e9, validator=_positive)
    setup_time: float = attrs.field(default=0.002, validator=_non_negative)
    device_state_time: float = attrs.field(default=0.03, validator=_non_negative)
    page_size: int = attrs.field(default=4096, validator=_positive)
    tick: float = attrs.field(default=0.1, validator=_positive)


def _check_parameters(p: dict[str, Any], page_size: int) -> None:
    """QEMU's ``migrate_params_check`` on the merged parameters."""

    def bad(name: str, expects: str) -> CommandErrorReply:
        return CommandErrorReply(f"Parameter '{name}' expects {expects}")

    if p["compress-level"] > 9:
        raise bad("compress_level", "a value between 0 and 9")
    if p["compress-threads"] < 1:
        raise bad("compress_threads", "a value between 1 and 255")
    if p["decompress-threads"] < 1:
        raise bad("decompress_threads", "a value between 1 and 255")
    if not 1 <= p["throttle-trigger-threshold"] <= 100:
        raise bad("throttle_trigger_threshold", "an integer in the range of 1 to 100")
    if not 1 <= p["cpu-throttle-initial"] <= 99:
        raise bad("cpu_throttle_initial", "an integer in the range of 1 to 99")
    if not 1 <= p["cpu-throttle-increment"] <= 99:
        raise bad("cpu_throttle_increment", "an integer in the range of 1 to 99")
    if p["downtime-limit"] > 2000 * 1000:
        raise bad("downtime_limit", "an integer in the range of 0 to (2000 * 1000) ms")
    if p["multifd-channels"] < 1:
        raise bad("multifd_channels", "a value between 1 and 255")
    if p["multifd-zlib-level"] > 9:
        raise bad("multifd_zlib_level", "a value between 0 and 9")
    if p["multifd-zstd-level"] > 20:
        raise bad("multifd_zstd_level", "a value between 0 and 20")
    cache = p["xbzrle-cache-size"]
    if cache < page_size or cache & (cache - 1):
        raise bad("xbzrle_cache_size", "a power of two no less than the target page size")
    if not p["cpu-throttle-initial"] <= p["max-cpu-throttle"] <= 99:
        raise bad("max_cpu_throttle", "an integer in the range of cpu_throttle_initial to 99")
    if p["announce-initial"] > 100000:
        raise bad("announce_initial", "a value between 0 and 100000")
    if p["announce-max"] > 100000:
        raise bad("announce_max", "a value between 0 and 100000")
    if p["announce-rounds"] > 1000:
        raise bad("announce_rounds", "a value between 0 and 1000")
    if not 1 <= p["announce-step"] <= 10000:
        raise bad("announce_step", "a value between 0 and 10000")


async def _close_listener(listener: Listener[Any]) -> None:
    with anyio.CancelScope(shield=True):
        await listener.aclose()


def _socket_id(address: MigrationAddress) -> tuple[int, int] | None:
    """The (device, inode) of a unix listener's socket file."""
    if address.kind != "unix":
        return None
    try:
        info = os.lstat(address.path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None


def _remove_socket(address: MigrationAddress, socket_id: tuple[int, int] | None) -> None:
    """Remove the socket file of a unix listener that stopped, unless
    something else replaced it meanwhile."""
    if socket_id is not None and _socket_id(address) == socket_id:
        with contextlib.suppress(OSError):
            os.unlink(address.path)


async def _close(stream: ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        await stream.aclose()


async def _read_incoming(
    stream: ByteStream, incoming: _Incoming, *, task_status: TaskStatus[None]
) -> None:
    task_status.started()
    await read_stream_messages(stream, incoming)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class MigratingVm(Protocol):
    """What a migration drives of its VM: the run state and the guest, the
    images, the big lock, the VM's tasks and its host.
    (:class:`~jobctl_simulators.qemu.SimulatedQemu` is one.)"""

    autostart: bool

    @property
    def name(self) -> str: ...

    @property
    def host(self) -> SimulatedHost: ...

    @property
    def block(self) -> BlockJobs: ...

    @property
    def bql(self) -> anyio.Lock: ...

    @property
    def alive(self) -> bool: ...

    @property
    def exit_status(self) -> int | None: ...

    @property
    def run_state(self) -> str: ...

    @property
    def running(self) -> bool: ...

    def set_run_state(self, state: str) -> None: ...

    def vm_stop(self, state: str = ..., *, force: bool = ...) -> None: ...

    def vm_start(self) -> None: ...

    def emit(self, event: str, data: dict[str, Any] | None = ...) -> None: ...

    def request_exit(self, status: int, *, flush: bool = ...) -> None: ...

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None: ...

    async def start_task(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None: ...


@final
class _Incoming:
    """The destination's side of one incoming migration."""

    def __init__(self, migration: Migration, address: MigrationAddress) -> None:
        self._migration = migration
        self.address = address
        self.state = "setup"
        self.listener_scope: anyio.CancelScope | None = None

    @property
    def gone(self) -> bool:
        return self._migration.vm.exit_status is not None or self.state in ("completed", "failed")

    @property
    def waiting(self) -> bool:
        return not self.gone and self.state == "setup"

    def connected(self, source: str) -> None:
        migration = self._migration
        migration.vm.host._forget_incoming(self.address.uri, self)
        if self.listener_scope is not None:
            self.listener_scope.cancel()
        self.state = "active"
        migration._event(self.state)

    def finished(self, running: bool) -> None:
        vm = self._migration.vm
        try:
            vm.block.nodes.activate()
        except CommandErrorReply:
            vm.autostart = False  # QEMU: "just don't restart the VM yet"
        if running and vm.autostart:
            vm.vm_start()
        else:
            vm.set_run_state("paused")
        self.state = "completed"
        self._migration._event(self.state)

    def broken(self) -> None:
        self.state = "failed"
        self._migration._event(self.state)
        self._migration.vm.request_exit(1)

    def query(self) -> dict[str, Any]:
        if self.state == "completed":
            return {"status": "completed"}
        info: dict[str, Any] = {}
        if self.state != "setup":
            info["status"] = self.state
        info["socket-address"] = self.address.socket_address()
        return info


@final
class Migration:
    """A VM's migration: capabilities, parameters, one outgoing and one
    incoming migration. Command methods run under the VM's big lock."""

    def __init__(self, vm: MigratingVm, model: MigrationModel) -> None:
        self.vm = vm
        self.model = model
        self.capabilities = dict.fromkeys(MIGRATION_CAPABILITIES, False)
        self.parameters: dict[str, Any] = dict(DEFAULT_PARAMETERS)
        self.status = "none"
        self.error_desc: str | None = None
        self.incoming: _Incoming | None = None
        self._cancel_scope = anyio.CancelScope()
        self._continue = anyio.Event()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._start = 0.0
        self.setup_time = 0
        self.total_time = 0
        self.downtime = 0
        self.expected_downtime = self.parameters["downtime-limit"]
        self.transferred = 0
        self.remaining = 0
        self.dirtied = 0
        self.downtime_bytes = 0
        self.dirty_sync_count = 0
        self.bandwidth = 0.0  # bytes/s, measured over the last full window

    # -- state ----------------------------------------------------------------

    def _event(self, status: str) -> None:
        if self.capabilities["events"]:
            self.vm.emit("MIGRATION", {"status": status})

    def _set_status(self, status: str) -> None:
        self.status = status
        self._event(status)

    @property
    def is_running(self) -> bool:
        return self.status in _RUNNING_STATES

    def _sync(self) -> None:
        """A dirty bitmap sync: the start of a pass."""
        self.dirty_sync_count += 1
        self.remaining = min(self.model.ram_size, self.remaining + self.dirtied)
        self.dirtied = 0
        if self.capabilities["events"]:
            self.vm.emit("MIGRATION_PASS", {"pass": self.dirty_sync_count})

    def _rate(self) -> float:
        limit: int = self.parameters["max-bandwidth"]
        return self.model.link_speed if limit == 0 else min(float(limit), self.model.link_speed)

    # -- commands -------------------------------------------------------------

    def set_capabilities(self, capabilities: list[dict[str, Any]]) -> None:
        if self.is_running:
            raise CommandErrorReply("There's a migration process in progress")
        for item in capabilities:
            self.capabilities[item["capability"]] = item["state"]

    def query_capabilities(self) -> list[dict[str, Any]]:
        return [{"state": state, "capability": name} for name, state in self.capabilities.items()]

    def set_parameters(self, changes: dict[str, Any]) -> None:
        merged = {**self.parameters, **changes}
        for name in ("tls-creds", "tls-hostname", "tls-authz"):
            if merged[name] is None:
                merged[name] = ""
        _check_parameters(merged, self.model.page_size)
        self.parameters = merged

    def query_parameters(self) -> dict[str, Any]:
        return dict(self.parameters)

    def start(self, uri: str, *, resume: bool) -> None:
        """``migrate``."""
        vm = self.vm
        if resume:
            raise CommandErrorReply("Cannot resume if there is no paused migration")
        if self.is_running:
            raise CommandErrorReply("There's a migration process in progress")
        if vm.run_state == "inmigrate":
            raise CommandErrorReply("Guest is waiting for an incoming migration")
        if vm.run_state == "postmigrate":
            raise CommandErrorReply(
                "Can't migrate the vm that was paused due to previous migration"
            )
        self._reset_counters()
        self.error_desc = None
        self._cancel_scope = anyio.CancelScope()
        self._continue = anyio.Event()
        self._start = anyio.current_time()
        self._set_status("setup")
        try:
            address = parse_migration_uri(uri)
        except CommandErrorReply as exc:
            self.error_desc = exc.desc
            self._set_status("failed")
            raise
        if address is None:
            self._set_status("failed")
            raise CommandErrorReply("Parameter 'uri' expects a valid migration protocol")
        vm.spawn(self._outgoing, address)

    def cancel(self) -> None:
        """``migrate_cancel``."""
        if self.is_running and self.status != "cancelling":
            self._set_status("cancelling")
            self._cancel_scope.cancel()

    def resume_switchover(self, state: str) -> None:
        """``migrate-continue``."""
        if self.status != state:
            raise CommandErrorReply(f"Migration not in expected state: {self.status}")
        if state == "pre-switchover":
            self._continue.set()

    def query(self) -> dict[str, Any]:
        """``query-migrate``."""
        if self.status == "none":
            return {} if self.incoming is None else self.incoming.query()
        if self.status == "setup":
            return {"status": "setup"}
        if self.status in _ACTIVE_STATES:
            return {
                "expected-downtime": self.expected_downtime,
                "status": self.status,
                "setup-time": self.setup_time,
                "total-time": _ms(anyio.current_time() - self._start),
                "ram": self._ram_info(),
            }
        if self.status == "completed":
            return {
                "status": "completed",
                "setup-time": self.setup_time,
                "downtime": self.downtime,
                "total-time": self.total_time,
                "ram": self._ram_info(),
            }
        info: dict[str, Any] = {"status": self.status}
        if self.error_desc is not None:
            info["error-desc"] = self.error_desc
        return info

    def _ram_info(self) -> dict[str, Any]:
        page = self.model.page_size
        pages = self.transferred // page
        return {
            "total": self.model.ram_size,
            "postcopy-requests": 0,
            "dirty-sync-count": self.dirty_sync_count,
            "multifd-bytes": 0,
            "pages-per-second": int(self.bandwidth / page),
            "downtime-bytes": self.downtime_bytes,
            "page-size": page,
            "remaining": self.remaining,
            "postcopy-bytes": 0,
            "mbps": self.bandwidth * 8 / 1e6,
            "transferred": self.transferred,
            "dirty-sync-missed-zero-copy": 0,
            "precopy-bytes": self.transferred - self.downtime_bytes,
            "duplicate": 0,
            "dirty-pages-rate": int(self.model.dirty_rate / page) if self.vm.running else 0,
            "skipped": 0,
            "normal-bytes": pages * page,
            "normal": pages,
        }

    # -- the outgoing migration ----------------------------------------------

    async def _connect(self, address: MigrationAddress) -> Link:
        end = self.vm.host._incoming_end(address.uri)
        if end is not None:
            end.connected(self.vm.name)
            return LocalLink(end)
        if self.vm.host.network:
            return await StreamLink.connect(address, self.vm.name, self.model.ram_size)
        reason = "Connection refused" if address.kind == "tcp" else "No such file or directory"
        raise MigrationFailure(f"Failed to connect to '{address.describe()}': {reason}")

    async def _outgoing(self, address: MigrationAddress) -> None:
        link: Link | None = None
        done = False
        self._was_running = False
        self._stopped = False
        try:
            with self._cancel_scope:
                link = await self._connect(address)
                await self._precopy(link)
                await self._switchover(link)
                done = True
        except MigrationFailure as failure:
            self.error_desc = failure.desc
            self._set_status("failed")
            self._restart_guest()
        finally:
            if not done and link is not None:
                with anyio.CancelScope(shield=True):
                    await link.abort()
        if done:
            await self._finish()
        elif self._cancel_scope.cancel_called and self.status == "cancelling":
            self._restart_guest()
            self._set_status("cancelled")

    def _restart_guest(self) -> None:
        if not self._stopped:
            return
        with contextlib.suppress(CommandErrorReply):  # QEMU reports it, and so would cont
            self.vm.block.nodes.activate()
        if self._was_running:
            self.vm.vm_start()
        elif self.vm.run_state == "finish-migrate":
            self.vm.set_run_state("postmigrate")

    async def _precopy(self, link: Link) -> None:
        model = self.model
        await anyio.sleep(model.setup_time)
        self.dirtied = model.ram_size  # everything is dirty before the first pass
        self._sync()
        self.setup_time = _ms(anyio.current_time() - self._start)
        self._set_status("active")
        threshold = 0.0
        window_start = anyio.current_time()
        window_bytes = 0
        while True:
            if threshold > 0 and self.remaining < threshold:
                self._sync()
            if self.remaining == 0 or self.remaining < threshold:
                return
            rate = self._rate()
            step = min(model.tick, self.remaining / rate)
            await anyio.sleep(step)
            sent = min(self.remaining, math.ceil(rate * step))
            await link.send(sent)
            self.remaining -= sent
            self.transferred += sent
            window_bytes += sent
            if self.vm.running:
                self.dirtied = min(model.ram_size, self.dirtied + round(model.dirty_rate * step))
            elapsed = anyio.current_time() - window_start
            if elapsed >= model.tick:
                self.bandwidth = window_bytes / elapsed
                threshold = self.bandwidth * self.parameters["downtime-limit"] / 1000
                self.expected_downtime = _ms(self.remaining / self.bandwidth)
                window_start = anyio.current_time()
                window_bytes = 0

    async def _switchover(self, link: Link) -> None:
        vm = self.vm
        await vm.bql.acquire()
        try:
            downtime_start = anyio.current_time()
            self._was_running = vm.running
            self._stopped = True
            vm.vm_stop("finish-migrate", force=True)
            if self.capabilities["pause-before-switchover"]:
                self._set_status("pre-switchover")
                vm.bql.release()
                try:
                    await self._continue.wait()
                finally:
                    with anyio.CancelScope(shield=True):
                        await vm.bql.acquire()
                self._set_status("device")
            self._sync()
            rest = self.remaining
            await anyio.sleep(self.model.device_state_time + rest / self.model.link_speed)
            vm.block.nodes.inactivate()  # for the destination to take the images
            await link.finish(self._was_running)
            self.transferred += rest
            self.downtime_bytes = rest
            self.remaining = 0
        finally:
            vm.bql.release()
        self._downtime_start = downtime_start
        self._set_status("completed")

    async def _finish(self) -> None:
        # Totals are computed under the lock *after* "completed" was
        # announced: a command the switchover stalled runs first.
        async with self.vm.bql:
            now = anyio.current_time()
            self.total_time = _ms(now - self._start)
            self.downtime = _ms(now - self._downtime_start)
            if self.vm.run_state == "finish-migrate":
                self.vm.set_run_state("postmigrate")

    # -- the incoming migration -----------------------------------------------

    async def start_incoming(self, uri: str) -> None:
        """``migrate-incoming`` (and ``-incoming URI`` at start)."""
        if self.incoming is not None:
            raise CommandErrorReply("The incoming migration has already been started")
        if self.vm.run_state != "inmigrate":
            raise CommandErrorReply("'-incoming' was not specified on the command line")
        if uri == "defer":
            raise CommandErrorReply("Incoming migration already deferred")
        address = parse_migration_uri(uri)
        if address is None:
            raise CommandErrorReply(f"unknown migration protocol: {uri}")
        incoming = _Incoming(self, address)
        host = self.vm.host
        host._listen_incoming(uri, incoming)
        try:
            if host.network:
                await self._listen(incoming)
        except OSError as exc:
            host._forget_incoming(uri, incoming)
            raise CommandErrorReply(f"Failed to bind socket: {exc.strerror or exc}") from None
        except BaseException:
            host._forget_incoming(uri, incoming)
            raise
        self.incoming = incoming
        self._event("setup")

    async def _listen(self, incoming: _Incoming) -> None:
        address = incoming.address
        if address.kind == "tcp":
            listener: Listener[Any] = await anyio.create_tcp_listener(
                local_host=address.host, local_port=address.port
            )
        else:
            listener = await anyio.create_unix_listener(address.path)
        socket_id = _socket_id(address)
        incoming.listener_scope = anyio.CancelScope()
        try:
            self.vm.spawn(self._serve_incoming, incoming, listener, socket_id)
        except SimulatorError:  # the VM began to exit meanwhile
            await _close_listener(listener)
            _remove_socket(address, socket_id)
            raise

    async def _serve_incoming(
        self, incoming: _Incoming, listener: Listener[Any], socket_id: tuple[int, int] | None
    ) -> None:
        claimed = False

        async def handle(stream: ByteStream) -> None:
            nonlocal claimed
            if claimed or incoming.state != "setup" or not self.vm.alive:
                await _close(stream)  # one source only
                return
            claimed = True
            self.vm.host._forget_incoming(incoming.address.uri, incoming)
            try:
                await self.vm.start_task(_read_incoming, stream, incoming)
            except SimulatorError:  # the VM is exiting
                await _close(stream)
            except BaseException:
                await _close(stream)
                raise
            assert incoming.listener_scope is not None
            incoming.listener_scope.cancel()  # stop listening

        try:
            async with listener:
                assert incoming.listener_scope is not None
                with incoming.listener_scope:  # also cancelled when a source here connects
                    await listener.serve(handle)
        finally:
            _remove_socket(incoming.address, socket_id)
