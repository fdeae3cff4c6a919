"""Copies checked against a chunk manifest, taking the blocks the site holds
from its own copies: real file stores, a real journal, the real data routes
over HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import blake3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgesync.agent import replicator
from edgesync.agent.dedup import AgentManifests, SiteCopies
from edgesync.agent.journal import Journal
from edgesync.bus import CopyCommand, DeleteCommand
from edgesync.errors import NotFound
from edgesync.stores.file import FileStore
from edgesync.transfer.http import CORRUPT_CHUNKS_ENV, HttpSource, ServedCounters, TransferError, data_routes
from edgesync.transfer.manifest import BLOCK_BYTES, Manifest
from edgesync.transfer.pipeline import pump

MiB = 1 << 20


async def anyone(request: web.Request, image_id: str) -> None:
    """Every caller may read every image here (authorisation is tested in test_transfer_http)."""



@dataclass
class Hub:
    url: str
    served: ServedCounters
    manifests: dict[str, bytes]


@pytest.fixture(autouse=True)
def no_fault_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CORRUPT_CHUNKS_ENV, raising=False)


@pytest.fixture
def central(tmp_path: Path) -> FileStore:
    return FileStore("central", tmp_path / "central")


@pytest.fixture
def edge(tmp_path: Path) -> FileStore:
    return FileStore("dcn0", tmp_path / "dcn0")


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "journal.sqlite3")
    try:
        yield j
    finally:
        await j.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@asynccontextmanager
async def serving(store: FileStore) -> AsyncIterator[Hub]:
    """The hub's data routes over `store`, with the manifests put into `hub.manifests`."""
    manifests: dict[str, bytes] = {}
    served = ServedCounters()

    async def lookup(image_id: str) -> FileStore:
        return store

    async def manifest(image_id: str) -> bytes:
        if image_id not in manifests:
            raise NotFound(f"no manifest for {image_id}")
        return manifests[image_id]

    app = web.Application()
    app.add_routes(data_routes(lookup, anyone, counters=served, manifests=manifest))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Hub(str(server.make_url("")).rstrip("/"), served, manifests)
    finally:
        await server.close()


def blocks(count: int) -> list[bytes]:
    return [os.urandom(BLOCK_BYTES) for _ in range(count)]


async def import_image(central: FileStore, hub: Hub, content: bytes) -> tuple[str, Manifest]:
    """Publish `content` (zero blocks stay holes) and make its manifest as the hub's import does."""
    image_id = str(uuid.uuid4())
    staged = central.root.parent / f"{image_id}.raw"
    staged.write_bytes(content)
    from edgesync.transfer.pipeline import FileSource
    source = FileSource(staged)
    try:
        async with await central.open_writer(image_id, len(content)) as writer:
            digest = await pump(source, writer, size=len(content), with_manifest=True)
            await writer.publish()
    finally:
        source.close()
    manifest = digest.manifest()
    hub.manifests[image_id] = manifest.encode()
    return image_id, manifest


async def copy(hub: Hub, session: aiohttp.ClientSession, edge: FileStore, journal: Journal, site: SiteCopies,
               image_id: str, manifest: Manifest, *, digest: str | None = None) -> HttpSource:
    command = CopyCommand(task_id=str(uuid.uuid4()), image_id=image_id, size_bytes=manifest.image_size,
                          os_hash_value=manifest.os_hash_value, source_url=hub.url,
                          manifest_digest=digest or manifest.digest)
    await journal.record(command)
    source = HttpSource(session, hub.url, image_id, token=None, backoff_initial_s=0.01, backoff_max_s=0.02)
    await replicator.copy(command, edge, journal, source, site=site)
    return source


async def read_all(store: FileStore, image_id: str) -> bytes:
    return await store.read(image_id, 0, await store.size(image_id))


def v1_and_v2() -> tuple[bytes, bytes, int]:
    """v1: 600 random blocks with holes; v2: v1's blocks shifted by 3 blocks,
    30 of them changed, 10 added. Returns both and how many of v2's data
    blocks are not among v1's."""
    data = blocks(600)
    v1 = b"".join(data[:300]) + bytes(64 * BLOCK_BYTES) + b"".join(data[300:]) + bytes(100 * BLOCK_BYTES)
    changed = {i: os.urandom(BLOCK_BYTES) for i in range(5, 600, 20)}
    v2_blocks = [changed.get(i, b) for i, b in enumerate(data)] + blocks(10)
    v2 = bytes(3 * BLOCK_BYTES) + b"".join(v2_blocks) + bytes(61 * BLOCK_BYTES)
    return v1, v2, len(changed) + 10


