"""Deletes sent to an edge site's agent and not confirmed yet: kept until the
agent confirms (surviving a hub restart), listed with why if it refused."""

from __future__ import annotations

from typing import Any

from edgesync.catalog import images
from edgesync.catalog.outbox import insert_outbox
from edgesync.catalog.rows import PendingDelete, pending_from_row
from edgesync.catalog.tables import Tables


class PendingDeleteTables(Tables):
    async def send_delete(self, pending: PendingDelete, topic: str, payload: dict[str, Any]) -> None:
        """Record the delete as pending and queue its command, in one transaction."""
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO pending_deletes (task_id, image_id, site, created_at) VALUES (?, ?, ?, ?)",
                (pending.task_id, pending.image_id, pending.site, pending.created_at))
            await insert_outbox(tx, topic, payload)

    async def pending_delete(self, task_id: str) -> PendingDelete | None:
        row = await self._db.row("SELECT * FROM pending_deletes WHERE task_id = ?", (task_id,))
        return pending_from_row(row) if row is not None else None

    async def pending_deletes(self, site: str | None = None) -> list[PendingDelete]:
        """Oldest first; every site's, or one site's."""
        where, args = ("WHERE site = ?", (site,)) if site is not None else ("", ())
        rows = await self._db.rows(f"SELECT * FROM pending_deletes {where} ORDER BY created_at, task_id", args)
        return [pending_from_row(r) for r in rows]

    async def confirm_delete(self, task_id: str) -> PendingDelete | None:
        """The agent removed the copy: forget the pending delete and the copy's
        location (if the image still exists), in one transaction."""
        async with self._db.transaction() as tx:
            row = await tx.row("SELECT * FROM pending_deletes WHERE task_id = ?", (task_id,))
            if row is None:
                return None
            pending = pending_from_row(row)
            await tx.execute("DELETE FROM pending_deletes WHERE task_id = ?", (task_id,))
            await images.drop_location(tx, pending.image_id, pending.site)
            return pending

    async def fail_pending_delete(self, task_id: str, reason: str) -> None:
        """The agent refused it (e.g. clones made while the site was offline): keep it listed, with why."""
        async with self._db.transaction() as tx:
            await tx.execute("UPDATE pending_deletes SET last_error = ? WHERE task_id = ?", (reason, task_id))

    async def drop_pending_delete(self, task_id: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM pending_deletes WHERE task_id = ?", (task_id,))
