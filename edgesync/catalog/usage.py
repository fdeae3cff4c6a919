"""What a project holds, for `GET /v2/info/usage` (Glance's counts,
glance/db/sqlalchemy/api.py `_image_get_*_by_owner`)."""

from __future__ import annotations

from dataclasses import dataclass

from edgesync.catalog.tables import Tables
from edgesync.model import IMPORTING_TO_STORES

# Statuses Glance counts as "uploading": data on its way in.
UPLOADING_STATUSES = ("saving", "uploading", "importing")
# Statuses Glance doesn't count at all.
GONE_STATUSES = ("killed", "deleted", "pending_delete")


@dataclass(frozen=True)
class ProjectCounts:
    images: int  # image_count_total: every image not gone
    uploading: int  # image_count_uploading: data coming in, or a copy under way
    staging_ids: list[str]  # images whose data may sit in the staging area (uploading, importing)


class UsageTables(Tables):
    async def project_counts(self, owner: str) -> ProjectCounts:
        gone = ", ".join(f"'{s}'" for s in GONE_STATUSES)
        uploading = ", ".join(f"'{s}'" for s in UPLOADING_STATUSES)
        rows = await self._db.rows(
            f"SELECT COUNT(*) AS images, "
            f"SUM(status IN ({uploading}) OR EXISTS (SELECT 1 FROM image_properties p WHERE p.image_id = id "
            f"AND p.key = ? AND p.value != '')) AS uploading "
            f"FROM images WHERE owner = ? AND status NOT IN ({gone})", (IMPORTING_TO_STORES, owner))
        staging = await self._db.rows(
            "SELECT id FROM images WHERE owner = ? AND status IN ('uploading', 'importing') ORDER BY id", (owner,))
        return ProjectCounts(images=int(rows[0]["images"] or 0), uploading=int(rows[0]["uploading"] or 0),
                             staging_ids=[r["id"] for r in staging])
