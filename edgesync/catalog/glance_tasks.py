"""Glance's tasks API over the hub's own import tasks: which tasks a client
created through `POST /v2/tasks` (their type and input as sent), and the
paged, filtered listing of `GET /v2/tasks`, in SQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgesync.catalog.tasks import with_jobs
from edgesync.errors import BadRequest
from edgesync.model import Task
from edgesync.sqlite import Row, Transaction

if TYPE_CHECKING:
    from edgesync.catalog import Catalog

NATIVE_TYPE = "api_image_import"  # the hub's own imports and copies
LEGACY_TYPE = "import"  # created through POST /v2/tasks
TASK_SORT_KEYS = ("created_at", "updated_at", "status", "id", "type")


@dataclass(frozen=True)
class GlanceTask:
    task: Task
    type: str
    input: dict[str, Any] | None  # as the client sent it; None for the hub's own tasks


@dataclass
class TaskQuery:
    owner: str | None = None  # None: every project's (an admin)
    status: str | None = None
    type: str | None = None
    sort_key: str = "created_at"
    sort_dir: str = "desc"
    marker: str | None = None
    limit: int = 25


class GlanceTasks:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    # The catalog's database (edgesync.sqlite), shared with the other table families.
    async def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        return await self._catalog.database.rows(sql, args)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Transaction]:
        async with self._catalog.database.transaction() as tx:
            yield tx

    async def record(self, task_id: str, task_type: str, task_input: dict[str, Any]) -> None:
        async with self._tx() as db:
            await db.execute("INSERT INTO glance_tasks (task_id, type, input) VALUES (?, ?, ?)",
                             (task_id, task_type, json.dumps(task_input, sort_keys=True)))

    async def get(self, task_id: str) -> GlanceTask | None:
        task = await self._catalog.get_task(task_id)
        if task is None:
            return None
        rows = await self._rows("SELECT type, input FROM glance_tasks WHERE task_id = ?", (task_id,))
        if not rows:
            return GlanceTask(task, NATIVE_TYPE, None)
        return GlanceTask(task, rows[0]["type"], json.loads(rows[0]["input"]))

    async def list(self, query: TaskQuery) -> list[GlanceTask]:
        """One page (`limit` + 1 rows, so the caller knows if there is a next).
        Ties (timestamps have second precision) go by insertion order."""
        sort = _sort_column(query.sort_key)
        direction = "DESC" if query.sort_dir == "desc" else "ASC"
        where, args = _task_filters(query)
        if query.marker is not None:
            marker = await self._rows(
                f"SELECT {sort} AS k, t.rowid AS n FROM tasks t LEFT JOIN glance_tasks g ON g.task_id = t.id "
                "WHERE t.id = ?", (query.marker,))
            if not marker:
                raise BadRequest(f"marker {query.marker} is not a task in this listing")
            cmp = "<" if direction == "DESC" else ">"
            where.append(f"({sort}, t.rowid) {cmp} (?, ?)")
            args += [marker[0]["k"], marker[0]["n"]]
        rows = await self._rows(
            "SELECT t.*, COALESCE(g.type, ?) AS glance_type, g.input AS glance_input FROM tasks t "
            "LEFT JOIN glance_tasks g ON g.task_id = t.id "
            f"WHERE {' AND '.join(where) or '1'} ORDER BY {sort} {direction}, t.rowid {direction} LIMIT ?",
            (NATIVE_TYPE, *args, query.limit + 1))
        tasks = await with_jobs(self._catalog.database, rows)
        return [GlanceTask(task, row["glance_type"], json.loads(row["glance_input"]) if row["glance_input"] else None)
                for task, row in zip(tasks, rows, strict=True)]


def _sort_column(key: str) -> str:
    if key not in TASK_SORT_KEYS:
        raise BadRequest(f"Invalid sort key: {key}; sort tasks by one of {', '.join(TASK_SORT_KEYS)}")
    return f"COALESCE(g.type, '{NATIVE_TYPE}')" if key == "type" else f"t.{key}"


def _task_filters(query: TaskQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if query.owner is not None:
        where.append("t.owner = ?")
        args.append(query.owner)
    if query.status is not None:
        where.append("t.status = ?")
        args.append(query.status)
    if query.type == LEGACY_TYPE:
        where.append("g.task_id IS NOT NULL")
    elif query.type == NATIVE_TYPE:
        where.append("g.task_id IS NULL")
    return where, args
