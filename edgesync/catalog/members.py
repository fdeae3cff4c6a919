"""Image members: the projects a `shared` image is shared with, and each
one's answer (pending, accepted, rejected), as Glance's image_members table.

Which images a project sees because it is a member is decided where images
are read (`images._hydrate` gives every image its member projects, any
status; `image_query` lists shared images by the member's status).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgesync.catalog.tables import Tables
from edgesync.errors import Conflict, NotFound, RequestTooLarge
from edgesync.model import utcnow
from edgesync.sqlite import Row, Transaction

MEMBER_STATUSES = ("pending", "accepted", "rejected")


@dataclass(frozen=True)
class ImageMember:
    image_id: str
    member_id: str
    status: str
    created_at: str
    updated_at: str


def _member(row: Row) -> ImageMember:
    return ImageMember(image_id=row["image_id"], member_id=row["member"], status=row["status"],
                       created_at=row["created_at"], updated_at=row["updated_at"])


class MemberTables(Tables):
    async def image_members(self, image_id: str) -> list[ImageMember]:
        rows = await self._db.rows("SELECT * FROM image_members WHERE image_id = ? ORDER BY created_at, member",
                                   (image_id,))
        return [_member(r) for r in rows]

    async def image_member(self, image_id: str, member_id: str) -> ImageMember | None:
        rows = await self._db.rows("SELECT * FROM image_members WHERE image_id = ? AND member = ?",
                                   (image_id, member_id))
        return _member(rows[0]) if rows else None

    async def add_image_member(self, image_id: str, member_id: str, *, limit: int) -> ImageMember:
        """A new member, pending. Conflict if it is one already; RequestTooLarge
        (413, Glance's answer) past `limit` members (-1: no limit). The count
        and the insert are one transaction, so two adds can't both pass it."""
        async with self._db.transaction() as tx:
            if await tx.row("SELECT 1 FROM images WHERE id = ?", (image_id,)) is None:
                raise NotFound(f"No image found with ID {image_id}")
            if await tx.row("SELECT 1 FROM image_members WHERE image_id = ? AND member = ?",
                            (image_id, member_id)) is not None:
                raise Conflict(f"Member {member_id} is duplicated for image {image_id}: "
                               "it is a member already (PUT …/members/{member} changes its status)")
            count = await tx.row("SELECT COUNT(*) AS n FROM image_members WHERE image_id = ?", (image_id,))
            attempted = int(count["n"] if count is not None else 0) + 1
            if 0 <= limit < attempted:
                raise RequestTooLarge(
                    f"Image member limit exceeded for image {image_id}: the limit has been exceeded on the "
                    f"number of allowed image members for this image. Attempted: {attempted}, Maximum: {limit}")
            now = utcnow()
            await tx.execute("INSERT INTO image_members (image_id, member, status, created_at, updated_at) "
                             "VALUES (?, ?, 'pending', ?, ?)", (image_id, member_id, now, now))
        found = await self.image_member(image_id, member_id)
        assert found is not None
        return found

    async def set_image_member_status(self, image_id: str, member_id: str, status: str) -> ImageMember:
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE image_members SET status = ?, updated_at = ? WHERE image_id = ? AND member = ?",
                (status, utcnow(), image_id, member_id))
            if changed == 0:
                raise NotFound(f"{member_id} not found in the member list of the image {image_id}.")
        found = await self.image_member(image_id, member_id)
        assert found is not None
        return found

    async def delete_image_member(self, image_id: str, member_id: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM image_members WHERE image_id = ? AND member = ?", (image_id, member_id))


# --- statements for other families' transactions ---------------------------------


async def replace_image_members(tx: Transaction, image_id: str, members: list[ImageMember]) -> None:
    """The image's members become exactly `members`, with their status and
    timestamps as given (an image adopted from Glance keeps Glance's)."""
    await tx.execute("DELETE FROM image_members WHERE image_id = ?", (image_id,))
    for m in members:
        await tx.execute("INSERT INTO image_members (image_id, member, status, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?)", (image_id, m.member_id, m.status, m.created_at, m.updated_at))
