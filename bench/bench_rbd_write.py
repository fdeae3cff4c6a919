"""RbdStore's write path against Ceph's own tools, on a real lab cluster.

1. Write rate: a 1 GiB RAW image (half zeros, 4 MiB stripes) streamed into
   edgesync's RbdStore versus `rbd import` of the same file, as the same
   least-privilege user, with their ratio.
2. Import path for a qcow2 source (both end with a published copy and its
   sha512, as an import needs):
   a. direct:  `qemu-img convert -n --target-is-zero` straight into the
      unpublished RBD image, then read it back through the store to hash it;
   b. staged:  `qemu-img convert` to a sparse raw staging file, then stream
      that into RbdStore while hashing (the transfer pipeline's `pump`).

Each method runs `--repeat` times, interleaved, with the OSD left to settle
between runs (deleting a 1 GiB image keeps it busy for a moment); the median
is printed with every run. MB/s are logical (image size / time).

    .venv/bin/python bench/bench_rbd_write.py [--size-mib 1024] [--repeat 3]
        [--lab-dir DIR --site central]   # use (or start) that lab's cluster

Without --lab-dir a one-site cluster is bootstrapped in a temporary
directory and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import MiB, allocated_bytes, make_half_zero_image

from edgesync.importer.hashing import ImageDigest
from edgesync.lab import ceph
from edgesync.stores.base import Extent
from edgesync.stores.file import file_extents
from edgesync.stores.rbd import RbdStore
from edgesync.transfer.pipeline import FileSource, chunked, pump

CHUNK = 4 * MiB
READ_AHEAD = 4  # chunks read ahead of the writer
SETTLE_S = 2.0


# --- the methods -------------------------------------------------------------------


async def store_write(store: RbdStore, src: Path) -> float:
    """Stream the raw file's data extents into the store; no hashing."""
    size = src.stat().st_size
    image_id = str(uuid.uuid4())
    fd = os.open(src, os.O_RDONLY)
    started = time.perf_counter()
    try:
        async with await store.open_writer(image_id, size) as writer:
            chunks = list(chunked(file_extents(fd, size), CHUNK))
            await _stream(chunks, lambda c: asyncio.to_thread(os.pread, fd, c.length, c.offset), writer.write)
            await writer.publish()
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
    await store.delete(image_id)
    return elapsed


async def _stream(
    chunks: list[Extent],
    read: Callable[[Extent], Awaitable[bytes]],
    consume: Callable[[int, bytes], Awaitable[None]],
) -> None:
    """Feed chunks to `consume` in order while up to READ_AHEAD reads run ahead."""
    pending: list[asyncio.Task[bytes]] = []
    try:
        for i, chunk in enumerate(chunks):
            while len(pending) < READ_AHEAD and i + len(pending) < len(chunks):
                pending.append(asyncio.create_task(read(chunks[i + len(pending)])))
            await consume(chunk.offset, await pending.pop(0))
    finally:
        for task in pending:
            task.cancel()


async def rbd_import(cluster: ceph.CephCluster, src: Path) -> float:
    name = f"bench-import-{uuid.uuid4()}"
    started = time.perf_counter()
    await run("rbd", *_as_user(cluster), "import", "--no-progress", str(src), f"{cluster.pool}/{name}")
    elapsed = time.perf_counter() - started
    await run("rbd", *cluster.cli_args, "rm", "--no-progress", f"{cluster.pool}/{name}")
    return elapsed


async def qcow2_direct(store: RbdStore, qcow2: Path, size: int) -> tuple[float, float, str]:
    """qemu-img into the unpublished RBD image, publish, read back to hash."""
    image_id = str(uuid.uuid4())
    started = time.perf_counter()
    async with await store.open_writer(image_id, size) as writer:
        await run("qemu-img", "convert", "-n", "--target-is-zero", "-f", "qcow2", "-O", "raw",
                  str(qcow2), writer.qemu_destination())
        await writer.publish()
    converted = time.perf_counter()
    digest = await hash_store_copy(store, image_id)
    done = time.perf_counter()
    await store.delete(image_id)
    return done - started, converted - started, digest


async def hash_store_copy(store: RbdStore, image_id: str) -> str:
    size = await store.size(image_id)
    digest = ImageDigest(with_md5=False)

    async def feed(offset: int, data: bytes) -> None:
        await digest.update_zeros(offset - digest.size)
        await digest.update(data)

    chunks = list(chunked(await store.extents(image_id), CHUNK))
    await _stream(chunks, lambda c: store.read(image_id, c.offset, c.length), feed)
    await digest.update_zeros(size - digest.size)
    return digest.os_hash_value


