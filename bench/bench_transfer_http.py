"""The transfer protocol on loopback: `pump(HttpSource)` file store → file store.

A 1 GiB RAW image, half zeros (4 MiB stripes), is published in a FileStore
and served by `data_routes` from a separate process (as the hub serves an
agent); this process pulls it with `HttpSource` through `pump` into another
FileStore, verifying every range's sha256 and the whole image's sha512, as an
agent does. References in the same run: the same `pump` from the local store
(no HTTP), and `cp --sparse=always`. MB/s are logical (image size / time).
User+sys CPU seconds of the puller and of the server are printed too: on a
busy machine they say more than the wall times.

    .venv/bin/python bench/bench_transfer_http.py [--size-mib 1024] [--repeat 3] [--window 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web
from common import MiB, make_half_zero_image

from edgesync.stores.base import ImageStore
from edgesync.stores.file import FileStore
from edgesync.transfer.http import HttpSource, data_routes
from edgesync.transfer.pipeline import StoreSource, pump

TOKEN = "bench"


# --- the serving process ----------------------------------------------------------------


def serve(root: Path, port: int) -> None:
    store = FileStore("central", root)

    async def lookup(image_id: str) -> ImageStore:
        return store

    def authorize(request: web.Request) -> None:
        assert request.headers.get("X-Auth-Token") == TOKEN

    app = web.Application()
    app.add_routes(data_routes(lookup, authorize))
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the data server did not start")


# --- the methods ------------------------------------------------------------------------


async def via_http(url: str, image_id: str, dest: FileStore, window: int) -> tuple[float, HttpSource, str]:
    async with aiohttp.ClientSession() as session:
        src = HttpSource(session, url, image_id, token=TOKEN)
        started = time.monotonic()
        size = await src.size()
        async with await dest.open_writer(image_id, size) as writer:
            digest = await pump(src, writer, size=size, window=window, with_md5=False)
            await writer.publish()
        return time.monotonic() - started, src, digest.os_hash_value


async def via_local_store(source: FileStore, image_id: str, dest: FileStore, window: int) -> float:
    started = time.monotonic()
    src = StoreSource(source, image_id)
    size = await src.size()
    async with await dest.open_writer(image_id, size) as writer:
        await pump(src, writer, size=size, window=window, with_md5=False)
        await writer.publish()
    return time.monotonic() - started


def via_cp(source: Path, dest: Path) -> float:
    started = time.monotonic()
    subprocess.run(["cp", "--sparse=always", str(source), str(dest)], check=True)
    os.sync()
    return time.monotonic() - started


# --- main -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, work: Path) -> None:
    size = args.size_mib * MiB
    source = FileStore("central", work / "central")
    image_id = str(uuid.uuid4())
    make_half_zero_image(source.root / image_id, size)
    allocated = await source.allocated_bytes(image_id)
    expected_sha512 = await asyncio.to_thread(sha512_of, source.root / image_id)

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(source.root), str(port)])
    try:
        await wait_listening(port)
        times: dict[str, list[float]] = {"http": [], "local pump": [], "cp --sparse": []}
        cpu: dict[str, list[float]] = {"http puller": [], "http server": [], "local pump": []}
        wire: list[int] = []
        for run_no in range(args.repeat):
            dest = FileStore("dcn0", work / f"dcn0-{run_no}")
            cpu_before = own_cpu_seconds(), cpu_seconds(server.pid)
            elapsed, src, sha512 = await via_http(f"http://127.0.0.1:{port}", image_id, dest, args.window)
            cpu["http puller"].append(own_cpu_seconds() - cpu_before[0])
            cpu["http server"].append(cpu_seconds(server.pid) - cpu_before[1])
            assert sha512 == expected_sha512, "the copy's sha512 differs from the source's"
            times["http"].append(elapsed)
            wire.append(src.bytes_fetched)
            dest_allocated = await dest.allocated_bytes(image_id)
            shutil.rmtree(dest.root)
            local = FileStore("dcn0", work / f"local-{run_no}")
            cpu_before = own_cpu_seconds(), 0.0
            times["local pump"].append(await via_local_store(source, image_id, local, args.window))
            cpu["local pump"].append(own_cpu_seconds() - cpu_before[0])
            shutil.rmtree(local.root)
            times["cp --sparse"].append(await asyncio.to_thread(via_cp, source.root / image_id, work / "cp"))
            (work / "cp").unlink()
    finally:
        server.terminate()
        server.wait()
    report(size, allocated, dest_allocated, times, wire)
    for name, runs in cpu.items():
        print(f"CPU s (user+sys) {name:>12}: median {statistics.median(runs):5.2f}   "
              f"runs: {', '.join(f'{t:.2f}' for t in runs)}")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(size: int, allocated: int, dest_allocated: int, times: dict[str, list[float]], wire: list[int]) -> None:
    print(f"image: {size / MiB:.0f} MiB logical, {allocated / MiB:.0f} MiB allocated (half zeros, 4 MiB stripes)")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:>12}: median {median:6.2f} s = {size / median / 1e6:7.0f} MB/s logical, "
              f"{allocated / median / 1e6:6.0f} MB/s of data   runs: {', '.join(f'{t:.2f}' for t in runs)}")
    print(f"http / local pump: {statistics.median(times['http']) / statistics.median(times['local pump']):.2f}")
    print(f"bytes over HTTP: {max(wire)} = {max(wire) / allocated:.3f} x allocated; "
          f"copy allocated: {dest_allocated / allocated:.3f} x source")
    print(f"puller peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=int, default=4, help="pump's read-ahead (ranges in flight)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-transfer-", dir=os.environ.get("BENCH_DIR")) as work:
        asyncio.run(run(args, Path(work)))


if __name__ == "__main__":
    main()
