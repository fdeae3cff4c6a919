"""The catalog: the hub's only source of truth, in SQLite (through edgesync.sqlite).

This package is the only place with SQL. Every public method is one atomic
unit of work; methods that change several tables (starting a task together
with its lock, its store jobs and its outbox commands) run in one
transaction, so a crash never leaves half of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesync.catalog.schema import CATALOG
from edgesync.catalog.schema import CatalogError as CatalogError  # re-exported: callers import it from here
from edgesync.errors import Conflict, NotFound
from edgesync.model import (
    Image,
    ImageStatus,
    StoreJob,
    StoreJobState,
    Task,
    TaskStatus,
    Visibility,
    utcnow,
)
from edgesync.sqlite import Database, Row, Transaction
from edgesync.stores.base import Location

_IMAGE_COLUMNS = (
    "id", "name", "status", "disk_format", "container_format", "visibility",
    "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
    "protected", "os_hidden", "owner", "min_ram", "min_disk", "created_at",
    "updated_at",
)
SORTABLE = frozenset(_IMAGE_COLUMNS) - {"protected", "os_hidden"}


@dataclass
class ImageQuery:
    """What `GET /v2/images` asks for, already validated by the API."""

    viewer_project: str | None = None
    is_admin: bool = False
    name: str | None = None
    status: str | None = None
    visibility: str | None = None
    owner: str | None = None
    tags: list[str] = field(default_factory=list)
    protected: bool | None = None
    os_hidden: bool = False
    include_community: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    sort: list[tuple[str, str]] = field(default_factory=lambda: [("created_at", "desc")])


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    payload: dict[str, Any]
    created_at: float
    published_at: float | None = None


@dataclass(frozen=True)
class PendingDelete:
    """A delete sent to a site's agent and not confirmed yet; `last_error` once the agent refused it."""

    task_id: str
    image_id: str
    site: str
    created_at: float
    last_error: str | None = None


