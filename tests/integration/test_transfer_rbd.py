"""The transfer protocol between two real Ceph clusters: an image published in
central's RBD pool, served by `data_routes`, pulled by `HttpSource` through
`pump` into dcn0's pool — identical, verified, and as sparse as the source."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgesync.lab.ceph import CephCluster
from edgesync.stores.base import ImageStore
from edgesync.stores.rbd import RbdStore
from edgesync.transfer.http import HttpSource, data_routes
from edgesync.transfer.pipeline import pump

pytestmark = pytest.mark.ceph

MiB = 1 << 20
STRIPE = 4 * MiB  # one RBD object


@pytest.fixture
async def central_and_dcn0(ceph_clusters: dict[str, CephCluster]) -> AsyncIterator[tuple[RbdStore, RbdStore]]:
    central = RbdStore.from_config("central", ceph_clusters["central"].store_config())
    dcn0 = RbdStore.from_config("dcn0", ceph_clusters["dcn0"].store_config())
    try:
        yield central, dcn0
    finally:
        await central.close()
        await dcn0.close()


async def publish_striped(store: RbdStore, size: int) -> tuple[str, bytes]:
    """Data in every other 4 MiB object, holes in the rest."""
    image_id = str(uuid.uuid4())
    data = os.urandom(STRIPE)
    content = b"".join(data if (off // STRIPE) % 2 == 0 else bytes(STRIPE) for off in range(0, size, STRIPE))
    async with await store.open_writer(image_id, size) as writer:
        for off in range(0, size, 2 * STRIPE):
            await writer.write(off, data)
        await writer.publish()
    return image_id, content


async def serve(store: ImageStore) -> TestServer:
    async def lookup(image_id: str) -> ImageStore:
        return store

    async def anyone(request: web.Request, image_id: str) -> None:
        """Route authorisation is the API tests' subject; here every read is allowed."""

    app = web.Application()
    app.add_routes(data_routes(lookup, anyone))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_pull_from_central_rbd_into_dcn0_rbd(central_and_dcn0: tuple[RbdStore, RbdStore]) -> None:
    central, dcn0 = central_and_dcn0
    size = 64 * MiB
    image_id, content = await publish_striped(central, size)
    server = await serve(central)
    try:
        async with aiohttp.ClientSession() as session:
            src = HttpSource(session, str(server.make_url("")), image_id, token=None)
            async with await dcn0.open_writer(image_id, await src.size()) as writer:
                digest = await pump(src, writer, size=size, with_md5=False)
                await writer.publish()

        copied = b"".join([await dcn0.read(image_id, off, 8 * MiB) for off in range(0, size, 8 * MiB)])
        assert copied == content
        assert digest.os_hash_value == hashlib.sha512(content).hexdigest()
        data = size // 2
        assert src.bytes_fetched == data  # holes never crossed the wire
        assert await dcn0.allocated_bytes(image_id) <= 1.05 * data  # and stayed holes
        assert await dcn0.extents(image_id) == await central.extents(image_id)
    finally:
        await server.close()
        for store in (central, dcn0):
            if await store.exists(image_id):
                await store.delete(image_id)
