"""Dedup at the edge on real Ceph: an ext4 image rebuilt from a slightly
changed tree (`mke2fs -d`), copied to an edge whose RBD pool holds the first
build, fetches only the blocks the site lacks and takes the rest from the
copy it has; every block checked against the manifest made at import."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgesync.agent import replicator
from edgesync.agent.dedup import AgentManifests, SiteCopies
from edgesync.agent.journal import Journal
from edgesync.bus import CopyCommand
from edgesync.lab.ceph import CephCluster
from edgesync.stores.base import ImageStore
from edgesync.stores.rbd import RbdStore
from edgesync.transfer.http import HttpSource, ServedCounters, data_routes
from edgesync.transfer.manifest import Manifest
from edgesync.transfer.pipeline import FileSource, pump
from tests.fixtures.ext4 import copy_files, mkfs, updated_tree

pytestmark = pytest.mark.ceph

MiB = 1 << 20


async def anyone(request: web.Request, image_id: str) -> None:
    """Every caller may read every image here (authorisation is tested in test_transfer_http)."""



CREATED: set[str] = set()  # the images these tests made, removed after each


@pytest.fixture
async def central_and_dcn0(ceph_clusters: dict[str, CephCluster]) -> AsyncIterator[tuple[RbdStore, RbdStore]]:
    central = RbdStore.from_config("central", ceph_clusters["central"].store_config())
    dcn0 = RbdStore.from_config("dcn0", ceph_clusters["dcn0"].store_config())
    try:
        yield central, dcn0
    finally:
        for store in (central, dcn0):
            for image_id in await store.image_ids():
                if image_id in CREATED:
                    await store.delete(image_id)
        await central.close()
        await dcn0.close()


async def import_into(store: RbdStore, path: Path) -> tuple[str, Manifest]:
    """What the hub's import does: one pass writes central and makes the manifest."""
    image_id = str(uuid.uuid4())  # canonical: the data routes refuse any other spelling
    CREATED.add(image_id)
    source = FileSource(path)
    try:
        size = await source.size()
        async with await store.open_writer(image_id, size) as writer:
            digest = await pump(source, writer, size=size, with_manifest=True)
            await writer.publish()
    finally:
        source.close()
    return image_id, digest.manifest()


async def serve(store: ImageStore, manifests: dict[str, bytes], served: ServedCounters) -> TestServer:
    async def lookup(image_id: str) -> ImageStore:
        return store

    async def manifest(image_id: str) -> bytes:
        return manifests[image_id]

    app = web.Application()
    app.add_routes(data_routes(lookup, anyone, counters=served, manifests=manifest))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def sha512_of(store: RbdStore, image_id: str) -> str:
    digest = hashlib.sha512()
    size = await store.size(image_id)
    for offset in range(0, size, 8 * MiB):
        digest.update(await store.read(image_id, offset, min(8 * MiB, size - offset)))
    return digest.hexdigest()


async def test_a_rebuilt_ext4_image_fetches_only_what_the_edge_lacks(
        central_and_dcn0: tuple[RbdStore, RbdStore], tmp_path: Path) -> None:
    central, dcn0 = central_and_dcn0
    tree = copy_files(tmp_path / "v1", [Path("/usr/share/doc"), Path("/usr/lib/python3")], 40 * MiB)
    v1 = mkfs(tree, tmp_path / "v1.img", 96 * MiB)
    v2 = mkfs(updated_tree(tree, tmp_path / "v2", changed_fraction=0.03, added_bytes=MiB), tmp_path / "v2.img", 96 * MiB)
    v2_allocated = os.stat(v2).st_blocks * 512

    id1, m1 = await import_into(central, v1)
    id2, m2 = await import_into(central, v2)
    served = ServedCounters()
    server = await serve(central, {id1: m1.encode(), id2: m2.encode()}, served)
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    site = SiteCopies(AgentManifests(tmp_path / "manifests"))
    try:
        async with aiohttp.ClientSession() as session:
            for image_id, manifest in ((id1, m1), (id2, m2)):
                before = served.served_bytes_total, served.sent_bytes_total
                command = CopyCommand(task_id=f"copy-{image_id}", image_id=image_id, size_bytes=manifest.image_size,
                                      os_hash_value=manifest.os_hash_value, source_url="hub",
                                      manifest_digest=manifest.digest)
                await journal.record(command)
                source = HttpSource(session, str(server.make_url("")), image_id, token=None)
                await replicator.copy(command, dcn0, journal, source, site=site)
                data, wire = served.served_bytes_total - before[0], served.sent_bytes_total - before[1]
    finally:
        await server.close()
        await journal.close()

    assert await sha512_of(dcn0, id2) == hashlib.sha512(v2.read_bytes()).hexdigest() == m2.os_hash_value
    # v2's data blocks found among v1's were read at the edge, not fetched.
    v1_blocks = {h for _, h in m1.blocks()}
    new_blocks = {h for _, h in m2.blocks() if h not in v1_blocks}
    assert 0 < data <= len(new_blocks) * 4096 + 64 * 1024
    assert data < 0.15 * v2_allocated and wire <= data
    assert await dcn0.allocated_bytes(id2) <= await central.allocated_bytes(id2)  # zeros stayed holes
