"""The hub's side of chunk manifests: which manifest a copy to an agent names.

A manifest is made at import (in `LocalSite.ingest`'s pass; the importer
keeps it) and when an image created at an edge is copied to central
(central's `LocalSite.replicate`, through its `keep_manifest`). An image
imported before manifests existed gets its manifest lazily, the first time it
is copied to an agent: one read of central's copy, which is also checked
against os_hash_value, so a manifest only ever describes verified data. If
that fails the copy goes on without one (the agent then verifies the whole
image's sha512, as before manifests).
"""

from __future__ import annotations

import logging

from edgesync.catalog import Catalog
from edgesync.errors import EdgesyncError, NotFound
from edgesync.importer.hashing import ImageDigest
from edgesync.model import Image
from edgesync.stores.base import ImageStore
from edgesync.transfer.manifest import Manifest
from edgesync.transfer.pipeline import chunked

log = logging.getLogger(__name__)


class HubManifests:
    def __init__(self, catalog: Catalog, central: ImageStore) -> None:
        self.catalog = catalog
        self.central = central

    async def for_copy(self, image: Image) -> str | None:
        """The digest of the manifest a copy of `image` names; made now from
        central's copy if the image has none yet. None if it can't be made."""
        manifest = await self.catalog.current_manifest(image.id, image.os_hash_value)
        if manifest is not None:
            return manifest.digest
        try:
            manifest = await self.make_from_central(image)
        except EdgesyncError as exc:
            log.warning("image %s: no chunk manifest (%s); agents verify its sha512 instead", image.id, exc.message)
            return None
        await self.catalog.put_manifest(image.id, manifest)
        log.info("image %s: chunk manifest made from central's copy (%d blocks)", image.id, manifest.block_count)
        return manifest.digest

    async def make_from_central(self, image: Image) -> Manifest:
        digest = ImageDigest(with_md5=False, with_manifest=True)
        size = await self.central.size(image.id)
        for chunk in chunked(await self.central.extents(image.id)):
            await digest.update_zeros(chunk.offset - digest.size)
            await digest.update(await self.central.read(image.id, chunk.offset, chunk.length))
        await digest.update_zeros(size - digest.size)
        if digest.os_hash_value != image.os_hash_value:
            raise EdgesyncError(f"central's copy of image {image.id} does not hash to its os_hash_value")
        return digest.manifest()

    async def save(self, image_id: str, manifest: Manifest) -> None:
        await self.catalog.put_manifest(image_id, manifest)

    async def body(self, image_id: str) -> bytes:
        """The stored manifest, encoded (for agents to fetch)."""
        stored = await self.catalog.manifest_body(image_id)
        if stored is None:
            raise NotFound(f"image {image_id} has no chunk manifest")
        return stored[1]
