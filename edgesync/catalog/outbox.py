"""The transactional outbox: commands for the sites' agents, written in the
same transaction as the state they announce, and drained by the hub's
publisher (at-least-once: a row is marked published once the broker has it)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from edgesync.catalog.rows import OutboxMessage, outbox_from_row
from edgesync.catalog.tables import IN_IDS, Tables, ids_arg
from edgesync.sqlite import Transaction


class OutboxTables(Tables):
    async def outbox_add(self, topic: str, payload: dict[str, Any]) -> None:
        async with self._db.transaction() as tx:
            await insert_outbox(tx, topic, payload)

    async def outbox_pending(self, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._db.rows("SELECT * FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?", (limit,))
        return [outbox_from_row(r) for r in rows]

    async def outbox_for_task(self, task_id: str) -> list[OutboxMessage]:
        """Every command sent (or still to send) for `task_id`, oldest first.
        A scan of the outbox: for recovery, not for a hot path."""
        rows = await self._db.rows(
            "SELECT * FROM outbox WHERE json_extract(payload, '$.task_id') = ? ORDER BY id", (task_id,))
        return [outbox_from_row(r) for r in rows]

    async def outbox_stats(self) -> tuple[int, float | None]:
        """How many commands wait in the outbox, and when the oldest was written (unix time)."""
        [row] = await self._db.rows(  # an aggregate: always one row
            "SELECT COUNT(*) AS depth, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL")
        return int(row["depth"]), row["oldest"]

    async def outbox_mark_published(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        async with self._db.transaction() as tx:
            await tx.execute(f"UPDATE outbox SET published_at = ? WHERE id {IN_IDS}", (time.time(), ids_arg(ids)))


async def insert_outbox(tx: Transaction, topic: str, payload: dict[str, Any]) -> None:
    """Queue a command inside another family's transaction (it goes out only if that commits)."""
    await tx.execute(
        "INSERT INTO outbox (topic, payload, created_at) VALUES (?, ?, ?)",
        (topic, json.dumps(payload, sort_keys=True), time.time()),
    )
