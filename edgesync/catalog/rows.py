"""Row mapping: the catalog's records to and from their table rows.

The one place that knows how a column stores a value (enums as their value,
flags as 0/1, lists and dicts as JSON); the families only say which rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgesync.model import Image, ImageStatus, StoreJob, StoreJobState, Task, TaskStatus, Visibility
from edgesync.sqlite import Row

IMAGE_COLUMNS = (
    "id", "name", "status", "disk_format", "container_format", "visibility",
    "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
    "protected", "os_hidden", "owner", "min_ram", "min_disk", "created_at",
    "updated_at",
)
SORTABLE = frozenset(IMAGE_COLUMNS) - {"protected", "os_hidden"}

TASK_COLUMNS = (
    "id", "image_id", "owner", "user_id", "method", "stores", "all_stores_must_succeed",
    "status", "message", "input", "request_id", "created_at", "updated_at",
)
JOB_COLUMNS = ("task_id", "store", "state", "reason", "bytes_done", "bytes_total", "updated_at")


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


def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def image_row(image: Image) -> tuple[Any, ...]:
    values = {c: getattr(image, c) for c in IMAGE_COLUMNS}
    values["status"] = ImageStatus(image.status).value
    values["visibility"] = Visibility(image.visibility).value
    values["protected"] = int(image.protected)
    values["os_hidden"] = int(image.os_hidden)
    return tuple(values[c] for c in IMAGE_COLUMNS)


def image_from_row(row: Row) -> Image:
    values = {c: row[c] for c in IMAGE_COLUMNS}
    values["status"] = ImageStatus(values["status"])
    values["visibility"] = Visibility(values["visibility"])
    values["protected"] = bool(values["protected"])
    values["os_hidden"] = bool(values["os_hidden"])
    return Image(**values)


def image_field_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Columns of `images` to update, as stored; ValueError for anything else (or `id`)."""
    values = dict(fields)
    for key in values:
        if key not in IMAGE_COLUMNS or key == "id":
            raise ValueError(f"not an image column: {key}")
    if "status" in values:
        values["status"] = ImageStatus(values["status"]).value
    if "visibility" in values:
        values["visibility"] = Visibility(values["visibility"]).value
    for flag in ("protected", "os_hidden"):
        if flag in values:
            values[flag] = int(bool(values[flag]))
    return values


def task_row(task: Task) -> tuple[Any, ...]:
    return (task.id, task.image_id, task.owner, task.user_id, task.method,
            json.dumps(task.stores), int(task.all_stores_must_succeed),
            task.status.value, task.message, json.dumps(task.input), task.request_id,
            task.created_at, task.updated_at)


def task_from_row(row: Row) -> Task:
    return Task(
        id=row["id"], image_id=row["image_id"], owner=row["owner"], user_id=row["user_id"],
        method=row["method"], stores=json.loads(row["stores"]),
        all_stores_must_succeed=bool(row["all_stores_must_succeed"]),
        status=TaskStatus(row["status"]), message=row["message"],
        input=json.loads(row["input"]), request_id=row["request_id"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def job_row(task_id: str, job: StoreJob) -> tuple[Any, ...]:
    return (task_id, job.store, job.state.value, job.reason, job.bytes_done, job.bytes_total, job.updated_at)


def job_from_row(row: Row) -> StoreJob:
    return StoreJob(
        task_id=row["task_id"], store=row["store"], state=StoreJobState(row["state"]),
        reason=row["reason"], bytes_done=row["bytes_done"],
        bytes_total=row["bytes_total"], updated_at=row["updated_at"],
    )


def outbox_from_row(row: Row) -> OutboxMessage:
    return OutboxMessage(row["id"], row["topic"], json.loads(row["payload"]), row["created_at"], row["published_at"])


def pending_from_row(row: Row) -> PendingDelete:
    return PendingDelete(task_id=row["task_id"], image_id=row["image_id"], site=row["site"],
                         created_at=row["created_at"], last_error=row["last_error"])
