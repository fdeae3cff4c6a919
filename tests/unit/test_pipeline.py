"""The data pipeline `pump`: extents in, ordered digest, concurrent writes,
holes never read nor written, failures propagated with the writer aborted."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgesync.errors import StoreError
from edgesync.stores.base import Extent, ImageWriter, Location
from edgesync.stores.file import FileStore
from edgesync.transfer.pipeline import CHUNK_BYTES, FileSource, StoreSource, chunked, pump

MiB = 1 << 20
ID = "5b0c5a55-aaaa-4bbb-8ccc-ddddeeeeffff"


def sparse_file(path: Path, size: int, runs: list[tuple[int, int]]) -> bytes:
    data = bytearray(size)
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset, length in runs:
            chunk = os.urandom(length)
            data[offset:offset + length] = chunk
            fh.seek(offset)
            fh.write(chunk)
    return bytes(data)


@dataclass
class MemorySource:
    """Data at given extents; records every read and how many overlap."""

    data: bytes
    data_extents: list[Extent]
    reads: list[tuple[int, int]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    fail_at: int | None = None
    short_at: int | None = None

    async def size(self) -> int:
        return len(self.data)

    async def extents(self) -> list[Extent]:
        return list(self.data_extents)

    async def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if self.fail_at is not None and offset >= self.fail_at:
                raise StoreError(f"source failed at {offset}")
            if self.short_at is not None and offset >= self.short_at:
                return self.data[offset:offset + length - 1]
            return self.data[offset:offset + length]
        finally:
            self.in_flight -= 1


class MemoryWriter(ImageWriter):
    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.image_id = ID
        self.size_bytes = size
        self.buffer = bytearray(size)
        self.writes: list[tuple[int, int]] = []
        self.fail_at = fail_at
        self.aborted = False
        self.published = False

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        await asyncio.sleep(0)
        if self.fail_at is not None and offset >= self.fail_at:
            raise StoreError(f"writer failed at {offset}")
        self.buffer[offset:offset + len(data)] = data
        self.writes.append((offset, len(data)))

    async def publish(self) -> Location:
        self.published = True
        return Location("mem", f"mem://{ID}")

    async def abort(self) -> None:
        self.aborted = True


def image_with_holes() -> tuple[bytes, list[Extent]]:
    size = 21 * MiB + 123
    extents = [Extent(0, 100), Extent(3 * MiB, 6 * MiB), Extent(15 * MiB + 5, 1000), Extent(size - 23, 23)]
    data = bytearray(size)
    for e in extents:
        data[e.offset:e.end] = os.urandom(e.length)
    return bytes(data), extents


# --- chunked ---------------------------------------------------------------------------


def test_chunks_never_straddle_a_chunk_boundary() -> None:
    pieces = list(chunked([Extent(CHUNK_BYTES - 10, 20), Extent(3 * CHUNK_BYTES, 2 * CHUNK_BYTES + 1)]))
    assert pieces == [Extent(CHUNK_BYTES - 10, 10), Extent(CHUNK_BYTES, 10),
                      Extent(3 * CHUNK_BYTES, CHUNK_BYTES), Extent(4 * CHUNK_BYTES, CHUNK_BYTES),
                      Extent(5 * CHUNK_BYTES, 1)]
    for p in pieces:
        assert p.offset // CHUNK_BYTES == (p.end - 1) // CHUNK_BYTES
    assert list(chunked([])) == []


# --- pump ------------------------------------------------------------------------------


async def test_digest_is_hashlib_of_the_logical_image_and_holes_are_never_read() -> None:
    data, extents = image_with_holes()
    source = MemorySource(data, extents)
    writer = MemoryWriter(len(data))
    progress: list[int] = []

    async def on_progress(done: int) -> None:
        progress.append(done)

    digest = await pump(source, writer, size=len(data), on_progress=on_progress)
    assert digest.size == len(data)
    assert digest.checksum == hashlib.md5(data).hexdigest()
    assert digest.os_hash_value == hashlib.sha512(data).hexdigest()
    assert bytes(writer.buffer) == data
    data_ranges = [(e.offset, e.end) for e in extents]
    for offset, length in source.reads + writer.writes:
        assert any(a <= offset and offset + length <= b for a, b in data_ranges), (offset, length)
    assert sum(length for _, length in source.reads) == sum(e.length for e in extents)
    assert progress == sorted(progress) and progress[-1] == sum(e.length for e in extents)
    assert not writer.aborted and not writer.published  # publishing is the caller's call


async def test_an_image_that_is_all_hole() -> None:
    size = 9 * MiB
    source = MemorySource(bytes(size), [])
    writer = MemoryWriter(size)
    digest = await pump(source, writer, size=size)
    assert digest.os_hash_value == hashlib.sha512(bytes(size)).hexdigest()
    assert source.reads == [] and writer.writes == []


async def test_reads_in_flight_stay_within_the_window() -> None:
    size = 40 * MiB
    source = MemorySource(bytes([1]) * size, [Extent(0, size)])
    await pump(source, MemoryWriter(size), size=size, window=3)
    assert 1 <= source.max_in_flight <= 4  # the window, plus the one being awaited


async def test_a_failing_writer_propagates_and_the_writer_is_aborted() -> None:
    data, extents = image_with_holes()
    source = MemorySource(data, extents)
    writer = MemoryWriter(len(data), fail_at=4 * MiB)
    before = asyncio.all_tasks()
    with pytest.raises(StoreError, match="writer failed"):
        async with writer:
            await pump(source, writer, size=len(data))
    assert writer.aborted and not writer.published
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == [], f"pump left reads or writes running: {leftover}"


async def test_a_failing_writer_stops_the_reads_soon() -> None:
    size = 64 * MiB
    source = MemorySource(bytes([7]) * size, [Extent(0, size)])
    with pytest.raises(StoreError, match="writer failed"):
        await pump(source, MemoryWriter(size, fail_at=4 * MiB), size=size, window=4)
    # the window's worth of read-ahead at most, not the rest of the image
    assert max(offset for offset, _ in source.reads) <= 4 * MiB + 6 * CHUNK_BYTES


async def test_a_failing_source_propagates() -> None:
    data, extents = image_with_holes()
    writer = MemoryWriter(len(data))
    with pytest.raises(StoreError, match="source failed"):
        async with writer:
            await pump(MemorySource(data, extents, fail_at=10 * MiB), writer, size=len(data))
    assert writer.aborted


async def test_a_short_read_is_an_error_not_silent_corruption() -> None:
    data, extents = image_with_holes()
    with pytest.raises(OSError, match="short read"):
        await pump(MemorySource(data, extents, short_at=3 * MiB), MemoryWriter(len(data)), size=len(data))


# --- with real files and a real file store -----------------------------------------------


async def test_file_to_file_store_keeps_holes_and_digest(tmp_path: Path) -> None:
    size = 20 * MiB
    data = sparse_file(tmp_path / "src", size, [(0, 64 * 1024), (7 * MiB, MiB), (size - 4096, 4096)])
    store = FileStore("dst", tmp_path / "store")
    source = FileSource(tmp_path / "src")
    try:
        assert await source.size() == size
        async with await store.open_writer(ID, size) as writer:
            digest = await pump(source, writer, size=size)
            await writer.publish()
    finally:
        source.close()
    assert digest.os_hash_value == hashlib.sha512(data).hexdigest()
    assert (tmp_path / "store" / ID).read_bytes() == data
    assert await store.allocated_bytes(ID) <= MiB + 64 * 1024 + 4096 + 256 * 1024
    # and from that store to another, as the replicator does
    other = FileStore("dst2", tmp_path / "store2")
    async with await other.open_writer(ID, size) as writer:
        again = await pump(StoreSource(store, ID), writer, size=size)
        await writer.publish()
    assert again.os_hash_value == digest.os_hash_value
    assert await other.allocated_bytes(ID) == await store.allocated_bytes(ID)


async def test_failure_into_a_file_store_leaves_no_partial_copy(tmp_path: Path) -> None:
    data, extents = image_with_holes()
    store = FileStore("dst", tmp_path / "store")
    with pytest.raises(StoreError):
        async with await store.open_writer(ID, len(data)) as writer:
            await pump(MemorySource(data, extents, fail_at=10 * MiB), writer, size=len(data))
            await writer.publish()
    assert list((tmp_path / "store").iterdir()) == []
    assert not await store.exists(ID)
