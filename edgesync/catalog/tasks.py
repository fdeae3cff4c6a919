"""Tasks, their store jobs, and the per-image import lock.

A task starts together with its lock, its jobs, its image changes and its
outbox commands, and finishes together with its last image changes and the
lock's release: one transaction each, so a crash never leaves half of one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from edgesync.catalog import images
from edgesync.catalog.outbox import insert_outbox
from edgesync.catalog.rows import JOB_COLUMNS, TASK_COLUMNS, insert_sql, job_from_row, job_row, task_from_row, task_row
from edgesync.catalog.tables import IN_IDS, Tables, ids_arg
from edgesync.errors import Conflict, NotFound
from edgesync.model import ImageStatus, StoreJobState, Task, TaskStatus, utcnow
from edgesync.sqlite import Database, Row, Transaction
from edgesync.stores.base import Location

_NEWEST_FIRST = "ORDER BY created_at DESC, rowid DESC"


class TaskTables(Tables):
    async def start_task(
        self,
        task: Task,
        *,
        lock_ttl_s: float,
        image_fields: dict[str, Any] | None = None,
        image_properties: dict[str, str] | None = None,
        expect_status: Iterable[ImageStatus] | None = None,
        commands: Iterable[tuple[str, dict[str, Any]]] = (),
    ) -> None:
        """Take the image's import lock and record the task, its store jobs,
        the image changes and any outbox commands, all in one transaction.
        Conflict if another live task holds the lock."""
        async with self._db.transaction() as tx:
            await images.check_status(tx, task.image_id, expect_status)
            await _take_lock(tx, task, lock_ttl_s)
            await tx.execute(insert_sql("tasks", TASK_COLUMNS), task_row(task))
            for job in task.jobs:
                await tx.execute(insert_sql("store_jobs", JOB_COLUMNS), job_row(task.id, job))
            await images.write_fields(tx, task.image_id, image_fields or {})
            await images.write_properties(tx, task.image_id, image_properties or {}, ())
            for topic, payload in commands:
                await insert_outbox(tx, topic, payload)

    async def renew_lock(self, image_id: str, task_id: str, ttl_s: float) -> bool:
        """Extend a held lock; False if the lock is no longer this task's."""
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE import_locks SET expires_at = ? WHERE image_id = ? AND task_id = ?",
                (time.time() + ttl_s, image_id, task_id),
            )
            return changed == 1

    async def lock_holder(self, image_id: str) -> str | None:
        row = await self._db.row(
            "SELECT task_id FROM import_locks WHERE image_id = ? AND expires_at > ?", (image_id, time.time()))
        return row["task_id"] if row is not None else None

    async def finish_task(
        self,
        task_id: str,
        status: TaskStatus,
        message: str,
        *,
        image_fields: dict[str, Any] | None = None,
        set_properties: dict[str, str] | None = None,
        remove_properties: Iterable[str] = (),
    ) -> None:
        """Record the task's outcome, apply its last image changes and release
        the image's lock, in one transaction."""
        async with self._db.transaction() as tx:
            row = await tx.row("SELECT image_id FROM tasks WHERE id = ?", (task_id,))
            if row is None:
                raise NotFound(f"No task {task_id}")
            image_id = row["image_id"]
            await tx.execute(
                "UPDATE tasks SET status = ?, message = ?, updated_at = ? WHERE id = ?",
                (status.value, message, utcnow(), task_id),
            )
            await tx.execute("DELETE FROM import_locks WHERE image_id = ? AND task_id = ?", (image_id, task_id))
            if await images.image_exists(tx, image_id):
                await images.write_fields(tx, image_id, image_fields or {})
                await images.write_properties(tx, image_id, set_properties or {}, remove_properties)

    async def update_job(
        self,
        task_id: str,
        store: str,
        state: StoreJobState,
        *,
        reason: str | None = None,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
        all_bytes_done: bool = False,
        image_properties: dict[str, str] | None = None,
        location: tuple[str, Location] | None = None,
    ) -> None:
        """Move one store's job on, optionally with the image's progress
        properties and its new location, in one transaction. `all_bytes_done`:
        the job moved all its bytes (progress is recorded only now and then)."""
        async with self._db.transaction() as tx:
            sets: list[str] = ["state = ?", "updated_at = ?"]
            args: list[str | int] = [state.value, utcnow()]
            for column, value in (("reason", reason), ("bytes_done", bytes_done), ("bytes_total", bytes_total)):
                if value is not None:
                    sets.append(f"{column} = ?")
                    args.append(value)
            if all_bytes_done:
                sets.append("bytes_done = bytes_total")
            await tx.execute(
                f"UPDATE store_jobs SET {', '.join(sets)} WHERE task_id = ? AND store = ?",
                (*args, task_id, store),
            )
            if location is not None:
                image_id, loc = location
                if await images.image_exists(tx, image_id):
                    await images.put_location(tx, image_id, loc)
            if image_properties:
                row = await tx.row("SELECT image_id FROM tasks WHERE id = ?", (task_id,))
                if row is not None and await images.image_exists(tx, row["image_id"]):
                    await images.write_properties(tx, row["image_id"], image_properties, ())

    async def record_progress(self, progress: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        """Cheap progress updates, (task id, store) -> (bytes done, bytes total),
        in one transaction; no state change, and none to a finished job (a late
        report must not undo the figures its end wrote)."""
        now = utcnow()
        # One statement for all (one trip to the catalog's thread, not one per job).
        async with self._db.transaction() as tx:
            await tx.executemany(
                "UPDATE store_jobs SET bytes_done = ?, bytes_total = ?, updated_at = ? "
                "WHERE task_id = ? AND store = ? AND state IN (?, ?)",
                [(bytes_done, bytes_total, now, task_id, store,
                  StoreJobState.PENDING.value, StoreJobState.RUNNING.value)
                 for (task_id, store), (bytes_done, bytes_total) in progress.items()],
            )

    async def get_task(self, task_id: str) -> Task | None:
        rows = await self._db.rows("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return (await self._with_jobs(rows))[0] if rows else None

    async def tasks_for_image(self, image_id: str) -> list[Task]:
        rows = await self._db.rows(f"SELECT * FROM tasks WHERE image_id = ? {_NEWEST_FIRST}", (image_id,))
        return await self._with_jobs(rows)

    async def tasks(self, *, unfinished_only: bool = False, limit: int = 100,
                    owner: str | None = None) -> list[Task]:
        """The newest tasks first; `owner`: only tasks on that project's images."""
        conditions, args = [], []
        if unfinished_only:
            conditions.append("status IN ('pending', 'processing')")
        if owner is not None:
            conditions.append("owner = ?")
            args.append(owner)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._db.rows(f"SELECT * FROM tasks {where} {_NEWEST_FIRST} LIMIT ?", (*args, limit))
        return await self._with_jobs(rows)

    async def _with_jobs(self, rows: list[Row]) -> list[Task]:
        return await with_jobs(self._db, rows)


async def with_jobs(db: Database, rows: list[Row]) -> list[Task]:
    """The tasks of `rows` (rows of `tasks`, maybe joined) with their store jobs, in
    creation order: one query for all their jobs, however many tasks."""
    tasks = [task_from_row(r) for r in rows]
    if not tasks:
        return tasks
    by_id = {task.id: task for task in tasks}
    for r in await db.rows(f"SELECT * FROM store_jobs WHERE task_id {IN_IDS} ORDER BY rowid", (ids_arg(by_id),)):
        by_id[r["task_id"]].jobs.append(job_from_row(r))
    return tasks


async def _take_lock(tx: Transaction, task: Task, ttl_s: float) -> None:
    """The image's import lock for `task`; Conflict while another task's lock is live."""
    now = time.time()
    held = await tx.row("SELECT task_id, expires_at FROM import_locks WHERE image_id = ?", (task.image_id,))
    if held is not None and held["expires_at"] > now:
        raise Conflict(
            f"Image {task.image_id} is locked by import task {held['task_id']}; "
            "wait for it to finish and try again"
        )
    await tx.execute(
        "INSERT INTO import_locks (image_id, task_id, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (image_id) DO UPDATE SET task_id = excluded.task_id, "
        "expires_at = excluded.expires_at",
        (task.image_id, task.id, now + ttl_s),
    )
