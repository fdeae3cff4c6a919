"""The seam through which the hub has copies made between stores.

`Replicator` is what the import orchestration calls; it never touches store
internals. `InHubReplicator` does the copy inside the hub process, reading
from the source store and writing the destination store through the store
interface — unless the destination is a site's agent (`RemoteStore`), which
then makes the copy itself, pulling from the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from edgesync.errors import ChecksumMismatch, StoreImageExists
from edgesync.hub.remote import RemoteStore
from edgesync.model import Image
from edgesync.observer import NO_OBSERVER, CopyObserver
from edgesync.stores.base import ImageStore, Location
from edgesync.transfer.pipeline import BytesDoneFn, CopyProgressFn, MeasuredSource, StoreSource, pump

log = logging.getLogger(__name__)


class Replicator(Protocol):
    async def replicate(self, image: Image, source: str, dest: str, on_progress: CopyProgressFn,
                        *, job_id: str, resume: bool = False) -> Location:
        """Make a verified, published copy of `image` from store `source` in
        `dest`, reporting (data bytes done, data bytes in all) as it goes.
        `job_id` names this copy: repeating it is harmless. `resume`: a
        previous hub run started this copy (a site's agent may still be
        making it)."""

    async def remove(self, image_id: str, store: str) -> None:
        """Delete the copy of `image_id` in `store`."""


class InHubReplicator:
    def __init__(self, stores: dict[str, ImageStore],
                 observers: Callable[[str], CopyObserver] = lambda _site: NO_OBSERVER) -> None:
        """`observers(site)` is told what copies into `site`'s store write."""
        self._stores = stores
        self._observers = observers

    async def replicate(self, image: Image, source: str, dest: str, on_progress: CopyProgressFn,
                        *, job_id: str, resume: bool = False) -> Location:
        assert image.size is not None and image.os_hash_value, "only active images are copied"
        target = self._stores[dest]
        if isinstance(target, RemoteStore):  # the site's agent copies
            return await target.replicate(image, job_id, on_progress, resume=resume)
        try:
            writer = await target.open_writer(image.id, image.size)
        except StoreImageExists:
            # A copy published by an attempt the catalog never recorded (the
            # hub died between publish and commit): nothing references it.
            log.warning("replacing unrecorded copy of %s in %s", image.id, dest)
            await target.delete(image.id)
            writer = await target.open_writer(image.id, image.size)
        data = MeasuredSource(StoreSource(self._stores[source], image.id))
        observer = self._observers(dest)
        async with writer:
            digest = await pump(data, writer, size=image.size,
                                on_progress=_counting(data.reporting_to(on_progress), observer), with_md5=False)
            if digest.os_hash_value != image.os_hash_value:
                observer.digest_mismatch("image")
                raise ChecksumMismatch(
                    f"copy of {image.id} to {dest} does not match os_hash_value; not published"
                )
            return await writer.publish()

    async def remove(self, image_id: str, store: str) -> None:
        await self._stores[store].delete(image_id)


def _counting(on_progress: BytesDoneFn, observer: CopyObserver) -> BytesDoneFn:
    """`on_progress`, also telling `observer` the bytes written since the last call."""
    counted = 0

    async def progress(done_bytes: int) -> None:
        nonlocal counted
        observer.written(done_bytes - counted)
        counted = done_bytes
        await on_progress(done_bytes)

    return progress

