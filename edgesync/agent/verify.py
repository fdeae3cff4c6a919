"""Checking a copy someone else made at this site (`VerifyCommand`).

Nova's direct snapshot writes an image straight into the site's pool (RBD
image `<uuid>`, protected snapshot `snap`) and adds its location to a queued
image at the hub. The hub can't read the site's pool, so it asks this agent:
is the copy there, published, and what are its size, md5 and sha512? The
digest is computed here, through the site's own store (holes hashed as
zeros without being read), so no image data crosses the WAN for it; the
hub records it and checks the copy to central against it.

The same pass makes the copy's chunk manifest, which the site keeps like
those of the copies it made itself: later copies to this site can take
blocks from it (dedup).
"""

from __future__ import annotations

import logging

from edgesync.agent.dedup import SiteCopies
from edgesync.bus import DoneEvent, VerifyCommand
from edgesync.errors import StoreImageNotFound
from edgesync.stores.base import ImageStore
from edgesync.transfer.pipeline import digest_published

log = logging.getLogger(__name__)


async def verify(command: VerifyCommand, store: ImageStore, site: SiteCopies) -> DoneEvent:
    image_id = command.image_id
    if not await store.exists(image_id):
        raise StoreImageNotFound(
            f"no published copy of image {image_id}: {await store.why_unpublished(image_id)} (a copy is "
            f"RBD image <image id> with protected snapshot 'snap' in the site's pool)")
    digest = await digest_published(store, image_id, with_md5=True, with_manifest=True)
    await site.keep(image_id, digest.manifest())
    log.info("task %s: image %s checked in store %s: %d bytes, sha512 %s…", command.task_id, image_id,
             store.name, digest.size, digest.os_hash_value[:16])
    return DoneEvent(task_id=command.task_id, image_id=image_id, location_url=store.location_url(image_id),
                     size_bytes=digest.size, checksum=digest.checksum, os_hash_value=digest.os_hash_value)