class Catalog:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> Catalog:
        return cls(await Database.open(path, CATALOG))

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        return await self._db.version()

    # --- images -------------------------------------------------------------

    async def insert_image(self, image: Image) -> Image:
        async with self._db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO images ({', '.join(_IMAGE_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(_IMAGE_COLUMNS))})",
                _image_row(image),
            )
            await _write_properties(tx, image.id, image.properties, ())
            await _write_tags(tx, image.id, image.tags)
        return await self.require_image(image.id)

    async def get_image(self, image_id: str) -> Image | None:
        rows = await self._db.rows("SELECT * FROM images WHERE id = ?", (image_id,))
        if not rows:
            return None
        return (await self._hydrate(rows))[0]

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
    ) -> Image:
        """Change an image in one transaction. With `expect_status`, the change
        only happens if the image is in one of those states (else Conflict)."""
        async with self._db.transaction() as tx:
            await self._check_status(tx, image_id, expect_status)
            await _write_fields(tx, image_id, fields or {})
            await _write_properties(tx, image_id, set_properties or {}, remove_properties)
            if tags is not None:
                await tx.execute("DELETE FROM image_tags WHERE image_id = ?", (image_id,))
                await _write_tags(tx, image_id, tags)
        return await self.require_image(image_id)

    async def _check_status(
        self, tx: Transaction, image_id: str, expect: Iterable[ImageStatus] | None
    ) -> None:
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

    async def delete_image(self, image_id: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM import_locks WHERE image_id = ?", (image_id,))
            await tx.execute("DELETE FROM images WHERE id = ?", (image_id,))

    async def list_images(self, query: ImageQuery) -> list[Image]:
        where, args = _image_filters(query)
        order = ", ".join(f"{key} {direction.upper()}" for key, direction in query.sort)
        sql = f"SELECT * FROM images WHERE {' AND '.join(where) or '1'} ORDER BY {order}, id DESC"
        return await self._hydrate(await self._db.rows(sql, args))

    async def _hydrate(self, rows: list[Row]) -> list[Image]:
        images = [_image_from_row(r) for r in rows]
        if not images:
            return images
        by_id = {i.id: i for i in images}
        marks = ", ".join("?" * len(by_id))
        ids = list(by_id)
        for r in await self._db.rows(f"SELECT * FROM image_properties WHERE image_id IN ({marks}) ORDER BY key", ids):
            by_id[r["image_id"]].properties[r["key"]] = r["value"]
        for r in await self._db.rows(f"SELECT * FROM image_tags WHERE image_id IN ({marks}) ORDER BY tag", ids):
            by_id[r["image_id"]].tags.append(r["tag"])
        for r in await self._db.rows(
            f"SELECT * FROM locations WHERE image_id IN ({marks}) ORDER BY created_at, store", ids
        ):
            by_id[r["image_id"]].locations.append(Location(r["store"], r["url"]))
        for r in await self._db.rows(f"SELECT * FROM image_members WHERE image_id IN ({marks})", ids):
            if r["status"] == "accepted":
                by_id[r["image_id"]].members.append(r["member"])
        return images

    # --- members (for shared visibility) -------------------------------------

    async def set_member(self, image_id: str, member: str, status: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO image_members (image_id, member, status) VALUES (?, ?, ?) "
                "ON CONFLICT (image_id, member) DO UPDATE SET status = excluded.status",
                (image_id, member, status),
            )

    # --- locations ----------------------------------------------------------

    async def add_location(self, image_id: str, location: Location) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO locations (image_id, store, url, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (image_id, store) DO UPDATE SET url = excluded.url",
                (image_id, location.store, location.url, _now_precise()),
            )

    async def copies_per_store(self) -> dict[str, int]:
        """How many image copies (locations) each store holds."""
        rows = await self._db.rows("SELECT store, COUNT(*) AS copies FROM locations GROUP BY store")
        return {r["store"]: int(r["copies"]) for r in rows}

    async def remove_location(self, image_id: str, store: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM locations WHERE image_id = ? AND store = ?", (image_id, store))

    # --- tasks and the import lock ------------------------------------------

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
        now = time.time()
        async with self._db.transaction() as tx:
            await self._check_status(tx, task.image_id, expect_status)
            held = await tx.row(
                "SELECT task_id, expires_at FROM import_locks WHERE image_id = ?", (task.image_id,)
            )
            if held is not None and held["expires_at"] > now:
                raise Conflict(
                    f"Image {task.image_id} is locked by import task {held['task_id']}; "
                    "wait for it to finish and try again"
                )
            await tx.execute(
                "INSERT INTO import_locks (image_id, task_id, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (image_id) DO UPDATE SET task_id = excluded.task_id, "
                "expires_at = excluded.expires_at",
                (task.image_id, task.id, now + lock_ttl_s),
            )
            await tx.execute(
                "INSERT INTO tasks (id, image_id, owner, user_id, method, stores, "
                "all_stores_must_succeed, status, message, input, request_id, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task.id, task.image_id, task.owner, task.user_id, task.method,
                 json.dumps(task.stores), int(task.all_stores_must_succeed),
                 task.status.value, task.message, json.dumps(task.input), task.request_id,
                 task.created_at, task.updated_at),
            )
            for job in task.jobs:
                await tx.execute(
                    "INSERT INTO store_jobs (task_id, store, state, reason, bytes_done, "
                    "bytes_total, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (task.id, job.store, job.state.value, job.reason, job.bytes_done,
                     job.bytes_total, job.updated_at),
                )
            await _write_fields(tx, task.image_id, image_fields or {})
            await _write_properties(tx, task.image_id, image_properties or {}, ())
            for topic, payload in commands:
                await _outbox_insert(tx, topic, payload)

    async def renew_lock(self, image_id: str, task_id: str, ttl_s: float) -> bool:
        """Extend a held lock; False if the lock is no longer this task's."""
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE import_locks SET expires_at = ? WHERE image_id = ? AND task_id = ?",
                (time.time() + ttl_s, image_id, task_id),
            )
            return changed == 1

    async def lock_holder(self, image_id: str) -> str | None:
        rows = await self._db.rows(
            "SELECT task_id FROM import_locks WHERE image_id = ? AND expires_at > ?",
            (image_id, time.time()),
        )
        return rows[0]["task_id"] if rows else None

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
            if await _image_exists(tx, image_id):
                await _write_fields(tx, image_id, image_fields or {})
                await _write_properties(tx, image_id, set_properties or {}, remove_properties)

    async def set_task_status(self, task_id: str, status: TaskStatus, message: str = "") -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE tasks SET status = ?, message = ?, updated_at = ? WHERE id = ?",
                (status.value, message, utcnow(), task_id),
            )

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
                if await _image_exists(tx, image_id):
                    await tx.execute(
                        "INSERT INTO locations (image_id, store, url, created_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (image_id, store) DO UPDATE SET url = excluded.url",
                        (image_id, loc.store, loc.url, _now_precise()),
                    )
            if image_properties:
                row = await tx.row("SELECT image_id FROM tasks WHERE id = ?", (task_id,))
                if row is not None and await _image_exists(tx, row["image_id"]):
                    await _write_properties(tx, row["image_id"], image_properties, ())

    async def record_progress(self, task_id: str, store: str, bytes_done: int, bytes_total: int) -> None:
        """Cheap progress update (no state change)."""
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE store_jobs SET bytes_done = ?, bytes_total = ?, updated_at = ? "
                "WHERE task_id = ? AND store = ?",
                (bytes_done, bytes_total, utcnow(), task_id, store),
            )

    async def get_task(self, task_id: str) -> Task | None:
        rows = await self._db.rows("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return (await self._tasks_from(rows))[0] if rows else None

    async def tasks_for_image(self, image_id: str) -> list[Task]:
        rows = await self._db.rows(
            "SELECT * FROM tasks WHERE image_id = ? ORDER BY created_at DESC, rowid DESC", (image_id,))
        return await self._tasks_from(rows)

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
        rows = await self._db.rows(f"SELECT * FROM tasks {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                (*args, limit))
        return await self._tasks_from(rows)

    async def _tasks_from(self, rows: list[Row]) -> list[Task]:
        tasks = [_task_from_row(r) for r in rows]
        for task in tasks:
            for r in await self._db.rows("SELECT * FROM store_jobs WHERE task_id = ? ORDER BY rowid", (task.id,)):
                task.jobs.append(StoreJob(
                    task_id=task.id, store=r["store"], state=StoreJobState(r["state"]),
                    reason=r["reason"], bytes_done=r["bytes_done"],
                    bytes_total=r["bytes_total"], updated_at=r["updated_at"],
                ))
        return tasks

    # --- outbox ---------------------------------------------------------------

    async def outbox_add(self, topic: str, payload: dict[str, Any]) -> None:
        async with self._db.transaction() as tx:
            await _outbox_insert(tx, topic, payload)

    async def outbox_pending(self, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._db.rows(
            "SELECT * FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?", (limit,)
        )
        return [OutboxMessage(r["id"], r["topic"], json.loads(r["payload"]), r["created_at"]) for r in rows]

    async def outbox_for_task(self, task_id: str) -> list[OutboxMessage]:
        """Every command sent (or still to send) for `task_id`, oldest first.
        A scan of the outbox: for recovery, not for a hot path."""
        rows = await self._db.rows(
            "SELECT * FROM outbox WHERE json_extract(payload, '$.task_id') = ? ORDER BY id", (task_id,)
        )
        return [OutboxMessage(r["id"], r["topic"], json.loads(r["payload"]), r["created_at"], r["published_at"])
                for r in rows]

    async def outbox_stats(self) -> tuple[int, float | None]:
        """How many commands wait in the outbox, and when the oldest was written (unix time)."""
        rows = await self._db.rows(
            "SELECT COUNT(*) AS depth, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL"
        )
        return int(rows[0]["depth"]), rows[0]["oldest"]

    async def outbox_mark_published(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        async with self._db.transaction() as tx:
            await tx.execute(
                f"UPDATE outbox SET published_at = ? WHERE id IN ({', '.join('?' * len(ids))})",
                (time.time(), *ids),
            )

    # --- deletes pending at sites -----------------------------------------------

    async def send_delete(self, pending: PendingDelete, topic: str, payload: dict[str, Any]) -> None:
        """Record the delete as pending and queue its command, in one transaction."""
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO pending_deletes (task_id, image_id, site, created_at) VALUES (?, ?, ?, ?)",
                (pending.task_id, pending.image_id, pending.site, pending.created_at))
            await _outbox_insert(tx, topic, payload)

    async def pending_delete(self, task_id: str) -> PendingDelete | None:
        rows = await self._db.rows("SELECT * FROM pending_deletes WHERE task_id = ?", (task_id,))
        return _pending_from_row(rows[0]) if rows else None

    async def pending_deletes(self, site: str | None = None) -> list[PendingDelete]:
        """Oldest first; every site's, or one site's."""
        where, args = ("WHERE site = ?", (site,)) if site is not None else ("", ())
        rows = await self._db.rows(f"SELECT * FROM pending_deletes {where} ORDER BY created_at, task_id", args)
        return [_pending_from_row(r) for r in rows]

    async def confirm_delete(self, task_id: str) -> PendingDelete | None:
        """The agent removed the copy: forget the pending delete and the copy's
        location (if the image still exists), in one transaction."""
        async with self._db.transaction() as tx:
            row = await tx.row("SELECT * FROM pending_deletes WHERE task_id = ?", (task_id,))
            if row is None:
                return None
            pending = _pending_from_row(row)
            await tx.execute("DELETE FROM pending_deletes WHERE task_id = ?", (task_id,))
            await tx.execute("DELETE FROM locations WHERE image_id = ? AND store = ?",
                             (pending.image_id, pending.site))
            return pending

    async def fail_pending_delete(self, task_id: str, reason: str) -> None:
        """The agent refused it (e.g. clones made while the site was offline): keep it listed, with why."""
        async with self._db.transaction() as tx:
            await tx.execute("UPDATE pending_deletes SET last_error = ? WHERE task_id = ?", (reason, task_id))

    async def drop_pending_delete(self, task_id: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM pending_deletes WHERE task_id = ?", (task_id,))


# --- helpers (module-private, SQL stays here) ---------------------------------


def _now_precise() -> str:
    # Locations keep their insertion order (central first) by this timestamp.
    return f"{time.time():.6f}"


def _image_row(image: Image) -> tuple[Any, ...]:
    values = {c: getattr(image, c) for c in _IMAGE_COLUMNS}
    values["status"] = ImageStatus(image.status).value
    values["visibility"] = Visibility(image.visibility).value
    values["protected"] = int(image.protected)
    values["os_hidden"] = int(image.os_hidden)
    return tuple(values[c] for c in _IMAGE_COLUMNS)


def _image_from_row(row: Row) -> Image:
    values = {c: row[c] for c in _IMAGE_COLUMNS}
    values["status"] = ImageStatus(values["status"])
    values["visibility"] = Visibility(values["visibility"])
    values["protected"] = bool(values["protected"])
    values["os_hidden"] = bool(values["os_hidden"])
    return Image(**values)


def _task_from_row(row: Row) -> Task:
    return Task(
        id=row["id"], image_id=row["image_id"], owner=row["owner"], user_id=row["user_id"],
        method=row["method"], stores=json.loads(row["stores"]),
        all_stores_must_succeed=bool(row["all_stores_must_succeed"]),
        status=TaskStatus(row["status"]), message=row["message"],
        input=json.loads(row["input"]), request_id=row["request_id"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def _pending_from_row(row: Row) -> PendingDelete:
    return PendingDelete(task_id=row["task_id"], image_id=row["image_id"], site=row["site"],
                         created_at=row["created_at"], last_error=row["last_error"])


async def _image_exists(tx: Transaction, image_id: str) -> bool:
    return await tx.row("SELECT 1 FROM images WHERE id = ?", (image_id,)) is not None


async def _write_fields(tx: Transaction, image_id: str, fields: dict[str, Any]) -> None:
    fields = dict(fields)
    for key in fields:
        if key not in _IMAGE_COLUMNS or key == "id":
            raise ValueError(f"not an image column: {key}")
    if "status" in fields:
        fields["status"] = ImageStatus(fields["status"]).value
    if "visibility" in fields:
        fields["visibility"] = Visibility(fields["visibility"]).value
    for flag in ("protected", "os_hidden"):
        if flag in fields:
            fields[flag] = int(bool(fields[flag]))
    fields["updated_at"] = utcnow()
    assignments = ", ".join(f"{k} = ?" for k in fields)
    await tx.execute(f"UPDATE images SET {assignments} WHERE id = ?", (*fields.values(), image_id))


async def _write_properties(
    tx: Transaction, image_id: str, values: dict[str, str], remove: Iterable[str]
) -> None:
    for key in remove:
        await tx.execute("DELETE FROM image_properties WHERE image_id = ? AND key = ?", (image_id, key))
    for key, value in values.items():
        await tx.execute(
            "INSERT INTO image_properties (image_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (image_id, key) DO UPDATE SET value = excluded.value",
            (image_id, key, str(value)),
        )


async def _write_tags(tx: Transaction, image_id: str, tags: Iterable[str]) -> None:
    for tag in dict.fromkeys(tags):
        await tx.execute("INSERT OR IGNORE INTO image_tags (image_id, tag) VALUES (?, ?)", (image_id, tag))


async def _outbox_insert(tx: Transaction, topic: str, payload: dict[str, Any]) -> None:
    await tx.execute(
        "INSERT INTO outbox (topic, payload, created_at) VALUES (?, ?, ?)",
        (topic, json.dumps(payload, sort_keys=True), time.time()),
    )


def _image_filters(q: ImageQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if not q.is_admin:
        # What a non-admin may see: public, their own, community, and shared
        # images they are an accepted member of.
        where.append(
            "(visibility IN ('public', 'community') OR owner = ? OR (visibility = 'shared' AND "
            "id IN (SELECT image_id FROM image_members WHERE member = ? AND status = 'accepted')))"
        )
        args += [q.viewer_project, q.viewer_project]
    if q.visibility is None:
        if not q.include_community:
            # Glance leaves community images out of the default listing.
            where.append("(visibility != 'community' OR owner = ?)")
            args.append(q.viewer_project)
    else:
        where.append("visibility = ?")
        args.append(q.visibility)
    for column in ("name", "status", "owner"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if q.protected is not None:
        where.append("protected = ?")
        args.append(int(q.protected))
    where.append("os_hidden = ?")
    args.append(int(q.os_hidden))
    for key, value in q.properties.items():
        where.append("id IN (SELECT image_id FROM image_properties WHERE key = ? AND value = ?)")
        args += [key, value]
    for tag in q.tags:
        where.append("id IN (SELECT image_id FROM image_tags WHERE tag = ?)")
        args.append(tag)
    return where, args
