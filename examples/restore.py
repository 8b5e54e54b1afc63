"""Restore a VM disk image from a (simulated) backup store into a real file.

The image is 256 MiB in 1 MiB chunks, about 40% of them all zeros. Each fetch
from the store takes a latency drawn between 2 and 20 ms. The restore runs as
the domain's RESTORE async job with 16 fetches at once, writes a fresh sparse
file (zero chunks are neither fetched nor written), and the result is then
checked byte for byte against the image.

Run: ``python examples/restore.py`` (``--backend asyncio``, ``--size-mib N``,
``--dir PATH`` for where the file goes).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread

import jobctl
from jobctl import TraceEvent, TraceKind
from jobctl.restore import FileTarget, RestoreReport, SimulatedChunkStore, restore_disk

MIB = 1 << 20


def make_image(size_mib: int, zero_share: float, seed: int) -> bytes:
    """A disk image of ``size_mib`` 1 MiB chunks, ``zero_share`` of them zeros."""
    rng = random.Random(seed)
    zero_chunk = bytes(MIB)
    return b"".join(
        zero_chunk if rng.random() < zero_share else rng.randbytes(MIB) for _ in range(size_mib)
    )


def verify(path: Path, image: bytes) -> None:
    """Compare the file with the image, 1 MiB at a time."""
    with path.open("rb") as file:
        for offset in range(0, len(image), MIB):
            if file.read(MIB) != image[offset : offset + MIB]:
                raise SystemExit(f"MISMATCH in the chunk at offset {offset}")
        if file.read(1):
            raise SystemExit("the file is longer than the image")


async def restore_file(image: bytes, path: Path, seed: int) -> RestoreReport:
    rng = random.Random(seed + 1)
    latencies = [rng.uniform(0.002, 0.020) for _ in range(len(image) // MIB + 1)]
    source = SimulatedChunkStore(image, MIB, latency=lambda i: latencies[i])

    marks: list[str] = []
    updates = 0

    def show(event: TraceEvent) -> None:
        nonlocal updates
        if event.kind is TraceKind.ASYNC_PHASE:
            marks.append(f"phase {event.detail['phase']}")
        elif event.kind is TraceKind.ASYNC_PROGRESS:
            updates += 1
            progress = event.detail["progress"]
            if updates == 1 or progress["chunks_done"] == progress["chunks_total"]:
                marks.append(
                    f"progress {progress['chunks_done']}/{progress['chunks_total']} chunks, "
                    f"{progress['bytes_done'] // MIB}/{progress['bytes_total'] // MIB} MiB"
                )

    hub = jobctl.TraceHub()
    hub.subscribe(show)
    domain = jobctl.Domain("vm-restore", trace=hub)

    target = await anyio.to_thread.run_sync(FileTarget.create, path, len(image))
    try:
        report = await restore_disk(domain, source, target, concurrency=16)
    finally:
        target.close()
    for mark in marks:
        print(f"  job: {mark}")
    print(f"  job: {updates} progress updates")
    print(f"  job outcome: {domain.info().completed_async_job.outcome}")  # type: ignore[union-attr]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    started = time.perf_counter()
    image = make_image(args.size_mib, zero_share=0.4, seed=args.seed)
    zero = sum(1 for i in range(0, len(image), MIB) if image.count(0, i, i + MIB) == MIB)
    print(
        f"image: {len(image) // MIB} MiB, {len(image) // MIB} chunks of 1 MiB, "
        f"{zero} all-zero (made in {time.perf_counter() - started:.2f} s)"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "disk.img"
        report = anyio.run(restore_file, image, path, args.seed, backend=args.backend)
        checked = time.perf_counter()
        verify(path, image)
        allocated = os.stat(path).st_blocks * 512
        print(f"verified byte for byte in {time.perf_counter() - checked:.2f} s")
        print(f"file: {path.stat().st_size // MIB} MiB, {allocated // MIB} MiB allocated (sparse)")

    print(
        f"restore: {report.chunks} chunks, {report.fetched_chunks} fetched, "
        f"{report.zero_chunks} zero chunks skipped, backend {args.backend}\n"
        f"  wall {report.wall_time:.2f} s, {report.throughput / 1e6:.0f} MB/s of image\n"
        f"  fetch latency p50 {report.fetch_p50 * 1e3:.1f} ms, "
        f"p99 {report.fetch_p99 * 1e3:.1f} ms\n"
        f"  writer busy {report.writer_busy:.2f} s, idle {report.writer_idle:.2f} s, "
        f"flush {report.flush_time:.2f} s\n"
        f"  bound: {report.bound}"
    )
    print(f"total {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
