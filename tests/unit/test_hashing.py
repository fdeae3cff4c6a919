"""ImageDigest and digest_file agree with hashlib on the same logical bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from edgesync.importer import hashing
from edgesync.importer.hashing import ImageDigest, digest_file

MiB = 1 << 20


def reference(data: bytes) -> tuple[int, str, str]:
    return len(data), hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()


def result(d: ImageDigest) -> tuple[int, str, str]:
    return d.size, d.checksum, d.os_hash_value


async def test_empty_image_digest() -> None:
    assert result(ImageDigest()) == reference(b"")
    assert ImageDigest.os_hash_algo == "sha512"


async def test_small_and_large_updates_in_order_equal_hashlib() -> None:
    # Sizes either side of the thread threshold, so both paths are exercised.
    pieces = [os.urandom(n) for n in (1, 100, hashing.THREAD_THRESHOLD - 1,
                                      hashing.THREAD_THRESHOLD, 3 * MiB + 17, 5)]
    d = ImageDigest()
    for p in pieces:
        await d.update(p)
    assert result(d) == reference(b"".join(pieces))


async def test_accepts_bytearray_and_memoryview() -> None:
    data = os.urandom(200_000)
    d = ImageDigest()
    await d.update(bytearray(data[:1000]))
    await d.update(memoryview(data)[1000:])
    assert result(d) == reference(data)


async def test_holes_are_hashed_as_zeros(monkeypatch) -> None:
    monkeypatch.setattr(hashing, "_ZERO_SLICE", 2 * MiB)
    head, tail = os.urandom(4096), os.urandom(70_000)
    # A hole bigger than the shared zero buffer and than one slice, so both loops turn.
    hole = hashing._ZERO_SLICE + len(hashing._ZEROS) + 3
    d = ImageDigest()
    await d.update(head)
    await d.update_zeros(hole)
    await d.update_zeros(0)
    await d.update(tail)
    await d.update_zeros(5)
    assert result(d) == reference(head + bytes(hole) + tail + bytes(5))


async def test_negative_hole_is_refused() -> None:
    with pytest.raises(ValueError):
        await ImageDigest().update_zeros(-1)


async def test_overlapping_updates_are_refused() -> None:
    d = ImageDigest()
    first = asyncio.create_task(d.update(bytes(4 * MiB)))
    await asyncio.sleep(0)  # let it start hashing in its threads
    with pytest.raises(RuntimeError, match="one at a time"):
        await d.update(os.urandom(4 * MiB))
    await first
    assert result(d) == reference(bytes(4 * MiB))


async def test_cancelled_update_breaks_the_digest() -> None:
    d = ImageDigest()
    task = asyncio.create_task(d.update_zeros(600 * MiB))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(RuntimeError, match="interrupted"):
        _ = d.checksum


def write_sparse(path: Path, size: int, data_at: dict[int, bytes]) -> bytes:
    content = bytearray(size)
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset, chunk in data_at.items():
            fh.seek(offset)
            fh.write(chunk)
            content[offset:offset + len(chunk)] = chunk
    return bytes(content)


async def test_digest_file_of_a_sparse_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hashing, "READ_CHUNK", 1 * MiB)  # several reads per extent
    path = tmp_path / "sparse.img"
    content = write_sparse(path, 16 * MiB, {
        0: os.urandom(3 * MiB + 5),          # data at the start, then a hole
        8 * MiB: os.urandom(4096),           # data in the middle
        16 * MiB - 10: os.urandom(10),       # data at the very end
    })
    assert path.stat().st_blocks * 512 < 8 * MiB  # really sparse
    assert result(await digest_file(path)) == reference(content)


async def test_digest_file_does_not_read_holes(tmp_path: Path, monkeypatch) -> None:
    reads: list[int] = []
    real_pread = os.pread
    monkeypatch.setattr(hashing.os, "pread", lambda fd, n, off: reads.append(n) or real_pread(fd, n, off))
    path = tmp_path / "mostly-hole.img"
    content = write_sparse(path, 64 * MiB, {32 * MiB: os.urandom(4096)})
    assert result(await digest_file(path)) == reference(content)
    assert sum(reads) < 1 * MiB


@pytest.mark.parametrize("layout", ["all-hole", "all-data", "empty", "hole-at-end"])
async def test_digest_file_edge_layouts(tmp_path: Path, layout: str) -> None:
    path = tmp_path / layout
    if layout == "all-hole":
        content = write_sparse(path, 2 * MiB, {})
    elif layout == "all-data":
        content = write_sparse(path, 300_000, {0: os.urandom(300_000)})
    elif layout == "empty":
        content = write_sparse(path, 0, {})
    else:
        content = write_sparse(path, 5 * MiB, {0: os.urandom(1000)})
    assert result(await digest_file(path)) == reference(content)
