"""Images adopted from another image service (Glance), and the copies adopted in place.

`adopt_image` writes an adopted image whole in one transaction — its row
(id, status, owner, timestamps as the source had them), properties, tags,
members, the locations of the copies that passed their check, and the
adoption record — so a crash leaves either the image as it was or as
adopted, never half of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgesync.catalog.images import put_location, replace_tags, write_fields, write_properties
from edgesync.catalog.members import ImageMember, replace_image_members
from edgesync.catalog.rows import IMAGE_COLUMNS, image_row, insert_sql
from edgesync.catalog.tables import Tables
from edgesync.errors import Conflict
from edgesync.model import RESERVED_PREFIX, Image, utcnow
from edgesync.sqlite import Transaction
from edgesync.stores.base import Location


@dataclass(frozen=True)
class AdoptedCopy:
    store: str
    url: str
    verified: str  # "full" or "none"


@dataclass(frozen=True)
class Adoption:
    image_id: str
    source: str
    source_updated_at: str
    copies: dict[str, AdoptedCopy] = field(default_factory=dict)


class AdoptionTables(Tables):
    async def adoption(self, image_id: str) -> Adoption | None:
        row = await self._db.row("SELECT * FROM adoptions WHERE image_id = ?", (image_id,))
        if row is None:
            return None
        copies = {r["store"]: AdoptedCopy(r["store"], r["url"], r["verified"])
                  for r in await self._db.rows("SELECT * FROM adopted_copies WHERE image_id = ?", (image_id,))}
        return Adoption(image_id, row["source"], row["source_updated_at"], copies)

    async def adopted_count(self) -> int:
        row = await self._db.row("SELECT COUNT(*) AS n FROM adoptions")
        return int(row["n"]) if row is not None else 0

    async def adopt_image(self, image: Image, *, members: list[ImageMember], copies: list[AdoptedCopy],
                          source: str, source_updated_at: str, new: bool) -> None:
        """Write `image` as adopted: created (`new`; Conflict if the id is taken
        meanwhile) or brought up to date with the source (Conflict while a task
        of edgesync's holds the image); the properties edgesync keeps itself
        (os_glance_*) stay as they are."""
        async with self._db.transaction() as tx:
            if new:
                if await tx.row("SELECT 1 FROM images WHERE id = ?", (image.id,)) is not None:
                    raise Conflict(f"An image with id {image.id} was created meanwhile")
                await tx.execute(insert_sql("images", IMAGE_COLUMNS), image_row(image))
            else:
                await _refuse_if_locked(tx, image.id)
                await _update_row(tx, image)
            await _replace_properties(tx, image)
            await replace_tags(tx, image.id, image.tags)
            await replace_image_members(tx, image.id, members)
            for copy in copies:
                await put_location(tx, image.id, Location(copy.store, copy.url))
                await tx.execute(
                    "INSERT INTO adopted_copies (image_id, store, url, verified, checked_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (image_id, store) DO UPDATE SET url = excluded.url, verified = excluded.verified, "
                    "checked_at = excluded.checked_at", (image.id, copy.store, copy.url, copy.verified, utcnow()))
            await tx.execute(
                "INSERT INTO adoptions (image_id, source, source_updated_at, adopted_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (image_id) DO UPDATE SET source = excluded.source, "
                "source_updated_at = excluded.source_updated_at, adopted_at = excluded.adopted_at",
                (image.id, source, source_updated_at, utcnow()))


async def _refuse_if_locked(tx: Transaction, image_id: str) -> None:
    held = await tx.row("SELECT task_id FROM import_locks WHERE image_id = ?", (image_id,))
    if held is not None:
        raise Conflict(f"Image {image_id} is held by task {held['task_id']}; adopt it again once that ends")


async def _update_row(tx: Transaction, image: Image) -> None:
    values = dict(zip(IMAGE_COLUMNS, image_row(image), strict=True))
    values.pop("id")
    updated_at = values.pop("updated_at")
    await write_fields(tx, image.id, values)
    # write_fields stamps now; the source's own updated_at is what the image had there.
    await tx.execute("UPDATE images SET updated_at = ? WHERE id = ?", (updated_at, image.id))


async def _replace_properties(tx: Transaction, image: Image) -> None:
    await tx.execute("DELETE FROM image_properties WHERE image_id = ? AND substr(key, 1, ?) != ?",
                     (image.id, len(RESERVED_PREFIX), RESERVED_PREFIX))
    await write_properties(tx, image.id, image.properties, ())
