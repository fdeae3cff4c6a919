"""The staging area: sparse receive, size checks, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from edgesync.errors import BadRequest, RequestTooLarge
from edgesync.hub.staging import Staging
from edgesync.importer.sparsefile import BATCH_BYTES as BUFFER_BYTES

MiB = 1 << 20
ID = "3f2a9c1e-1111-4222-8333-444455556666"


def content(size: int, runs: Iterable[tuple[int, int]]) -> bytes:
    data = bytearray(size)
    for offset, length in runs:
        data[offset:offset + length] = os.urandom(length)
    return bytes(data)


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture
def staging(tmp_path: Path) -> Staging:
    return Staging(tmp_path / "staging")


@pytest.mark.parametrize("chunk", [1, 4096, 65_537, MiB, 5 * MiB])
async def test_receive_is_byte_identical_and_sparse(staging: Staging, chunk: int) -> None:
    size = 12 * MiB + 7 if chunk > 1 else 300_000
    data = content(size, [(0, 4096), (size // 2, 70_000), (size - 100, 100)])
    got = await staging.receive(ID, chunks(data, chunk), expected_size=len(data), max_bytes=1 << 30)
    path = staging.path(ID)
    assert got == len(data) and path.read_bytes() == data
    assert allocated(path) <= 512 * 1024, "zero blocks were written instead of left as holes"
    assert staging.has(ID) and staging.staged_ids() == [ID]


async def test_a_trailing_hole_keeps_the_full_length(staging: Staging) -> None:
    data = content(3 * BUFFER_BYTES + 1000, [(10, 10)])
    await staging.receive(ID, chunks(data, MiB), expected_size=None, max_bytes=1 << 30)
    assert staging.path(ID).stat().st_size == len(data)
    assert allocated(staging.path(ID)) <= 128 * 1024


async def test_an_empty_upload(staging: Staging) -> None:
    assert await staging.receive(ID, chunks(b"", 1), expected_size=0, max_bytes=10) == 0
    assert staging.path(ID).read_bytes() == b""


@pytest.mark.parametrize("declared", [0, 1023, 1025, 10 * MiB])
async def test_size_mismatch_is_400_and_removes_the_file(staging: Staging, declared: int) -> None:
    data = content(1024, [(0, 1024)])
    with pytest.raises(BadRequest) as info:
        await staging.receive(ID, chunks(data, 100), expected_size=declared, max_bytes=1 << 30)
    # Past the declared size the upload stops at once: the total is then not known.
    said = "Uploaded 1024 bytes but" if declared > 1024 else f"Uploaded more than {declared} bytes but"
    assert f"{said} x-openstack-image-size said {declared}" in info.value.message
    assert list(staging.root.iterdir()) == []


async def test_over_the_limit_is_413_and_removes_the_file(staging: Staging) -> None:
    data = content(3 * MiB, [(0, 3 * MiB)])
    with pytest.raises(RequestTooLarge, match="max_image_size_bytes"):
        await staging.receive(ID, chunks(data, MiB), expected_size=None, max_bytes=2 * MiB + 1)
    assert list(staging.root.iterdir()) == []


async def test_exactly_the_limit_is_fine(staging: Staging) -> None:
    data = content(2 * MiB, [(0, 10)])
    assert await staging.receive(ID, chunks(data, MiB), expected_size=None, max_bytes=2 * MiB) == 2 * MiB


async def test_a_client_that_goes_away_leaves_nothing(staging: Staging) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(BUFFER_BYTES + 10)  # enough to have flushed to disk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await staging.receive(ID, broken(), expected_size=None, max_bytes=1 << 30)
    assert list(staging.root.iterdir()) == []


async def test_cancellation_leaves_nothing(staging: Staging) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield os.urandom(BUFFER_BYTES + 10)
        started.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    task = asyncio.create_task(staging.receive(ID, stalls(), expected_size=None, max_bytes=1 << 30))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(staging.root.iterdir()) == []


async def test_data_only_counts_as_staged_once_whole(staging: Staging) -> None:
    """Mid-receive (and so after a crash mid-receive) nothing is at the
    staged path: a half upload can never pass for staged data."""
    halfway = asyncio.Event()
    go_on = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(BUFFER_BYTES + 10)
        halfway.set()
        await go_on.wait()
        yield os.urandom(10)

    task = asyncio.create_task(staging.receive(ID, slow(), expected_size=BUFFER_BYTES + 20, max_bytes=1 << 30))
    await asyncio.wait_for(halfway.wait(), 5)
    assert not staging.has(ID) and not staging.path(ID).exists()
    assert any(p.stat().st_size > 0 for p in staging.root.iterdir()), "nothing was written yet"
    assert staging.staged_ids() == [ID]  # the residue is found (and discarded) by recovery
    go_on.set()
    assert await task == BUFFER_BYTES + 20
    assert staging.has(ID) and [p.name for p in staging.root.iterdir()] == [ID]


async def test_receive_replaces_an_older_staged_file(staging: Staging) -> None:
    await staging.receive(ID, chunks(b"x" * 5000, 100), expected_size=None, max_bytes=1 << 20)
    await staging.receive(ID, chunks(b"yy", 1), expected_size=2, max_bytes=1 << 20)
    assert staging.path(ID).read_bytes() == b"yy"


def test_discard_and_staged_ids(staging: Staging) -> None:
    other = "00000000-0000-4000-8000-000000000000"
    staging.path(ID).write_bytes(b"a")
    staging.converted_path(ID).write_bytes(b"b")
    staging.partial_path(ID).write_bytes(b"p")
    staging.path(other).write_bytes(b"c")
    assert staging.staged_ids() == [other, ID]
    staging.discard(ID)
    assert sorted(p.name for p in staging.root.iterdir()) == [other]
    staging.discard(ID)  # idempotent
    assert not staging.has(ID) and staging.has(other)
