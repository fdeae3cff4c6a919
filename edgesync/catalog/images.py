"""Images, with their properties, tags, members and locations.

The family the others lean on: tasks change an image's fields and
properties, and jobs and confirmed deletes add or drop its locations, inside
their own transactions, through the functions at the end of this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from edgesync.catalog.image_query import ImageQuery, image_filters
from edgesync.catalog.rows import IMAGE_COLUMNS, image_field_values, image_from_row, image_row, insert_sql
from edgesync.catalog.tables import IN_IDS, Tables, ids_arg
from edgesync.errors import Conflict, NotFound
from edgesync.model import Image, ImageStatus, utcnow
from edgesync.sqlite import Row, Transaction
from edgesync.stores.base import Location


class ImageTables(Tables):
    async def insert_image(self, image: Image) -> Image:
        async with self._db.transaction() as tx:
            await tx.execute(insert_sql("images", IMAGE_COLUMNS), image_row(image))
            await write_properties(tx, image.id, image.properties, ())
            await _write_tags(tx, image.id, image.tags)
        return await self.require_image(image.id)

    async def get_image(self, image_id: str) -> Image | None:
        rows = await self._db.rows("SELECT * FROM images WHERE id = ?", (image_id,))
        if not rows:
            return None
        return (await self._hydrate(rows))[0]

    async def copy_facts(self, image_id: str, store: str) -> tuple[bool, str | None]:
        """Whether `store` holds a copy of the image, and its os_hash_value:
        what serving a copy needs, without reading the image's other locations
        (a copy to N sites asks N times, of an image with up to N locations).
        NotFound if there is no such image."""
        row = await self._db.row(
            "SELECT os_hash_value, EXISTS(SELECT 1 FROM locations WHERE image_id = images.id AND store = ?) AS held "
            "FROM images WHERE id = ?", (store, image_id))
        if row is None:
            raise NotFound(f"No image found with ID {image_id}")
        return bool(row["held"]), row["os_hash_value"]

    async def require_image(self, image_id: str) -> Image:
        image = await self.get_image(image_id)
        if image is None:
            raise NotFound(f"No image found with ID {image_id}")
        return image

    async def update_image(
        self,
        image_id: str,
        *,
        fields: dict[str, Any] | None = None,
        set_properties: dict[str, str] | None = None,
        remove_properties: Iterable[str] = (),
        tags: list[str] | None = None,
        expect_status: Iterable[ImageStatus] | None = None,
        location: Location | None = None,
    ) -> Image:
        """Change an image in one transaction (a `location` recorded with the
        change). With `expect_status`, the change only happens if the image is
        in one of those states (else Conflict)."""
        async with self._db.transaction() as tx:
            await check_status(tx, image_id, expect_status)
            if location is not None:
                await put_location(tx, image_id, location)
            await write_fields(tx, image_id, fields or {})
            await write_properties(tx, image_id, set_properties or {}, remove_properties)
            if tags is not None:
                await tx.execute("DELETE FROM image_tags WHERE image_id = ?", (image_id,))
                await _write_tags(tx, image_id, tags)
        return await self.require_image(image_id)

    async def delete_image(self, image_id: str) -> None:
        async with self._db.transaction() as tx:
            # The import lock has no foreign key to the image (tasks outlive
            # their image), so the cascade doesn't take it: it goes here.
            await tx.execute("DELETE FROM import_locks WHERE image_id = ?", (image_id,))
            await tx.execute("DELETE FROM images WHERE id = ?", (image_id,))

    async def list_images(self, query: ImageQuery) -> list[Image]:
        """The images the query finds, in its order; with `marker` only those
        after it (NotFound if the marker is not among them), with `limit` at
        most that many — paged in SQL."""
        where, args = image_filters(query)
        if query.marker is not None:
            marker = await self._db.rows(
                f"SELECT {query.sort_values_sql()} FROM images WHERE {' AND '.join([*where, 'id = ?'])}",
                [*args, query.marker])
            if not marker:
                raise NotFound(f"marker {query.marker} is not an image in this listing")
            clause, marker_args = query.after_marker(list(marker[0]), query.marker)
            where, args = [*where, clause], [*args, *marker_args]
        sql = f"SELECT * FROM images WHERE {' AND '.join(where) or '1'} ORDER BY {query.order_by()}"
        if query.limit is not None:
            sql, args = sql + " LIMIT ?", [*args, query.limit]
        return await self._hydrate(await self._db.rows(sql, args))

    async def _hydrate(self, rows: list[Row]) -> list[Image]:
        """Images with their properties, tags, locations and members: five queries, however many images."""
        images = [image_from_row(r) for r in rows]
        if not images:
            return images
        by_id = {i.id: i for i in images}
        ids = (ids_arg(by_id),)
        for r in await self._db.rows(f"SELECT * FROM image_properties WHERE image_id {IN_IDS} ORDER BY key", ids):
            by_id[r["image_id"]].properties[r["key"]] = r["value"]
        for r in await self._db.rows(f"SELECT * FROM image_tags WHERE image_id {IN_IDS} ORDER BY tag", ids):
            by_id[r["image_id"]].tags.append(r["tag"])
        for r in await self._db.rows(
                f"SELECT * FROM locations WHERE image_id {IN_IDS} ORDER BY created_at, store", ids):
            by_id[r["image_id"]].locations.append(Location(r["store"], r["url"]))
        # Every member, whatever its answer: a pending member sees the image to
        # accept it (Glance's is_image_visible); listings go by status (image_query).
        for r in await self._db.rows(f"SELECT * FROM image_members WHERE image_id {IN_IDS} ORDER BY member", ids):
            by_id[r["image_id"]].members.append(r["member"])
        return images

    # --- members (for shared visibility) -------------------------------------

    async def set_member(self, image_id: str, member: str, status: str) -> None:
        """Tests' shortcut; the API adds members through catalog/members.py."""
        now = utcnow()
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO image_members (image_id, member, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (image_id, member) DO UPDATE SET status = excluded.status",
                (image_id, member, status, now, now),
            )

    # --- locations ----------------------------------------------------------

    async def add_location(self, image_id: str, location: Location) -> None:
        async with self._db.transaction() as tx:
            await put_location(tx, image_id, location)

    async def copies_per_store(self) -> dict[str, int]:
        """How many image copies (locations) each store holds."""
        rows = await self._db.rows("SELECT store, COUNT(*) AS copies FROM locations GROUP BY store")
        return {r["store"]: int(r["copies"]) for r in rows}

    async def stored_bytes(self, owner: str) -> int:
        """What `owner`'s images hold: each image's size once per location (Glance's storage usage)."""
        rows = await self._db.rows(
            "SELECT COALESCE(SUM(i.size), 0) AS used FROM images i JOIN locations l ON l.image_id = i.id "
            "WHERE i.owner = ? AND i.size IS NOT NULL", (owner,))
        return int(rows[0]["used"])

    async def remove_location(self, image_id: str, store: str) -> None:
        async with self._db.transaction() as tx:
            await drop_location(tx, image_id, store)


