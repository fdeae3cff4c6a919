"""The rbd store and the lab clusters, on the session's three real Ceph clusters.

What is checked from outside the store goes through the Ceph command line
tools as client.admin (`rbd`, `rados`, `ceph`), not through the store itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgesync.errors import StoreError, StoreImageInUse, StoreUnavailable
from edgesync.lab.ceph import CephCluster, LabError, down, up
from edgesync.stores.rbd import RbdStore
from tests.fixtures.ceph import SITES

pytestmark = pytest.mark.ceph

MiB = 1 << 20
Clusters = dict[str, CephCluster]


async def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.to_thread(subprocess.run, list(argv), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc


async def admin(cluster: CephCluster, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return await run(tool, *cluster.cli_args, *args, check=check)


async def admin_json(cluster: CephCluster, tool: str, *args: str) -> object:
    return json.loads((await admin(cluster, tool, *args, "--format", "json")).stdout)


@pytest.fixture
async def stores(ceph_clusters: Clusters) -> AsyncIterator[dict[str, RbdStore]]:
    opened = {site: RbdStore.from_config(site, c.store_config()) for site, c in ceph_clusters.items()}
    try:
        yield opened
    finally:
        for s in opened.values():
            await s.close()


async def publish(store: RbdStore, image: bytes, chunk: int = 4 * MiB) -> str:
    image_id = str(uuid.uuid4())
    async with await store.open_writer(image_id, len(image)) as writer:
        for off in range(0, len(image), chunk):
            await writer.write(off, image[off:off + chunk])
        await writer.publish()
    return image_id


def striped(size: int, stripe: int = 4 * MiB) -> bytes:
    """Alternating stripes of data and zeros, starting with data."""
    data = os.urandom(stripe)
    return b"".join(data if (off // stripe) % 2 == 0 else bytes(stripe) for off in range(0, size, stripe))


async def read_back(store: RbdStore, image_id: str) -> bytes:
    size = await store.size(image_id)
    return b"".join([await store.read(image_id, off, min(8 * MiB, size - off)) for off in range(0, size, 8 * MiB)])


# --- the clusters -------------------------------------------------------------------


async def test_each_site_has_its_own_cluster(ceph_clusters: Clusters, stores: dict[str, RbdStore]) -> None:
    assert sorted(ceph_clusters) == sorted(SITES)
    fsids = {c.fsid for c in ceph_clusters.values()}
    assert len(fsids) == len(SITES)
    assert len({c.mon_addr for c in ceph_clusters.values()}) == len(SITES)
    for site, cluster in ceph_clusters.items():
        assert (await admin(cluster, "ceph", "fsid")).stdout.strip() == cluster.fsid
        await stores[site].exists(str(uuid.uuid4()))  # connects
        assert stores[site].properties() == {
            "pool": "images", "chunk_size": 4, "thin_provisioning": True,
            "fsid": cluster.fsid, "user": f"edgesync-{site}",
        }


async def test_up_again_reuses_the_running_clusters(ceph_clusters: Clusters) -> None:
    base = ceph_clusters["central"].dir.parent
    started = time.monotonic()
    again = await up(base, SITES)
    assert again == ceph_clusters
    assert time.monotonic() - started < 3


async def test_lab_refuses_bad_site_names_and_down_of_nothing_is_a_noop(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="site name"):
        await up(tmp_path, ["../escape"])
    await down(tmp_path / "never-created")
    await down(tmp_path)


# --- publish, layout, space ---------------------------------------------------------


async def test_published_image_is_named_by_fsid_and_its_snap_is_protected(
    ceph_clusters: Clusters, stores: dict[str, RbdStore]
) -> None:
    cluster, store = ceph_clusters["dcn0"], stores["dcn0"]
    image_id = await publish(store, striped(8 * MiB))
    try:
        assert store.location_url(image_id) == f"rbd://{cluster.fsid}/images/{image_id}/snap"
        snaps = await admin_json(cluster, "rbd", "snap", "ls", f"images/{image_id}")
        assert [s["name"] for s in snaps] == ["snap"]  # type: ignore[index]
        info = await admin_json(cluster, "rbd", "info", f"images/{image_id}@snap")
        assert info["protected"] == "true"  # type: ignore[index]
        names = await admin_json(cluster, "rbd", "ls", "images")
        assert not [n for n in names if n.startswith(image_id + ".")]  # type: ignore[union-attr]
    finally:
        await store.delete(image_id)


async def test_half_zero_image_takes_half_the_space(ceph_clusters: Clusters, stores: dict[str, RbdStore]) -> None:
    cluster, store = ceph_clusters["central"], stores["central"]
    size = 128 * MiB
    image = striped(size)
    image_id = await publish(store, image)
    try:
        assert await store.allocated_bytes(image_id) == size // 2
        extents = await store.extents(image_id)
        assert [(e.offset, e.length) for e in extents] == [(off, 4 * MiB) for off in range(0, size, 8 * MiB)]
        du = await admin_json(cluster, "rbd", "du", f"images/{image_id}")
        used = sum(entry["used_size"] for entry in du["images"])  # type: ignore[index]  # snap + head
        assert size // 2 <= used <= size // 2 * 1.05, du
        assert hashlib.sha512(await read_back(store, image_id)).digest() == hashlib.sha512(image).digest()
    finally:
        await store.delete(image_id)


# --- delete and clones --------------------------------------------------------------


async def test_a_cow_clone_blocks_delete_and_nothing_is_removed(
    ceph_clusters: Clusters, stores: dict[str, RbdStore]
) -> None:
    cluster, store = ceph_clusters["central"], stores["central"]
    image = striped(8 * MiB)
    image_id = await publish(store, image)
    clone = f"images/{image_id}-vm-disk"
    await admin(cluster, "rbd", "clone", f"images/{image_id}@snap", clone)  # what Nova does
    try:
        with pytest.raises(StoreImageInUse, match="clone"):
            await store.ensure_deletable(image_id)
        with pytest.raises(StoreImageInUse, match="clone"):
            await store.delete(image_id)
        assert await store.exists(image_id)
        info = await admin_json(cluster, "rbd", "info", f"images/{image_id}@snap")
        assert info["protected"] == "true"  # type: ignore[index]
        assert await read_back(store, image_id) == image
    finally:
        await admin(cluster, "rbd", "rm", "--no-progress", clone)
    await store.ensure_deletable(image_id)
    await store.delete(image_id)
    assert not await store.exists(image_id)
    names = await admin_json(cluster, "rbd", "ls", "images")
    assert not [n for n in names if image_id in n]  # type: ignore[union-attr]


async def test_a_foreign_snapshot_blocks_delete(ceph_clusters: Clusters, stores: dict[str, RbdStore]) -> None:
    cluster, store = ceph_clusters["dcn1"], stores["dcn1"]
    image_id = await publish(store, striped(4 * MiB))
    await admin(cluster, "rbd", "snap", "create", f"images/{image_id}@backup")
    try:
        with pytest.raises(StoreImageInUse, match="backup"):
            await store.ensure_deletable(image_id)
        with pytest.raises(StoreImageInUse, match="backup"):
            await store.delete(image_id)
        assert await store.exists(image_id)
    finally:
        await admin(cluster, "rbd", "snap", "rm", "--no-progress", f"images/{image_id}@backup")
    await store.delete(image_id)


# --- reaching the cluster, and what the store's user may do ---------------------------


async def test_unreachable_cluster_is_unavailable_quickly(ceph_clusters: Clusters, tmp_path: Path) -> None:
    cluster = ceph_clusters["central"]
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    conf = tmp_path / "dead.conf"
    conf.write_text(
        cluster.conf.read_text().replace(f"v2:{cluster.mon_addr},v1:{cluster.mon_addr_v1}", f"v1:127.0.0.1:{dead_port}")
    )
    assert str(dead_port) in conf.read_text()
    store = RbdStore("dead", ceph_conf=conf, user=cluster.user, keyring=cluster.keyring, connect_timeout_s=2)
    try:
        for _ in range(2):  # the failed connection is retried on the next call
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await store.exists(str(uuid.uuid4()))
            assert time.monotonic() - started < 8
            assert caught.value.retryable
    finally:
        await store.close()


async def test_store_user_cannot_touch_another_pool(ceph_clusters: Clusters) -> None:
    cluster = ceph_clusters["dcn1"]
    await admin(cluster, "ceph", "osd", "pool", "create", "other", "1", "1")
    await admin(cluster, "rbd", "pool", "init", "other")
    as_user = ["-c", str(cluster.conf), "--id", cluster.user, "--keyring", str(cluster.keyring)]

    allowed = await run("rbd", *as_user, "create", "--size", "1M", f"images/probe-{uuid.uuid4()}")
    assert allowed.returncode == 0, allowed.stderr  # the control: its own pool works
    for argv in (
        ["rbd", *as_user, "create", "--size", "1M", "other/probe"],
        ["rados", *as_user, "-p", "other", "put", "probe", str(cluster.conf)],
        ["ceph", *as_user, "osd", "pool", "create", "mine", "1"],
    ):
        denied = await run(*argv, check=False)
        assert denied.returncode != 0, argv
        assert re.search(r"permission|access denied|\((1|13)\)", denied.stderr, re.I), denied.stderr

    foreign = RbdStore("dcn1-other", ceph_conf=cluster.conf, pool="other", user=cluster.user, keyring=cluster.keyring)
    try:
        with pytest.raises(StoreError, match="permission"):
            await foreign.open_writer(str(uuid.uuid4()), MiB)
    finally:
        await foreign.close()
    for name in (await admin_json(cluster, "rbd", "ls", "images")):  # type: ignore[union-attr]
        if name.startswith("probe-"):
            await admin(cluster, "rbd", "rm", "--no-progress", f"images/{name}")


# --- qemu-img and copies between sites ------------------------------------------------


async def test_qemu_img_converts_straight_into_the_unpublished_image(
    stores: dict[str, RbdStore], tmp_path: Path
) -> None:
    store = stores["dcn0"]
    raw = tmp_path / "src.raw"
    size = 24 * MiB
    with raw.open("wb") as fh:  # data at 0, 9 MiB and the last MiB; holes between
        fh.truncate(size)
        for off in (0, 9 * MiB, size - MiB):
            fh.seek(off)
            fh.write(os.urandom(MiB))
    qcow2 = tmp_path / "src.qcow2"
    await run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))

    image_id = str(uuid.uuid4())
    async with await store.open_writer(image_id, size) as writer:
        target = writer.qemu_destination()
        assert target.startswith(f"rbd:images/{image_id}.partial:conf=")
        await run("qemu-img", "convert", "-n", "--target-is-zero", "-f", "qcow2", "-O", "raw", str(qcow2), target)
        assert not await store.exists(image_id)
        await writer.publish()
    try:
        assert await read_back(store, image_id) == raw.read_bytes()
        assert await store.allocated_bytes(image_id) == 3 * 4 * MiB  # three objects, no more
    finally:
        await store.delete(image_id)


async def test_copy_between_sites_keeps_bytes_and_holes(
    ceph_clusters: Clusters, stores: dict[str, RbdStore]
) -> None:
    image = striped(32 * MiB)
    source, dest = stores["central"], stores["dcn1"]
    image_id = await publish(source, image)
    try:
        async with await dest.open_writer(image_id, await source.size(image_id)) as writer:
            for extent in await source.extents(image_id):
                await writer.write(extent.offset, await source.read(image_id, extent.offset, extent.length))
            location = await writer.publish()
        assert location.url == f"rbd://{ceph_clusters['dcn1'].fsid}/images/{image_id}/snap"
        assert await read_back(dest, image_id) == image
        assert await dest.allocated_bytes(image_id) == await source.allocated_bytes(image_id) == 16 * MiB
    finally:
        await source.delete(image_id)
        if await dest.exists(image_id):
            await dest.delete(image_id)


_KILLED_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from edgesync.stores.rbd import RbdStore

async def main() -> None:
    conf, pool, user, keyring, image_id = sys.argv[1:]
    store = RbdStore("dcn0", ceph_conf=Path(conf), pool=pool, user=user, keyring=Path(keyring))
    writer = await store.open_writer(image_id, 16 << 20)
    await writer.write(0, b"\\x5a" * (8 << 20))
    await writer.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # mid-copy, holding the image's exclusive lock

asyncio.run(main())
"""


