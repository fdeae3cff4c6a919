"""The image_manifests table: each image's chunk manifest, named by its digest.

A manifest is made at import (or, for an image imported before manifests
existed, the first time the hub copies it to an agent: see
`edgesync.hub.manifests`) and kept until the image is deleted (the row goes
with it, ON DELETE CASCADE). A row is only ever trusted for the image data
it names: `current_manifest` answers None when its os_hash_value is not the
image's (data imported again after a failed import).
"""

from __future__ import annotations

from edgesync.catalog.tables import Tables
from edgesync.model import utcnow
from edgesync.transfer.manifest import InvalidManifest, Manifest


class ManifestTables(Tables):

    async def put_manifest(self, image_id: str, manifest: Manifest) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO image_manifests (image_id, digest, body, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (image_id) DO UPDATE SET digest = excluded.digest, body = excluded.body, "
                "created_at = excluded.created_at",
                (image_id, manifest.digest, manifest.encode(), utcnow()))

    async def manifest_body(self, image_id: str) -> tuple[str, bytes] | None:
        """(digest, encoded manifest) as stored, for serving it unparsed."""
        rows = await self._db.rows("SELECT digest, body FROM image_manifests WHERE image_id = ?", (image_id,))
        return (rows[0]["digest"], bytes(rows[0]["body"])) if rows else None

    async def current_manifest(self, image_id: str, os_hash_value: str | None) -> Manifest | None:
        """The image's manifest if it was made for data hashing to `os_hash_value`."""
        stored = await self.manifest_body(image_id)
        if stored is None or not os_hash_value:
            return None
        try:
            manifest = Manifest.decode(stored[1])
        except InvalidManifest:
            return None  # made again from the data by whoever needs it
        if manifest.digest != stored[0] or manifest.os_hash_value != os_hash_value:
            return None
        return manifest
