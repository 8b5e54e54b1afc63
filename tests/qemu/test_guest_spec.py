"""Real guests: disk images (qcow2, raw, backing files), a kernel, extra QEMU
arguments and extra QMP monitors, on real and simulated hosts alike.

Where no real QEMU is needed to see what a real host does, a stand-in
program takes ``qemu-system-x86_64``'s place: it writes the command line it
was given to a file and exits, so a test sees whether a QEMU was started and
with what, and no kernel is ever booted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobctl import Domain
from jobctl.qemu import (
    VM,
    DiskImage,
    MachineSpec,
    MachineSpecError,
    MachineStartError,
    MigrationOptions,
    QemuHost,
    backup,
    destroy,
    migrate,
    open_qemu_host,
    qcow2_target,
    start,
)
from jobctl.qmp import open_qmp_unix
from jobctl.testing import SimulatedBackend, open_simulated_host
from jobctl_simulators.qemu import SimulatedHost
from tests._requires import require_executable, require_qemu

from ._support import FAST

pytestmark = pytest.mark.anyio

MiB = 1 << 20
#: Real-time backends, for tests with real processes or real sockets (a
#: virtual clock would jump over their waits).
REAL_TIME = pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
#: The kinds of host a spec is tried on: simulated, and real processes of the
#: stand-in QEMU (it needs qemu-img for its disks, as a real host does).
KINDS = pytest.mark.parametrize(
    "kind", ["simulated", pytest.param("process", marks=pytest.mark.qemu)]
)


def fake_qemu(directory: Path) -> tuple[str, Path]:
    """A program that stands in for QEMU: it writes its arguments (JSON) to
    the returned file and exits with status 1."""
    record = directory / "argv.json"
    script = directory / "fake-qemu"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"with open({str(record)!r}, 'w') as file:\n"
        "    json.dump(sys.argv[1:], file)\n"
        "sys.exit(1)\n"
    )
    script.chmod(0o755)
    return str(script), record


@asynccontextmanager
async def host_of(kind: str, directory: Path) -> AsyncIterator[QemuHost[Any]]:
    if kind == "simulated":
        async with open_simulated_host("a") as sim:
            yield sim
    else:
        require_executable("qemu-img", "apt-get install qemu-utils")
        binary, _ = fake_qemu(directory)
        async with open_qemu_host("a", storage=directory, binary=binary) as real:
            yield real


def fds_of(argv: list[str]) -> list[int]:
    """The QMP descriptors a command line hands QEMU, in order."""
    return [
        int(arg.rsplit("fd=", 1)[1].split(",")[0])
        for arg in argv
        if arg.startswith("socket,id=qmp")
    ]


def existing(paths: tuple[str, ...]) -> list[str]:
    return [path for path in paths if os.path.exists(path)]


def write_at_start(path: str, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.write(data)


def after(argv: list[str], *items: str) -> bool:
    """Whether ``items`` appear in ``argv`` one after the other."""
    n = len(items)
    return any(tuple(argv[i : i + n]) == items for i in range(len(argv) - n + 1))


# -- the values --------------------------------------------------------------


def test_disk_images_are_checked_when_made(tmp_path: Path) -> None:
    assert DiskImage(tmp_path / "d.raw", format="raw").path == str(tmp_path / "d.raw")
    assert DiskImage("/d.qcow2").format == "qcow2" and DiskImage("/d.qcow2").size_mib is None
    with pytest.raises(ValueError, match="format must be 'qcow2' or 'raw', not 'vmdk'"):
        DiskImage("/d.vmdk", format="vmdk")
    with pytest.raises(ValueError, match="path must not be empty"):
        DiskImage("")
    with pytest.raises(TypeError, match="path must be a string"):
        DiskImage(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        DiskImage("/d\0.qcow2")
    for size in (0, True, 1.5):
        with pytest.raises(ValueError, match="size_mib"):
            DiskImage("/d.qcow2", size)  # type: ignore[arg-type]


def test_kernel_fields_are_checked_when_made(tmp_path: Path) -> None:
    spec = MachineSpec(kernel=tmp_path / "vmlinuz", initrd="/boot/initrd", cmdline="")
    assert (spec.kernel, spec.initrd, spec.cmdline) == (
        str(tmp_path / "vmlinuz"),
        "/boot/initrd",
        "",
    )
    with pytest.raises(ValueError, match=r"initrd needs a kernel \(QEMU's -initrd"):
        MachineSpec(initrd="/boot/initrd")
    with pytest.raises(ValueError, match=r"cmdline needs a kernel \(QEMU's -append"):
        MachineSpec(cmdline="console=ttyS0")
    with pytest.raises(ValueError, match="kernel must not be empty"):
        MachineSpec(kernel="")
    with pytest.raises(TypeError, match="cmdline must be a string"):
        MachineSpec(kernel="/k", cmdline=["ro"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="disk must be a DiskImage"):
        MachineSpec(disk="/d.qcow2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "option",
    [
        "-qmp",
        "--qmp",
        "-qmp-pretty",
        "-monitor",
        "-mon",
        "-incoming",
        "-S",
        "-preconfig",
        "-daemonize",
        "-m",
        "-machine",
        "-M",
        "-accel",
        "-kernel",
        "-initrd",
        "-append",
    ],
)
def test_extra_args_may_not_hold_what_the_host_manages(option: str) -> None:
    with pytest.raises(ValueError, match=f"extra_args may not hold '{option}'"):
        MachineSpec(extra_args=("-smp", "2", option, "x"))


def test_extra_args_are_strings() -> None:
    spec = MachineSpec(extra_args=["-smp", "2", "-name", "guest=vm1"])
    assert spec.extra_args == ("-smp", "2", "-name", "guest=vm1")
    assert MachineSpec().extra_args == ()
    with pytest.raises(TypeError, match="not one string"):
        MachineSpec(extra_args="-smp 2")
    with pytest.raises(TypeError, match="each of extra_args must be a string, not 2"):
        MachineSpec(extra_args=("-smp", 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        MachineSpec(extra_args=("-name", "a\0b"))
    for count in (-1, True, 1.5):
        with pytest.raises(ValueError, match="extra_monitors must be an integer >= 0"):
            MachineSpec(extra_monitors=count)  # type: ignore[arg-type]


# -- the command line ----------------------------------------------------------


@REAL_TIME
async def test_the_command_line(anyio_backend: Any, tmp_path: Path) -> None:
    """What a real host runs for a spec (no QEMU started: the builder is pure)."""
    async with open_qemu_host("a", binary="false") as host:
        spec = MachineSpec(
            ram_mib=32,
            random_ram=False,
            disk=DiskImage("/images/vm1.raw", format="raw"),
            backup_disk=DiskImage("/images/vm1-backup.qcow2"),
            kernel="/boot/vmlinuz",
            initrd="/boot/initrd.img",
            cmdline="console=ttyS0 root=/dev/vda rw",
            extra_monitors=1,
            extra_args=("-smp", "2", "-device", "virtio-rng-pci"),
        )
        argv = host.backend.command_line(spec)
        assert argv[0] == host.backend.binary and "-nodefaults" in argv
        assert after(argv, "-m", "32M") and after(argv, "-machine", "q35,accel=tcg")
        disk = [json.loads(argv[i + 1]) for i, arg in enumerate(argv) if arg == "-blockdev"]
        assert disk == [
            {"driver": "file", "filename": "/images/vm1.raw", "node-name": "disk0-file"},
            {"driver": "raw", "file": "disk0-file", "node-name": "disk0"},
            {"driver": "file", "filename": "/images/vm1-backup.qcow2", "node-name": "backup0-file"},
            {"driver": "qcow2", "file": "backup0-file", "node-name": "backup0"},
        ]
        assert after(argv, "-device", "virtio-blk-pci,drive=disk0,id=disk0-dev")
        assert after(
            argv,
            "-kernel",
            "/boot/vmlinuz",
            "-initrd",
            "/boot/initrd.img",
            "-append",
            "console=ttyS0 root=/dev/vda rw",
        )
        assert fds_of(argv) == [3, 4]  # the default descriptors
        assert argv[-4:] == ["-smp", "2", "-device", "virtio-rng-pci"]  # appended, as given
        assert "-incoming" not in argv and "-S" not in argv

        incoming = host.backend.command_line(spec, incoming=True, monitor_fds=[7, 9])
        assert fds_of(incoming) == [7, 9] and after(incoming, "-S", "-incoming", "defer")
        assert incoming[-4:] == argv[-4:]
        with pytest.raises(ValueError, match="2 QMP monitors, not 1"):
            host.backend.command_line(spec, monitor_fds=[3])

        plain = host.backend.command_line(MachineSpec(ram_mib=16), ram=tmp_path / "r")
        assert not {"-kernel", "-initrd", "-append", "-blockdev"} & set(plain)
        backend = json.loads(plain[plain.index("-object") + 1])
        assert backend["mem-path"] == str(tmp_path / "r") and backend["size"] == 16 * MiB


@REAL_TIME
@pytest.mark.qemu
async def test_a_start_runs_the_command_line(anyio_backend: Any, tmp_path: Path) -> None:
    """A real host runs exactly :meth:`command_line`: the kernel, initrd,
    command line and extra arguments reach the process (the stand-in QEMU)."""
    require_executable("qemu-img", "apt-get install qemu-utils")
    binary, record = fake_qemu(tmp_path)
    (tmp_path / "vmlinuz").write_bytes(b"not a kernel: never booted")
    (tmp_path / "initrd").write_bytes(b"")
    async with open_qemu_host("a", storage=tmp_path, binary=binary) as host:
        base = await host.create_disk("base", 8, format="raw")
        spec = MachineSpec(
            random_ram=False,
            disk=await host.create_disk("vm1", backing=base),
            kernel=tmp_path / "vmlinuz",
            initrd=tmp_path / "initrd",
            cmdline="console=ttyS0",
            extra_monitors=2,
            extra_args=("-smp", "2"),
        )
        with pytest.raises(MachineStartError, match="did not start"):
            await host.start_machine("vm1", spec)
        argv = [host.backend.binary, *json.loads(record.read_text())]
        fds = fds_of(argv)
        assert len(fds) == 3 and argv == host.backend.command_line(spec, monitor_fds=fds)
        assert after(
            argv, "-kernel", str(tmp_path / "vmlinuz"), "-initrd", str(tmp_path / "initrd")
        )


# -- the files, checked before any QEMU starts, the same on both kinds of host --


@KINDS
@REAL_TIME
async def test_unusable_files_are_refused_before_qemu_starts(
    anyio_backend: Any, kind: str, tmp_path: Path
) -> None:
    (tmp_path / "kernel").write_bytes(b"k")
    raw = tmp_path / "plain.raw"
    raw.write_bytes(bytes(4096))
    async with host_of(kind, tmp_path) as host:
        base = await host.create_disk("base", 4, format="raw")
        overlay = await host.create_disk("overlay", backing=base)
        os.unlink(base.path)
        refused = {
            "MachineSpec.disk '.*nope.qcow2': no such file": MachineSpec(
                disk=DiskImage(tmp_path / "nope.qcow2")
            ),
            "MachineSpec.backup_disk '.*plain.raw': not a qcow2 image": MachineSpec(
                backup_disk=DiskImage(raw)
            ),
            "the backing file of MachineSpec.disk '.*overlay.qcow2': '.*base.raw': no such file": (
                MachineSpec(disk=overlay)
            ),
            "MachineSpec.kernel '.*vmlinuz': no such file": MachineSpec(
                kernel=tmp_path / "vmlinuz"
            ),
            "MachineSpec.initrd '.*': not a regular file": MachineSpec(
                kernel=tmp_path / "kernel", initrd=tmp_path
            ),
            "MachineSpec.disk '.*': not a regular file": MachineSpec(
                disk=DiskImage(tmp_path, format="raw")
            ),
        }
        for message, spec in refused.items():
            with pytest.raises(MachineSpecError, match=message):
                await host.start_machine("vm1", spec)
            # The spec says the same without a host.
            with pytest.raises(MachineSpecError, match=message):
                spec.check_files()
        assert host.machines == ()
    assert not (tmp_path / "argv.json").exists()  # no QEMU was started


@KINDS
@REAL_TIME
async def test_a_monitor_that_cannot_be_served(
    anyio_backend: Any, kind: str, tmp_path: Path
) -> None:
    """A socket path too long for a unix socket: the start fails on both kinds."""
    async with host_of(kind, tmp_path) as host:
        spec = MachineSpec(random_ram=False, extra_monitors=1)
        with pytest.raises(MachineStartError, match="vm1x"):
            await host.start_machine("vm1" + "x" * 120, spec)
        assert host.machines == ()
    assert not (tmp_path / "argv.json").exists()


@KINDS
@REAL_TIME
async def test_creating_disks(anyio_backend: Any, kind: str, tmp_path: Path) -> None:
    async with host_of(kind, tmp_path) as host:
        base = await host.create_disk("base", 6, format="raw")
        assert base.format == "raw" and base.path.endswith("base.raw")
        assert base.check() == 6 * MiB == os.stat(base.path).st_size
        overlay = await host.create_disk("vm1", backing=base)
        assert (overlay.format, overlay.size_mib, overlay.check()) == ("qcow2", 6, 6 * MiB)
        bigger = await host.create_disk("vm2", 10, backing=overlay)  # a chain of three
        assert bigger.check() == 10 * MiB
        plain = await host.create_disk("vm3", 2)
        assert (plain.format, plain.size_mib, plain.check()) == ("qcow2", 2, 2 * MiB)

        with pytest.raises(ValueError, match="only a qcow2 image has a backing file"):
            await host.create_disk("x", format="raw", backing=base)
        with pytest.raises(ValueError, match=r"a size \(size_mib\) or a backing image"):
            await host.create_disk("x")
        with pytest.raises(ValueError, match="'qcow2' or 'raw', not 'vdi'"):
            await host.create_disk("x", 1, format="vdi")
        with pytest.raises(TypeError, match="backing must be a DiskImage"):
            await host.create_disk("x", backing=base.path)  # type: ignore[arg-type]
        with pytest.raises(MachineSpecError, match=r"the backing image '.*gone\.raw': no such"):
            await host.create_disk("x", backing=DiskImage(tmp_path / "gone.raw", format="raw"))
        assert not list(Path(base.path).parent.glob("x.*"))

        # A loop in a backing chain: vm1 is made again, over vm2, which is over vm1.
        await host.create_disk("vm1", 6, backing=bigger)
        with pytest.raises(MachineSpecError, match="already in its chain"):
            MachineSpec(disk=overlay).check_files()


# -- the simulated host: the same specs, recorded ------------------------------


@REAL_TIME
async def test_the_simulated_host_takes_a_real_guest_spec(
    anyio_backend: Any, tmp_path: Path
) -> None:
    """Kernel, initrd, command line and extra arguments are recorded (nothing
    boots); the disks are the images' files; the extra monitors are unix
    sockets a client of its own attaches to; a migration's destination gets
    the same spec."""
    (tmp_path / "vmlinuz").write_bytes(b"k")
    network = SimulatedHost(network=True)
    async with (
        open_simulated_host("a", sim=network, migration=FAST) as a,
        open_simulated_host("b", sim=network, migration=FAST) as b,
    ):
        base = await a.create_disk("base", 16, format="raw")
        spec = MachineSpec(
            ram_mib=64,
            disk=await a.create_disk("vm1", backing=base),
            kernel=tmp_path / "vmlinuz",
            cmdline="console=ttyS0",
            extra_monitors=2,
            extra_args=("-smp", "2"),
        )
        src, dst = VM(Domain("vm1@a"), a), VM(Domain("vm1@b"), b)
        machine = await start(src, spec)
        assert list(a.backend.launches) == [("vm1@a", spec, False)]
        block = await machine.qmp.execute("query-block")
        image = block[0]["inserted"]["image"]
        assert (image["filename"], image["format"], image["virtual-size"]) == (
            spec.disk.path if spec.disk else None,
            "qcow2",
            16 * MiB,
        )

        assert len(machine.extra_monitors) == 2
        for path in machine.extra_monitors:
            async with open_qmp_unix(path, timeout=10) as outside:
                assert (await outside.execute("query-status"))["status"] == "running"

        await migrate(src, dst, MigrationOptions(poll_interval=0.05))
        assert list(b.backend.launches) == [("vm1@b", spec, True)]
        there = dst.running_machine()
        assert len(there.extra_monitors) == 2 and machine.stopped
        assert not existing(machine.extra_monitors)
        target = await b.create_disk("vm1-backup", 16)
        assert (await backup(dst, qcow2_target("bk0", target))).copied == 16 * MiB
        await destroy(dst)
        assert not existing(there.extra_monitors)


async def test_the_simulated_backend_keeps_the_last_launches() -> None:
    async with open_simulated_host("a") as host:
        backend: SimulatedBackend = host.backend
        assert backend.launches.maxlen is not None
        for number in range(backend.launches.maxlen + 1):
            spec = MachineSpec(ram_mib=number + 1)
            machine = await host.start_machine(f"vm{number}", spec)
            await machine.stop()
        assert len(backend.launches) == backend.launches.maxlen
        assert backend.launches[-1][1].ram_mib == backend.launches.maxlen + 1


# -- real QEMU -----------------------------------------------------------------


@REAL_TIME
@pytest.mark.qemu
async def test_an_overlay_on_a_raw_image_on_real_qemu(anyio_backend: Any, tmp_path: Path) -> None:
    """A qcow2 overlay over a raw backing file boots, migrates and is backed
    up; the backup holds the backing file's content (read through the
    overlay). The extra arguments reach QEMU; the extra monitor answers."""
    require_qemu()
    async with (
        open_qemu_host("a", storage=tmp_path) as a,
        open_qemu_host("b", storage=tmp_path) as b,
    ):
        base = await a.create_disk("base", 16, format="raw")
        write_at_start(base.path, b"jobctl backing data " * 1000)
        spec = MachineSpec(
            ram_mib=64,
            disk=await a.create_disk("vm1", backing=base),
            extra_monitors=1,
            extra_args=("-smp", "2", "-name", "guest=vm1"),
        )
        src, dst = VM(Domain("vm1@a"), a), VM(Domain("vm1@b"), b)
        machine = await start(src, spec)
        image = (await machine.qmp.execute("query-block"))[0]["inserted"]["image"]
        assert image["format"] == "qcow2"
        assert (image["backing-image"]["filename"], image["backing-image"]["format"]) == (
            base.path,
            "raw",
        )
        assert len(await machine.qmp.execute("query-cpus-fast")) == 2
        assert await machine.qmp.execute("query-name") == {"name": "vm1"}

        result = await migrate(src, dst, MigrationOptions(bandwidth=1 << 30, poll_interval=0.05))
        assert result.progress.status == "completed"
        there = dst.running_machine()
        async with open_qmp_unix(there.extra_monitors[0], timeout=10) as outside:
            assert (await outside.execute("query-status"))["status"] == "running"
        target = await b.create_disk("vm1-backup", 16)
        assert (await backup(dst, qcow2_target("bk0", target))).copied == 16 * MiB
        compare = await anyio.run_process(
            ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", target.path, base.path],
            check=False,
        )
        assert compare.returncode == 0, compare.stdout + compare.stderr
        await destroy(dst)


@REAL_TIME
@pytest.mark.qemu
async def test_qemu_refuses_what_clashes_with_the_host(anyio_backend: Any) -> None:
    """An extra argument that clashes with an id the host uses: QEMU refuses
    it, and the start fails with QEMU's own message."""
    require_qemu()
    async with open_qemu_host("a") as host:
        spec = MachineSpec(random_ram=False, extra_args=("-chardev", "null,id=qmp0"))
        with pytest.raises(MachineStartError, match="qmp0"):
            await host.start_machine("vm1", spec)
        assert host.machines == ()


@REAL_TIME
@pytest.mark.qemu
async def test_the_simulated_hosts_images_are_qcow2(anyio_backend: Any) -> None:
    """What the simulated host writes, ``qemu-img`` reads as it wrote them."""
    qemu_img = require_executable("qemu-img", "apt-get install qemu-utils")
    async with open_simulated_host("a") as host:
        base = await host.create_disk("base", 8, format="raw")
        overlay = await host.create_disk("vm1", backing=base)
        large = await host.create_disk("large", 3 << 20)  # 3 TiB: an L1 table of 6144 entries
        for image, size in ((overlay, 8 * MiB), (large, 3 << 40)):
            checked = await anyio.run_process([qemu_img, "check", image.path], check=False)
            assert checked.returncode == 0, checked.stdout
            info = json.loads(
                (await anyio.run_process([qemu_img, "info", "--output=json", image.path])).stdout
            )
            assert (info["format"], info["virtual-size"]) == ("qcow2", size)
        info = json.loads(
            (await anyio.run_process([qemu_img, "info", "--output=json", overlay.path])).stdout
        )
        assert (info["backing-filename"], info["backing-filename-format"]) == (base.path, "raw")
