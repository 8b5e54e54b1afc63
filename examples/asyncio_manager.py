"""A VM manager on asyncio with an HTTP API (Starlette served by uvicorn).

Two hosts (simulated QEMU, or real QEMU with ``--qemu``) and one VM, ``vm1``,
known by the same name on both, as a manager names a VM whatever host it runs
on. The API reads state with ``to_json()`` (docs/JSON.md) and runs the flows:

- ``GET /domains``: every VM, the host it runs on and its ``DomainInfo``
- ``GET /domains/{name}``: its ``DomainInfo`` on the host it runs on
- ``GET /domains/{name}/domstats``: a QUERY job (``DomainStats``)
- ``POST /domains/{name}/migrate[?bandwidth=bytes/s]``: starts a migration to
  the other host (202); ``GET /domains/{name}/migration`` is its result or error
- ``POST /domains/{name}/abort``: aborts its async job (``Domain.abort``)

Unknown VMs are 404, a second migration while one runs 409, bad input 400.
It prints ``listening on http://HOST:PORT`` once it serves; SIGINT or SIGTERM
stops it and its machines.

Run: ``.venv/bin/python examples/asyncio_manager.py [--port N] [--qemu] [--feed-port N]``
(``--feed-port``: the live feed and its page too, in the same asyncio task group)
(needs the ``examples`` extra: ``pip install -e '.[examples]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, final

import anyio
import anyio.abc
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jobctl import Domain, JobError
from jobctl.feed import serve_feed
from jobctl.qemu import (
    VM,
    FlowError,
    Host,
    MachineSpec,
    MigrationOptions,
    destroy,
    domstats,
    migrate,
    start,
)
from jobctl.testing import open_host_pair
from jobctl_simulators.qemu import MigrationModel

MiB = 1 << 20


@final
class Managed:
    """One VM: its view on each host, the one it runs on, its last migration."""

    def __init__(self, name: str, hosts: tuple[Host, Host]) -> None:
        self.name = name
        self.views = {host.name: VM(Domain(name), host) for host in hosts}
        self.current = self.views[hosts[0].name]
        self.migrating = False
        self.migration: dict[str, Any] | None = None

    def other(self) -> VM:
        return next(vm for vm in self.views.values() if vm is not self.current)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.current.host.name,
            "info": self.current.domain.info().to_json(),
        }


@final
class Manager:
    def __init__(self, vms: dict[str, Managed], tasks: anyio.abc.TaskGroup) -> None:
        self.vms = vms
        self.tasks = tasks

    def vm(self, request: Request) -> Managed:
        name = request.path_params["name"]
        try:
            return self.vms[name]
        except KeyError:
            raise LookupError(f"no VM {name!r}") from None

    async def domains(self, request: Request) -> JSONResponse:
        return JSONResponse([vm.to_json() for vm in self.vms.values()])

    async def domain(self, request: Request) -> JSONResponse:
        return JSONResponse(self.vm(request).to_json())

    async def stats(self, request: Request) -> JSONResponse:
        vm = self.vm(request)
        return JSONResponse(
            {"host": vm.current.host.name, **(await domstats(vm.current)).to_json()}
        )

    async def migrate(self, request: Request) -> JSONResponse:
        vm = self.vm(request)
        raw = request.query_params.get("bandwidth")
        try:
            bandwidth = None if raw is None else int(raw)
            options = MigrationOptions(bandwidth=bandwidth, poll_interval=0.05)
        except ValueError as exc:
            return JSONResponse({"error": f"bandwidth={raw!r}: {exc}"}, status_code=400)
        if vm.migrating:
            return JSONResponse({"error": f"{vm.name!r} is migrating"}, status_code=409)
        vm.migrating = True
        source, destination = vm.current, vm.other()
        self.tasks.start_soon(self._migrate, vm, source, destination, options)
        body = {"source": source.host.name, "destination": destination.host.name}
        return JSONResponse(body, status_code=202)

    async def _migrate(
        self, vm: Managed, source: VM, destination: VM, options: MigrationOptions
    ) -> None:
        try:
            result = await migrate(source, destination, options)
        except (FlowError, JobError) as exc:
            vm.migration = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            vm.current = destination
            vm.migration = {"ok": True, "result": result.to_json()}
        finally:
            vm.migrating = False

    async def last_migration(self, request: Request) -> JSONResponse:
        vm = self.vm(request)
        return JSONResponse({"migrating": vm.migrating, "last": vm.migration})

    async def abort(self, request: Request) -> JSONResponse:
        vm = self.vm(request)
        try:
            await vm.current.domain.abort("aborted over HTTP")
        except JobError as exc:
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=409)
        return JSONResponse({"aborted": True})

    def app(self) -> Starlette:
        async def not_found(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"error": str(exc)}, status_code=404)

        return Starlette(
            routes=[
                Route("/domains", self.domains),
                Route("/domains/{name}", self.domain),
                Route("/domains/{name}/domstats", self.stats),
                Route("/domains/{name}/migration", self.last_migration),
                Route("/domains/{name}/migrate", self.migrate, methods=["POST"]),
                Route("/domains/{name}/abort", self.abort, methods=["POST"]),
            ],
            exception_handlers={LookupError: not_found},
        )


@final
class _Server(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT or SIGTERM without re-raising the
    signal afterwards: :func:`main` then stops the VM and the hosts."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


async def main(host: str, port: int, qemu: bool, feed_port: int | None = None) -> int:
    with socket.create_server((host, port)) as listening:
        bound_host, bound_port = listening.getsockname()[:2]
        model = MigrationModel(link_speed=float(256 * MiB))  # as a fast real link
        async with (
            open_host_pair(qemu=qemu, migration=model) as pair,
            anyio.create_task_group() as tasks,
        ):
            a, b = pair.hosts
            vm = Managed("vm1", (a, b))
            disk = await a.create_disk("vm1", 64)
            await start(vm.current, MachineSpec(ram_mib=64, disk=disk))
            manager = Manager({vm.name: vm}, tasks)
            if feed_port is not None:
                # The live feed and its timeline page, in this asyncio program's
                # own task group (extra `feed`: wsproto; no trio needed).
                feed = await tasks.start(partial(serve_feed, http_port=feed_port))
            config = uvicorn.Config(manager.app(), log_level="warning", lifespan="off")
            server = _Server(config)
            print(f"listening on http://{bound_host}:{bound_port}", flush=True)
            if feed_port is not None:
                print(f"feed page on {feed.page_url} (websocket {feed.ws_url})", flush=True)
            await server.serve(sockets=[listening])
            tasks.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                if vm.current.machine is not None:
                    await destroy(vm.current)
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    parser.add_argument("--qemu", action="store_true", help="real QEMU instead of the simulator")
    parser.add_argument(
        "--feed-port", type=int, default=None, help="serve the live feed's page here (0: any)"
    )
    args = parser.parse_args(argv)
    return asyncio.run(main(args.host, args.port, args.qemu, args.feed_port))


if __name__ == "__main__":
    sys.exit(cli())