async def qcow2_staged(store: RbdStore, qcow2: Path, size: int, work: Path) -> tuple[float, float, str]:
    """qemu-img to a sparse staging file, then pump it into the store, hashing."""
    image_id = str(uuid.uuid4())
    staging = work / f"staging-{image_id}.raw"
    started = time.perf_counter()
    await run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(staging))
    converted = time.perf_counter()
    source = FileSource(staging)
    try:
        async with await store.open_writer(image_id, size) as writer:
            digest = await pump(source, writer, size=size, with_md5=False)
            await writer.publish()
    finally:
        source.close()
        staging.unlink()
    done = time.perf_counter()
    await store.delete(image_id)
    return done - started, converted - started, digest.os_hash_value


async def hash_file(src: Path) -> float:
    """sha512 of the raw image alone (holes as zeros): the floor of both import paths."""
    size = src.stat().st_size
    digest = ImageDigest(with_md5=False)
    fd = os.open(src, os.O_RDONLY)
    started = time.perf_counter()
    try:
        async def feed(offset: int, data: bytes) -> None:
            await digest.update_zeros(offset - digest.size)
            await digest.update(data)

        chunks = list(chunked(file_extents(fd, size), CHUNK))
        await _stream(chunks, lambda c: asyncio.to_thread(os.pread, fd, c.length, c.offset), feed)
        await digest.update_zeros(size - digest.size)
    finally:
        os.close(fd)
    return time.perf_counter() - started


# --- plumbing ------------------------------------------------------------------------


async def run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode()[-2000:]}")


def _as_user(cluster: ceph.CephCluster) -> list[str]:
    return ["-c", str(cluster.conf), "--id", cluster.user, "--keyring", str(cluster.keyring)]


async def settle() -> None:
    await asyncio.sleep(SETTLE_S)


def rate(size: int, seconds: float) -> str:
    return f"{seconds:6.2f} s  {size / seconds / 1e6:5.0f} MB/s"


def runs(times: list[float]) -> str:
    return "runs: " + ", ".join(f"{t:.2f}" for t in times)


async def bench(cluster: ceph.CephCluster, work: Path, size_mib: int, repeat: int) -> None:
    src = make_half_zero_image(work / "half-zeros.raw", size_mib * MiB)
    size = src.stat().st_size
    qcow2 = work / "half-zeros.qcow2"
    await run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow2))
    subprocess.run(["sync"], check=True)
    store = RbdStore.from_config(cluster.site, cluster.store_config())
    ours: list[float] = []
    theirs: list[float] = []
    direct: list[tuple[float, float, str]] = []
    staged: list[tuple[float, float, str]] = []
    hashing: list[float] = []
    try:
        await store.exists(str(uuid.uuid4()))  # connect outside the timings
        for _ in range(repeat):
            await settle()
            theirs.append(await rbd_import(cluster, src))
            await settle()
            ours.append(await store_write(store, src))
            await settle()
            direct.append(await qcow2_direct(store, qcow2, size))
            await settle()
            staged.append(await qcow2_staged(store, qcow2, size, work))
            hashing.append(await hash_file(src))
    finally:
        await store.close()
    digests = {d for _, _, d in direct + staged}
    assert len(digests) == 1, "the two import paths hashed different bytes"

    ours_m, theirs_m = statistics.median(ours), statistics.median(theirs)
    print(f"cluster {cluster.site} ({cluster.fsid}); {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    print(f"image: {size_mib} MiB RAW, half zeros in 4 MiB stripes, data {allocated_bytes(src) / MiB:.0f} MiB; "
          f"qcow2 {allocated_bytes(qcow2) / MiB:.0f} MiB; median of {repeat}")
    print(f"RbdStore write (edgesync)        {rate(size, ours_m)}   {runs(ours)}")
    print(f"rbd import                       {rate(size, theirs_m)}   {runs(theirs)}")
    print(f"ratio edgesync / rbd import      {theirs_m / ours_m:6.2f}x the speed")
    for label, results in (("qcow2 direct into RBD + hash", direct), ("qcow2 staged raw + pump+hash", staged)):
        total = statistics.median(r[0] for r in results)
        convert = statistics.median(r[1] for r in results)
        print(f"{label:32} {rate(size, total)}   (convert {convert:.2f} s, then "
              f"{total - convert:.2f} s)   {runs([r[0] for r in results])}")
    print(f"sha512 of the raw image alone      {rate(size, statistics.median(hashing))}   {runs(hashing)}")
    print("(both import paths hash sha512 only, holes included; a real import also computes md5)")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lab-dir", type=Path, help="a lab's Ceph directory (base of <site>/ceph.conf)")
    ap.add_argument("--site", default="central")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgesync-bench-rbd-") as tmp:
        work = Path(tmp)
        base = args.lab_dir or work / "ceph"
        clusters = await ceph.up(base, [args.site])
        try:
            await bench(clusters[args.site], work, args.size_mib, args.repeat)
        finally:
            if args.lab_dir is None:
                await ceph.down(base)


if __name__ == "__main__":
    asyncio.run(main())
