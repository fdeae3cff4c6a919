"""One contract, every store driver: what the hub may rely on, whatever the backend.

Each test runs against the file store (in a temporary directory) and the rbd
store (on the session's real `central` Ceph cluster). The image layout puts
data and holes on 4 MiB (RBD object) boundaries, so "extents cover the data
and none of the holes" means the same thing for both drivers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from edgesync.errors import SizeMismatch, StoreImageExists, StoreImageNotFound
from edgesync.stores.base import Extent, ImageStore
from edgesync.stores.file import FileStore

MiB = 1 << 20
STRIPE = 4 * MiB
# D = data, Z = zeros, one 4 MiB stripe each: holes at the start, in the
# middle, and at the end; the last data stripe is only half filled.
LAYOUT = "ZDDZZDZ"
SIZE = len(LAYOUT) * STRIPE


@dataclass
class Driver:
    """A store under test plus backend-level views the contract needs."""

    name: str
    make_store: Callable[[], ImageStore]
    url_pattern: Callable[[str], str]
    leftovers: Callable[[str], Awaitable[list[str]]]  # backend names mentioning an id


def image_bytes(seed: int = 1) -> bytes:
    """The test image: LAYOUT with deterministic data stripes."""
    out = bytearray(SIZE)
    for i, kind in enumerate(LAYOUT):
        if kind == "D":
            filled = STRIPE if i != LAYOUT.rindex("D") else STRIPE // 2
            out[i * STRIPE:i * STRIPE + filled] = _pattern(seed * 100 + i, filled)
    return bytes(out)


def _pattern(seed: int, length: int) -> bytes:
    block = hashlib.sha512(str(seed).encode()).digest() * (64 * 1024 // 64)
    return (block * (length // len(block) + 1))[:length]


def data_ranges() -> list[tuple[int, int]]:
    return [(i * STRIPE, (i + 1) * STRIPE) for i, k in enumerate(LAYOUT) if k == "D"]


def hole_ranges() -> list[tuple[int, int]]:
    return [(i * STRIPE, (i + 1) * STRIPE) for i, k in enumerate(LAYOUT) if k == "Z"]


def data_bytes(image: bytes) -> int:
    return sum(1 for i, k in enumerate(LAYOUT) if k == "D") * STRIPE - STRIPE // 2


async def write_all(writer, image: bytes, piece: int = MiB) -> None:  # type: ignore[no-untyped-def]
    """Write every byte, zeros included: the store, not the caller, skips holes."""
    for off in range(0, len(image), piece):
        await writer.write(off, image[off:off + piece])


async def read_all(store: ImageStore, image_id: str, piece: int = 3 * MiB) -> bytes:
    size = await store.size(image_id)
    parts = [await store.read(image_id, off, min(piece, size - off)) for off in range(0, size, piece)]
    return b"".join(parts)


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


# --- drivers ----------------------------------------------------------------------


def _file_driver(root: Path) -> Driver:
    async def leftovers(image_id: str) -> list[str]:
        return sorted(p.name for p in root.iterdir() if image_id in p.name)

    return Driver(
        name="file",
        make_store=lambda: FileStore("central", root),
        url_pattern=lambda image_id: re.escape(f"file://{root / image_id}"),
        leftovers=leftovers,
    )


def _rbd_driver(ceph_clusters: dict) -> Driver:  # type: ignore[type-arg]
    from edgesync.stores.rbd import RbdStore

    cluster = ceph_clusters["central"]

    async def leftovers(image_id: str) -> list[str]:
        # Through the admin CLI, not the store: the backend's own view.
        out = await asyncio.to_thread(
            subprocess.run, ["rbd", *cluster.cli_args, "ls", "--format", "json", cluster.pool],
            capture_output=True, text=True, check=True, timeout=30,
        )
        return sorted(n for n in json.loads(out.stdout) if image_id in n)

    return Driver(
        name="rbd",
        make_store=lambda: RbdStore.from_config("central", cluster.store_config()),
        url_pattern=lambda image_id: re.escape(f"rbd://{cluster.fsid}/images/{image_id}/snap"),
        leftovers=leftovers,
    )


@pytest.fixture(params=["file", pytest.param("rbd", marks=pytest.mark.ceph)])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Driver:
    if request.param == "file":
        return _file_driver(tmp_path / "store")
    return _rbd_driver(request.getfixturevalue("ceph_clusters"))


@pytest.fixture
async def store(driver: Driver) -> AsyncIterator[ImageStore]:
    s = driver.make_store()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def image_id() -> str:
    return str(uuid.uuid4())


async def publish(store: ImageStore, image_id: str, image: bytes) -> str:
    async with await store.open_writer(image_id, len(image)) as writer:
        await write_all(writer, image)
        location = await writer.publish()
    return location.url


async def delete_if_present(store: ImageStore, image_id: str) -> None:
    if await store.exists(image_id):
        await store.delete(image_id)


# --- the contract ------------------------------------------------------------------


async def test_published_copy_reads_back_identical_and_keeps_holes(
    driver: Driver, store: ImageStore, image_id: str
) -> None:
    image = image_bytes()
    url = await publish(store, image_id, image)
    try:
        assert re.fullmatch(driver.url_pattern(image_id), url)
        assert url == store.location_url(image_id)
        assert await store.exists(image_id)
        assert await store.size(image_id) == SIZE
        assert sha512(await read_all(store, image_id)) == sha512(image)

        extents = await store.extents(image_id)
        assert extents == sorted(extents)
        assert all(a.end <= b.offset for a, b in pairwise(extents)), "overlapping extents"
        for start, end in data_ranges():
            data_end = start + len(image[start:end].rstrip(b"\0"))
            assert _covered(extents, start, data_end), f"data at {start} not in extents {extents}"
        for start, end in hole_ranges():
            assert not _intersects(extents, start, end), f"hole at {start} in extents {extents}"

        allocated = await store.allocated_bytes(image_id)
        expected = data_bytes(image)
        # Holes are not stored; the half-filled stripe may be rounded up to an object.
        assert expected <= allocated <= expected + STRIPE, (allocated, expected)
    finally:
        await delete_if_present(store, image_id)


def _covered(extents: list[Extent], start: int, end: int) -> bool:
    pos = start
    for e in extents:
        if e.offset <= pos < e.end:
            pos = e.end
        if pos >= end:
            return True
    return pos >= end


def _intersects(extents: list[Extent], start: int, end: int) -> bool:
    return any(e.offset < end and start < e.end for e in extents)


async def test_nothing_is_visible_before_publish(driver: Driver, store: ImageStore, image_id: str) -> None:
    async with await store.open_writer(image_id, SIZE) as writer:
        await write_all(writer, image_bytes())
        assert not await store.exists(image_id)
        for call in (store.size(image_id), store.extents(image_id), store.read(image_id, 0, 10)):
            with pytest.raises(StoreImageNotFound):
                await call
        await writer.abort()
    assert await driver.leftovers(image_id) == []


async def test_abort_leaves_nothing_and_is_idempotent(driver: Driver, store: ImageStore, image_id: str) -> None:
    writer = await store.open_writer(image_id, SIZE)
    await write_all(writer, image_bytes())
    assert await driver.leftovers(image_id) != []  # the partial copy is there...
    await writer.abort()
    await writer.abort()
    assert await driver.leftovers(image_id) == []  # ...and gone
    assert not await store.exists(image_id)


async def test_failure_inside_the_writer_block_leaves_nothing(
    driver: Driver, store: ImageStore, image_id: str
) -> None:
    with pytest.raises(RuntimeError, match="source went away"):
        async with await store.open_writer(image_id, SIZE) as writer:
            await writer.write(0, image_bytes()[:8 * MiB])
            raise RuntimeError("source went away")
    assert await driver.leftovers(image_id) == []
    assert not await store.exists(image_id)


async def test_write_past_declared_size_is_refused_and_leaves_nothing(
    driver: Driver, store: ImageStore, image_id: str
) -> None:
    with pytest.raises(SizeMismatch):
        async with await store.open_writer(image_id, 2 * MiB) as writer:
            await writer.write(0, b"\1" * MiB)
            await writer.write(MiB + 1, b"\1" * MiB)  # one byte too far
    assert await driver.leftovers(image_id) == []


async def test_open_writer_on_a_published_image_is_refused(store: ImageStore, image_id: str) -> None:
    await publish(store, image_id, b"\7" * MiB)
    try:
        with pytest.raises(StoreImageExists):
            await store.open_writer(image_id, MiB)
        with pytest.raises(StoreImageExists):
            await store.open_writer(image_id, MiB, resume=True)
        assert await read_all(store, image_id) == b"\7" * MiB  # untouched
    finally:
        await store.delete(image_id)


async def test_delete_removes_everything_and_missing_is_not_found(
    driver: Driver, store: ImageStore, image_id: str
) -> None:
    await publish(store, image_id, image_bytes())
    await store.ensure_deletable(image_id)  # nothing depends on it
    await store.delete(image_id)
    assert not await store.exists(image_id)
    await store.ensure_deletable(image_id)  # nothing to refuse either
    assert await driver.leftovers(image_id) == []
    with pytest.raises(StoreImageNotFound):
        await store.delete(image_id)
    with pytest.raises(StoreImageNotFound):
        await store.delete(str(uuid.uuid4()))


async def test_resume_keeps_what_an_interrupted_writer_wrote(driver: Driver, image_id: str) -> None:
    image = image_bytes(seed=7)
    half = 12 * MiB
    crashed = driver.make_store()
    writer = await crashed.open_writer(image_id, SIZE)
    await write_all(writer, image[:half])
    await crashed.close()  # the process "dies": no abort, no publish

    store = driver.make_store()
    try:
        async with await store.open_writer(image_id, SIZE, resume=True) as writer:
            for off in range(half, SIZE, MiB):
                await writer.write(off, image[off:off + MiB])
            await writer.publish()
        assert sha512(await read_all(store, image_id)) == sha512(image)
    finally:
        await delete_if_present(store, image_id)
        await store.close()


async def test_open_writer_without_resume_discards_leftovers(driver: Driver, image_id: str) -> None:
    crashed = driver.make_store()
    writer = await crashed.open_writer(image_id, 4 * MiB)
    await writer.write(0, b"\x11" * (4 * MiB))
    await crashed.close()

    store = driver.make_store()
    try:
        async with await store.open_writer(image_id, 4 * MiB) as writer:
            await writer.write(MiB, b"\x22" * MiB)
            await writer.publish()
        assert await read_all(store, image_id) == bytes(MiB) + b"\x22" * MiB + bytes(2 * MiB)
    finally:
        await delete_if_present(store, image_id)
        await store.close()


async def test_discard_unpublished_removes_a_crashed_writers_copy(driver: Driver, image_id: str) -> None:
    crashed = driver.make_store()
    writer = await crashed.open_writer(image_id, 4 * MiB)
    await writer.write(0, b"\x33" * MiB)
    await crashed.close()

    store = driver.make_store()
    try:
        assert await driver.leftovers(image_id) != []
        await store.discard_unpublished(image_id)
        assert await driver.leftovers(image_id) == []
        await store.discard_unpublished(image_id)  # nothing left: a no-op
    finally:
        await store.close()


async def test_concurrent_writes_to_one_writer(store: ImageStore, image_id: str) -> None:
    """The transfer pipeline keeps several writes of one copy in flight."""
    image = image_bytes(seed=3)
    pieces = list(range(0, SIZE, 2 * MiB))
    async with await store.open_writer(image_id, SIZE) as writer:
        await asyncio.gather(*(writer.write(off, image[off:off + 2 * MiB]) for off in reversed(pieces)))
        await writer.publish()
    try:
        assert sha512(await read_all(store, image_id)) == sha512(image)
    finally:
        await store.delete(image_id)


async def test_properties_say_thin_provisioned(store: ImageStore) -> None:
    props = store.properties()
    assert props["thin_provisioning"] is True
    json.dumps(props)  # served as JSON by the info endpoint
    capacity = await store.capacity()
    assert capacity is None or (capacity.used_bytes >= 0 and capacity.free_bytes >= 0)


async def test_a_suspended_copy_reads_back_and_resumes(driver: Driver, image_id: str) -> None:
    """What the agent's resume relies on: flushed writes read back, and survive suspend()."""
    image = image_bytes(seed=5)
    half = 12 * MiB
    store = driver.make_store()
    try:
        writer = await store.open_writer(image_id, SIZE)
        await write_all(writer, image[:half])
        await writer.flush()
        assert await writer.read_back(0, half) == image[:half]
        assert await writer.read_back(half, 4 * MiB) == bytes(4 * MiB)  # not written: zeros
        await writer.suspend()
        assert not await store.exists(image_id)
        assert await driver.leftovers(image_id) != []

        async with await store.open_writer(image_id, SIZE, resume=True) as writer:
            assert sha512(await writer.read_back(0, half)) == sha512(image[:half])
            for off in range(half, SIZE, MiB):
                await writer.write(off, image[off:off + MiB])
            await writer.publish()
        assert sha512(await read_all(store, image_id)) == sha512(image)
    finally:
        await delete_if_present(store, image_id)
        await store.close()


async def test_image_ids_lists_published_copies_only(store: ImageStore, image_id: str) -> None:
    unpublished = str(uuid.uuid4())
    await publish(store, image_id, b"\5" * MiB)
    writer = await store.open_writer(unpublished, MiB)
    try:
        await writer.write(0, b"\6" * MiB)
        ids = await store.image_ids()
        assert image_id in ids and unpublished not in ids
        assert ids == sorted(ids)
    finally:
        await writer.abort()
        await store.delete(image_id)
    assert image_id not in await store.image_ids()
