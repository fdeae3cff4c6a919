"""The one data pipeline: source extents → ordered hashing → concurrent writes.

Reads of the next chunks run ahead (a bounded window) while earlier chunks are
hashed in image order and written concurrently; holes between extents are fed
to the digest as zeros without being read or written. Memory stays bounded by
the window (at most `window` chunks in flight).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgesync.importer.hashing import ImageDigest
from edgesync.stores.base import Extent, ImageStore
from edgesync.stores.file import file_extents

CHUNK_BYTES = 4 * 1024 * 1024
WINDOW = 4

# `pump`'s callback: bytes of data written so far.
BytesDoneFn = Callable[[int], Awaitable[None]]
# A copy's progress for those who watch it: (bytes of data copied so far,
# bytes of data the copy moves in all); holes are never moved, so they count
# in neither.
CopyProgressFn = Callable[[int, int], Awaitable[None]]


class Digest(Protocol):
    """What pump feeds every byte of the image to, in order (`ImageDigest`)."""

    size: int

    async def update(self, data: bytes | bytearray | memoryview) -> None: ...
    async def update_zeros(self, count: int) -> None: ...


class Counted:
    """A Digest that hashes nothing: the source checked the bytes already."""

    def __init__(self) -> None:
        self.size = 0

    async def update(self, data: bytes | bytearray | memoryview) -> None:
        self.size += memoryview(data).nbytes

    async def update_zeros(self, count: int) -> None:
        self.size += count


class DataSource(Protocol):
    """Something with a size, data extents, and ranged reads."""

    async def size(self) -> int: ...
    async def extents(self) -> list[Extent]: ...
    async def read(self, offset: int, length: int) -> bytes: ...


class DataSink(Protocol):
    """Where `pump` writes: a store's `ImageWriter`, or a wrapper around one."""

    async def write(self, offset: int, data: bytes | memoryview) -> None: ...


@dataclass
class StoreSource:
    """A published copy in a store."""

    store: ImageStore
    image_id: str

    async def size(self) -> int:
        return await self.store.size(self.image_id)

    async def extents(self) -> list[Extent]:
        return await self.store.extents(self.image_id)

    async def read(self, offset: int, length: int) -> bytes:
        return await self.store.read(self.image_id, offset, length)


class FileSource:
    """A local (sparse) file, e.g. the staging copy. Holds one fd open."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)

    async def size(self) -> int:
        return os.fstat(self._fd).st_size

    async def extents(self) -> list[Extent]:
        return await asyncio.to_thread(file_extents, self._fd, os.fstat(self._fd).st_size)

    async def read(self, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(os.pread, self._fd, length, offset)

    def close(self) -> None:
        os.close(self._fd)


class MeasuredSource:
    """A source that remembers how many bytes of data its extents hold, so a
    copy's progress can be told against what it really moves."""

    def __init__(self, inner: DataSource) -> None:
        self.inner = inner
        self.data_bytes = 0

    async def size(self) -> int:
        return await self.inner.size()

    async def extents(self) -> list[Extent]:
        extents = await self.inner.extents()
        self.data_bytes = sum(e.length for e in extents)
        return extents

    async def read(self, offset: int, length: int) -> bytes:
        return await self.inner.read(offset, length)

    def reporting_to(self, on_progress: CopyProgressFn) -> BytesDoneFn:
        """`pump`'s progress callback, passing on the data total as well."""

        async def report(done_bytes: int) -> None:
            await on_progress(done_bytes, self.data_bytes)

        return report


def chunked(extents: list[Extent], chunk_bytes: int = CHUNK_BYTES) -> Iterator[Extent]:
    """Split extents into pieces of at most `chunk_bytes`, aligned to it, so
    a chunk never straddles two RBD objects."""
    for ext in extents:
        pos = ext.offset
        while pos < ext.end:
            boundary = (pos // chunk_bytes + 1) * chunk_bytes
            end = min(ext.end, boundary)
            yield Extent(pos, end - pos)
            pos = end


async def digest_published(store: ImageStore, image_id: str, *, with_md5: bool = False,
                           with_manifest: bool = False) -> ImageDigest:
    """The sha512 (and md5, and the chunk manifest, if asked) of a published
    copy, holes hashed as zeros without being read."""
    digest = ImageDigest(with_md5=with_md5, with_manifest=with_manifest)
    size = await store.size(image_id)
    for chunk in chunked(await store.extents(image_id)):
        await digest.update_zeros(chunk.offset - digest.size)
        await digest.update(await store.read(image_id, chunk.offset, chunk.length))
    await digest.update_zeros(size - digest.size)
    return digest


async def pump(
    source: DataSource,
    writer: DataSink,
    *,
    size: int,
    window: int = WINDOW,
    on_progress: BytesDoneFn | None = None,
    with_md5: bool = True,
    with_manifest: bool = False,
) -> ImageDigest:
    """Copy every data extent of `source` into `writer`; return the digest of
    the whole logical image (holes included as zeros), with md5 and the
    chunk manifest if asked."""
    digest = ImageDigest(with_md5=with_md5, with_manifest=with_manifest)
    await pump_into(digest, source, writer, size=size, window=window, on_progress=on_progress)
    return digest


async def pump_into(
    digest: Digest,
    source: DataSource,
    writer: DataSink,
    *,
    size: int,
    window: int = WINDOW,
    on_progress: BytesDoneFn | None = None,
) -> None:
    """`pump`, feeding `digest` (an agent checking blocks against a manifest
    gives one that only counts: `Counted`)."""
    chunks = list(chunked(await source.extents()))
    reads: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue(maxsize=window)
    writes: set[asyncio.Task[None]] = set()
    write_slots = asyncio.Semaphore(window)

    async def read_ahead() -> None:
        for chunk in chunks:
            await reads.put(asyncio.create_task(source.read(chunk.offset, chunk.length)))
        await reads.put(None)

    async def write(offset: int, data: bytes) -> None:
        try:
            await writer.write(offset, data)
        finally:
            write_slots.release()

    reader = asyncio.create_task(read_ahead())
    done_bytes = 0
    try:
        for chunk in chunks:
            task = await reads.get()
            assert task is not None
            data = await task
            if len(data) != chunk.length:
                raise OSError(f"short read at {chunk.offset}: {len(data)} of {chunk.length} bytes")
            await digest.update_zeros(chunk.offset - digest.size)
            await digest.update(data)
            await write_slots.acquire()
            writes.add(asyncio.create_task(write(chunk.offset, data)))
            _reap(writes)
            done_bytes += chunk.length
            if on_progress is not None:
                await on_progress(done_bytes)
        await digest.update_zeros(size - digest.size)
        if writes:
            await asyncio.gather(*writes)
    finally:
        reader.cancel()
        for t in writes:
            t.cancel()
        await _drain(reads)
        await asyncio.gather(reader, *writes, return_exceptions=True)


def _reap(writes: set[asyncio.Task[None]]) -> None:
    """Drop finished writes, raising the first failure at once."""
    for t in [t for t in writes if t.done()]:
        writes.discard(t)
        t.result()


async def _drain(reads: asyncio.Queue[asyncio.Task[bytes] | None]) -> None:
    while not reads.empty():
        task = reads.get_nowait()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
