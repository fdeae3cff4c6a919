"""Domain records: plain dataclasses and string enums, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edgesync.stores.base import Location


class ImageStatus(str, enum.Enum):
    QUEUED = "queued"
    SAVING = "saving"
    UPLOADING = "uploading"
    IMPORTING = "importing"
    ACTIVE = "active"
    KILLED = "killed"
    DELETED = "deleted"
    PENDING_DELETE = "pending_delete"
    DEACTIVATED = "deactivated"


class Visibility(str, enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    SHARED = "shared"
    COMMUNITY = "community"


class TaskStatus(str, enum.Enum):
    """Glance's task statuses, as `GET /v2/images/{id}/tasks` shows them."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILURE = "failure"


class StoreJobState(str, enum.Enum):
    """One store's part of an import or copy task."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"

    @property
    def finished(self) -> bool:
        return self in (StoreJobState.DONE, StoreJobState.FAILED, StoreJobState.ROLLED_BACK)


# Properties only edgesync itself may set (Glance reserves os_glance_*).
IMPORTING_TO_STORES = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"
IMPORT_TASK = "os_glance_import_task"
RESERVED_PREFIX = "os_glance_"


def utcnow() -> str:
    """Timestamps as Glance writes them: ISO 8601, UTC, second precision, Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Image:
    id: str
    owner: str | None
    name: str | None = None
    status: ImageStatus = ImageStatus.QUEUED
    disk_format: str | None = None
    container_format: str | None = None
    visibility: Visibility = Visibility.SHARED
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    protected: bool = False
    os_hidden: bool = False
    min_ram: int = 0
    min_disk: int = 0
    created_at: str = field(default_factory=utcnow)
    updated_at: str = field(default_factory=utcnow)
    properties: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    locations: list[Location] = field(default_factory=list)
    members: list[str] = field(default_factory=list)

    @property
    def stores(self) -> list[str]:
        return [loc.store for loc in self.locations]

    def location_in(self, store: str) -> Location | None:
        return next((loc for loc in self.locations if loc.store == store), None)


# Columns of the images table that the API treats as core (not extra) properties.
CORE_FIELDS = (
    "name", "status", "disk_format", "container_format", "visibility", "size",
    "virtual_size", "checksum", "os_hash_algo", "os_hash_value", "protected",
    "os_hidden", "owner", "min_ram", "min_disk", "created_at", "updated_at",
)


@dataclass
class StoreJob:
    task_id: str
    store: str
    state: StoreJobState = StoreJobState.PENDING
    reason: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    updated_at: str = field(default_factory=utcnow)


@dataclass
class Task:
    id: str
    image_id: str
    owner: str | None
    method: str
    stores: list[str]
    all_stores_must_succeed: bool
    status: TaskStatus = TaskStatus.PENDING
    message: str = ""
    user_id: str | None = None
    input: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None  # x-openstack-request-id of the request that started it
    created_at: str = field(default_factory=utcnow)
    updated_at: str = field(default_factory=utcnow)
    jobs: list[StoreJob] = field(default_factory=list)

    def job(self, store: str) -> StoreJob | None:
        return next((j for j in self.jobs if j.store == store), None)

    def stores_in(self, *states: StoreJobState) -> list[str]:
        return [j.store for j in self.jobs if j.state in states]

    @property
    def unfinished_stores(self) -> list[str]:
        return [j.store for j in self.jobs if not j.state.finished]