# --- statements for other families' transactions ---------------------------------


async def check_status(tx: Transaction, image_id: str, expect: Iterable[ImageStatus] | None) -> None:
    """NotFound without the image; Conflict if `expect` is given and its status is not in it."""
    row = await tx.row("SELECT status FROM images WHERE id = ?", (image_id,))
    if row is None:
        raise NotFound(f"No image found with ID {image_id}")
    if expect is not None:
        allowed = {ImageStatus(s).value for s in expect}
        if row["status"] not in allowed:
            raise Conflict(
                f"Image {image_id} is {row['status']}; this needs it to be "
                f"{' or '.join(sorted(allowed))}"
            )


async def image_exists(tx: Transaction, image_id: str) -> bool:
    return await tx.row("SELECT 1 FROM images WHERE id = ?", (image_id,)) is not None


async def write_fields(tx: Transaction, image_id: str, fields: dict[str, Any]) -> None:
    """Set image columns (and updated_at: any change, even none asked for, touches it)."""
    values = image_field_values(fields)
    values["updated_at"] = utcnow()
    assignments = ", ".join(f"{k} = ?" for k in values)
    await tx.execute(f"UPDATE images SET {assignments} WHERE id = ?", (*values.values(), image_id))


async def write_properties(tx: Transaction, image_id: str, values: dict[str, str], remove: Iterable[str]) -> None:
    for key in remove:
        await tx.execute("DELETE FROM image_properties WHERE image_id = ? AND key = ?", (image_id, key))
    for key, value in values.items():
        await tx.execute(
            "INSERT INTO image_properties (image_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (image_id, key) DO UPDATE SET value = excluded.value",
            (image_id, key, str(value)),
        )


async def put_location(tx: Transaction, image_id: str, location: Location) -> None:
    """One location per store: a second one for the same store replaces the URL."""
    await tx.execute(
        "INSERT INTO locations (image_id, store, url, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (image_id, store) DO UPDATE SET url = excluded.url",
        (image_id, location.store, location.url, _now_precise()),
    )


async def drop_location(tx: Transaction, image_id: str, store: str) -> None:
    await tx.execute("DELETE FROM locations WHERE image_id = ? AND store = ?", (image_id, store))


async def replace_tags(tx: Transaction, image_id: str, tags: Iterable[str]) -> None:
    await tx.execute("DELETE FROM image_tags WHERE image_id = ?", (image_id,))
    await _write_tags(tx, image_id, tags)


async def _write_tags(tx: Transaction, image_id: str, tags: Iterable[str]) -> None:
    for tag in dict.fromkeys(tags):
        await tx.execute("INSERT OR IGNORE INTO image_tags (image_id, tag) VALUES (?, ?)", (image_id, tag))


def _now_precise() -> str:
    # Locations keep their insertion order (central first) by this timestamp.
    return f"{time.time():.6f}"