async def test_a_copy_with_a_manifest_is_checked_block_by_block_and_never_hashes_the_image(
        central, edge, journal, session, tmp_path, monkeypatch) -> None:
    content = b"".join(blocks(100)) + bytes(8 * MiB) + b"".join(blocks(50)) + b"tail"
    site = SiteCopies(AgentManifests(tmp_path / "manifests"))
    monkeypatch.setattr(replicator, "pump", None)  # the whole-image sha512 path must not run
    async with serving(central) as hub:
        image_id, manifest = await import_image(central, hub, content)
        source = await copy(hub, session, edge, journal, site, image_id, manifest)
    assert await read_all(edge, image_id) == content
    assert await edge.allocated_bytes(image_id) <= 151 * BLOCK_BYTES + 64 * 1024  # holes stayed holes
    assert source.data_bytes_fetched == hub.served.served_bytes_total == 150 * BLOCK_BYTES + 4
    # The manifest stays with the copy, for the next copy's dedup; a delete drops it.
    assert (tmp_path / "manifests" / f"{image_id}.manifest").read_bytes() == manifest.encode()
    assert len(site.blocks) == 150
    await replicator.delete(DeleteCommand(task_id="d", image_id=image_id), edge, site)
    assert not (tmp_path / "manifests" / f"{image_id}.manifest").exists() and len(site.blocks) == 0


async def test_an_update_fetches_only_the_blocks_the_site_lacks(central, edge, journal, session, tmp_path) -> None:
    v1, v2, new_blocks = v1_and_v2()
    site = SiteCopies(AgentManifests(tmp_path / "manifests"))
    async with serving(central) as hub:
        id1, m1 = await import_image(central, hub, v1)
        await copy(hub, session, edge, journal, site, id1, m1)
        before = hub.served.served_bytes_total
        id2, m2 = await import_image(central, hub, v2)
        await copy(hub, session, edge, journal, site, id2, m2)
    assert await read_all(edge, id2) == v2
    assert hub.served.served_bytes_total - before == new_blocks * BLOCK_BYTES
    # An agent started later finds the same blocks from the manifests it kept.
    again = await AgentManifests(tmp_path / "manifests").load_all(await edge.image_ids())
    zero = blake3.blake3(bytes(BLOCK_BYTES)).digest(length=16)  # zero blocks need no index: they are holes
    assert len(again) == len(({h for _, h in m1.blocks()} | {h for _, h in m2.blocks()}) - {zero})


async def test_a_local_copy_that_lost_data_costs_a_refetch_not_a_bad_copy(
        central, edge, journal, session, tmp_path) -> None:
    v1, v2, _ = v1_and_v2()
    site = SiteCopies(AgentManifests(tmp_path / "manifests"))
    async with serving(central) as hub:
        id1, m1 = await import_image(central, hub, v1)
        await copy(hub, session, edge, journal, site, id1, m1)
        with (edge.root / id1).open("r+b") as fh:  # bit rot in v1's first 40 blocks
            fh.write(os.urandom(40 * BLOCK_BYTES))
        id2, m2 = await import_image(central, hub, v2)
        await copy(hub, session, edge, journal, site, id2, m2)
    assert await read_all(edge, id2) == v2


async def test_corrupt_ranges_from_the_hub_are_fetched_again(
        central, edge, journal, session, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CORRUPT_CHUNKS_ENV, "2")
    content = b"".join(blocks(3000))
    async with serving(central) as hub:
        image_id, manifest = await import_image(central, hub, content)
        await copy(hub, session, edge, journal, SiteCopies(None), image_id, manifest)
    assert await read_all(edge, image_id) == content
    assert hub.served.served_bytes_total > len(content)


async def test_a_hub_that_always_corrupts_fails_the_copy_and_publishes_nothing(
        central, edge, journal, session, monkeypatch) -> None:
    monkeypatch.setenv(CORRUPT_CHUNKS_ENV, "1000")
    async with serving(central) as hub:
        image_id, manifest = await import_image(central, hub, b"".join(blocks(300)))
        with pytest.raises(TransferError) as failed:
            await copy(hub, session, edge, journal, SiteCopies(None), image_id, manifest)
    assert failed.value.retryable and "don't match the manifest" in failed.value.message
    assert not await edge.exists(image_id)


async def test_a_manifest_that_is_not_the_one_named_falls_back_to_the_sha512(
        central, edge, journal, session) -> None:
    content = b"".join(blocks(200))
    async with serving(central) as hub:
        image_id, manifest = await import_image(central, hub, content)
        await copy(hub, session, edge, journal, SiteCopies(None), image_id, manifest, digest="0" * 64)
    assert await read_all(edge, image_id) == content
    assert hashlib.sha512(await read_all(edge, image_id)).hexdigest() == manifest.os_hash_value


async def test_a_resumed_copy_reads_back_what_it_wrote(central, edge, journal, session, tmp_path) -> None:
    content = b"".join(blocks(4096))  # 16 MiB: four ranges
    site = SiteCopies(None)
    async with serving(central) as hub:
        image_id, manifest = await import_image(central, hub, content)
        command = CopyCommand(task_id="resumed", image_id=image_id, size_bytes=len(content),
                              os_hash_value=manifest.os_hash_value, source_url=hub.url,
                              manifest_digest=manifest.digest)
        await journal.record(command)
        await journal.add_done("resumed", 0, 8 * MiB)
        await journal.flush_done()
        async with await edge.open_writer(image_id, len(content)) as writer:  # what the first attempt wrote
            await writer.write(0, content[:8 * MiB])
            await writer.flush()
            await writer.suspend()
        source = HttpSource(session, hub.url, image_id, token=None)
        await replicator.copy(command, edge, journal, source, site=site)
    assert await read_all(edge, image_id) == content
    assert hub.served.served_bytes_total == 8 * MiB  # only what the first attempt lacked