async def test_a_copy_resumed_after_its_writer_was_killed_does_not_wait_for_the_dead_lock(
    ceph_clusters: Clusters, stores: dict[str, RbdStore]
) -> None:
    """A killed writer keeps the partial image's exclusive lock until its watch
    times out (30 s); resuming breaks it instead of waiting."""
    cluster, store = ceph_clusters["dcn0"], stores["dcn0"]
    image_id = str(uuid.uuid4())
    killed = await run(sys.executable, "-c", _KILLED_WRITER, str(cluster.conf), cluster.pool,
                       cluster.user, str(cluster.keyring), image_id, check=False)
    assert killed.returncode == -9, killed.stderr
    started = time.monotonic()
    async with await store.open_writer(image_id, 16 << 20, resume=True) as writer:
        assert await writer.read_back(0, 8 << 20) == b"\x5a" * (8 << 20)
        await writer.write(8 << 20, b"\xa5" * (8 << 20))
        await writer.flush()
        assert time.monotonic() - started < 10
        await writer.publish()
    try:
        assert await read_back(store, image_id) == b"\x5a" * (8 << 20) + b"\xa5" * (8 << 20)
    finally:
        await store.delete(image_id)


async def test_a_fresh_copy_over_a_killed_writers_leftover_does_not_wait_for_the_dead_lock(
    ceph_clusters: Clusters, stores: dict[str, RbdStore]
) -> None:
    cluster, store = ceph_clusters["dcn0"], stores["dcn0"]
    image_id = str(uuid.uuid4())
    killed = await run(sys.executable, "-c", _KILLED_WRITER, str(cluster.conf), cluster.pool,
                       cluster.user, str(cluster.keyring), image_id, check=False)
    assert killed.returncode == -9, killed.stderr
    started = time.monotonic()
    async with await store.open_writer(image_id, 4 << 20) as writer:  # discards the leftover
        await writer.write(0, b"\x77" * (4 << 20))
        await writer.publish()
    try:
        assert time.monotonic() - started < 10
        assert await read_back(store, image_id) == b"\x77" * (4 << 20)
    finally:
        await store.delete(image_id)
