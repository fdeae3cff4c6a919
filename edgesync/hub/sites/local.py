"""A site whose store the hub writes itself: central always, and every site
in in-hub mode. Copies run inside the hub process, read from the source
site and written through the store driver; each is verified against the
image's os_hash_value before it is published."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from edgesync.errors import ChecksumMismatch, EdgesyncError, StoreImageExists, StoreImageNotFound
from edgesync.hub.sites.base import Site, VerifiedCopy
from edgesync.importer.hashing import ImageDigest
from edgesync.model import Image
from edgesync.observer import NO_OBSERVER, CopyObserver
from edgesync.stores.base import ImageStore, ImageWriter, Location, StoreCapacity
from edgesync.transfer.manifest import Manifest
from edgesync.transfer.pipeline import (
    BytesDoneFn,
    CopyProgressFn,
    DataSource,
    MeasuredSource,
    StoreSource,
    digest_published,
    pump,
)

log = logging.getLogger(__name__)

# (image_id, manifest): keeps the chunk manifest of a copy this site was given.
KeepManifestFn = Callable[[str, Manifest], Awaitable[None]]

# A store that can't say how full it is within this is reported down, not waited for.
CAPACITY_TIMEOUT_S = 5.0


class LocalSite:
    copies_outlive_hub = False  # the hub's own work dies with it

    def __init__(self, store: ImageStore, observer: CopyObserver = NO_OBSERVER,
                 *, keep_manifest: KeepManifestFn | None = None) -> None:
        """`observer` is told what copies into this site's store write.
        `keep_manifest` (central's): a copy into this site makes the image's
        chunk manifest in its one pass (an image created at an edge) and
        hands it there once published."""
        self.store = store
        self.name = store.name
        self.description = store.description
        self.read_only = store.read_only
        self.store_type = store.type
        self._observer = observer
        self._keep_manifest = keep_manifest

    def online(self) -> bool:
        """Always: the hub operates the store itself (a failing store fails
        the work it is given, with the store's own error)."""
        return True

    async def replicate(self, image: Image, source: Site, on_progress: CopyProgressFn,
                        *, job_id: str, resume: bool = False) -> Location:
        """A copy the hub makes; `job_id` and `resume` don't matter to it (an
        interrupted in-hub copy is failed by recovery, never resumed)."""
        assert image.size is not None and image.os_hash_value, "only active images are copied"
        writer = await self._open_replacing_unrecorded(image.id, image.size)
        data = MeasuredSource(source.reader(image.id))
        async with writer:
            digest = await pump(data, writer, size=image.size, with_manifest=self._keep_manifest is not None,
                                on_progress=_counting(data.reporting_to(on_progress), self._observer), with_md5=False)
            if digest.os_hash_value != image.os_hash_value:
                self._observer.digest_mismatch("image")
                raise ChecksumMismatch(
                    f"copy of {image.id} to {self.name} does not match os_hash_value; not published"
                )
            location = await writer.publish()
        if self._keep_manifest is not None:
            await self._keep_manifest(image.id, digest.manifest())
        return location

    async def _open_replacing_unrecorded(self, image_id: str, size_bytes: int) -> ImageWriter:
        try:
            return await self.store.open_writer(image_id, size_bytes)
        except StoreImageExists:
            # A copy published by an attempt the catalog never recorded (the
            # hub died between publish and commit): nothing references it.
            log.warning("replacing unrecorded copy of %s in %s", image_id, self.name)
            await self.store.delete(image_id)
            return await self.store.open_writer(image_id, size_bytes)

    async def ingest(self, image_id: str, source: MeasuredSource,
                     on_progress: CopyProgressFn) -> tuple[ImageDigest, Location]:
        await self.store.discard_unpublished(image_id)
        if await self.store.exists(image_id):
            # Published by a run that died before the catalog recorded it; the
            # image is not active, so nothing can reference this copy.
            await self.store.delete(image_id)
        size = await source.size()
        async with await self.store.open_writer(image_id, size) as writer:
            # The same pass makes the chunk manifest agents check their copies against.
            digest = await pump(source, writer, size=size, with_manifest=True,
                                on_progress=source.reporting_to(on_progress))
            return digest, await writer.publish()

    async def remove(self, image_id: str) -> None:
        await self.store.delete(image_id)

    async def check_removable(self, image_id: str) -> None:
        await self.store.ensure_deletable(image_id)

    async def holds(self, image_id: str) -> bool:
        return await self.store.exists(image_id)

    async def verify(self, image_id: str, *, job_id: str) -> VerifiedCopy:
        """Hashed through the store, off the event loop as every store read
        is; the chunk manifest in the same pass."""
        if not await self.store.exists(image_id):
            raise StoreImageNotFound(
                f"no published copy of image {image_id}: {await self.store.why_unpublished(image_id)} (a copy "
                f"is RBD image <image id> with protected snapshot 'snap' in the site's pool)")
        digest = await digest_published(self.store, image_id, with_md5=True, with_manifest=True)
        return VerifiedCopy(self.store.location_url(image_id), digest.size, digest.checksum,
                            digest.os_hash_value, digest.manifest())

    def registered_location(self, image_id: str, reported: Any) -> Any:
        """The hub knows where its store keeps a copy; what was reported doesn't matter."""
        return self.store.location_url(image_id)

    def reader(self, image_id: str) -> DataSource:
        return StoreSource(self.store, image_id)

    async def capacity(self) -> StoreCapacity | None:
        return await self.store.capacity()

    async def status(self, hub_jobs: list[str]) -> dict[str, Any]:
        """Up if the store answers, and how full it is; in flight, what the catalog says."""
        entry: dict[str, Any] = {"agent": False, "in_flight": hub_jobs, "heartbeat_age_s": None}
        try:
            capacity = await asyncio.wait_for(self.store.capacity(), CAPACITY_TIMEOUT_S)
        except TimeoutError:
            return {**entry, **_down(f"store {self.name} did not answer within {CAPACITY_TIMEOUT_S:.0f} s")}
        except EdgesyncError as exc:
            return {**entry, **_down(exc.message)}
        return {**entry, "up": True, "problem": None,
                "free_bytes": capacity.free_bytes if capacity else None,
                "used_bytes": capacity.used_bytes if capacity else None}

    def store_properties(self) -> dict[str, Any]:
        return self.store.properties()

    async def clean_after_crash(self, image_id: str, *, recorded: bool) -> None:
        await self.store.discard_unpublished(image_id)
        if not recorded and await self.store.exists(image_id):
            # Published, but the run died before the catalog recorded it: no
            # location refers to this copy.
            await self.store.delete(image_id)

    async def close(self) -> None:
        await self.store.close()


def _down(problem: str) -> dict[str, Any]:
    return {"up": False, "problem": problem, "free_bytes": None, "used_bytes": None}


def _counting(on_progress: BytesDoneFn, observer: CopyObserver) -> BytesDoneFn:
    """`on_progress`, also telling `observer` the bytes written since the last call."""
    counted = 0

    async def progress(done_bytes: int) -> None:
        nonlocal counted
        observer.written(done_bytes - counted)
        counted = done_bytes
        await on_progress(done_bytes)

    return progress
