"""The DCN outcome rules of an import or copy task, as pure functions.

Given a task whose store jobs have all finished, `decide` says whether it
succeeded, which stores to roll back, the task's message and what becomes of
the image. Every task ends through it, on the normal path and when recovery
finishes a task a dead hub left open, so the rules live in one place:

* Hub first: a new import (glance-direct, web-download, upload) succeeds only
  if central has the image; a copy needs at least one store that succeeded.
* allow-failure: with `all_stores_must_succeed` any failed store fails the
  task, and every store it wrote is rolled back; without, failures are only
  listed, and a new import is active as soon as central has it.
* A new import that fails leaves the image `queued` with no data, its
  original disk format restored: ready to be imported again.
* A location import (a copy someone else made in a store, whose location
  was added to a queued image) makes the image active in that store once
  the copy checked out, and leaves it `queued` with no location otherwise.
  Nothing is rolled back: the copy is its maker's, not the hub's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgesync.model import Image, ImageStatus, StoreJobState, Task, TaskStatus

NEW_IMPORT_METHODS = ("glance-direct", "web-download", "upload")
LOCATION_IMPORT = "location-import"  # Glance's task type `location_import`
ROLLED_BACK_REASON = "rolled back: another store failed"
HASH_FIELDS_CLEARED: dict[str, Any] = {
    "size": None, "virtual_size": None, "checksum": None,
    "os_hash_algo": None, "os_hash_value": None,
}


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    failed: list[str]  # the stores that failed, for os_glance_failed_import
    roll_back: list[str]  # the stores whose copies this task wrote and must remove
    message: str
    image_fields: dict[str, Any] = field(default_factory=dict)  # what becomes of the image

    @property
    def status(self) -> TaskStatus:
        return TaskStatus.SUCCESS if self.succeeded else TaskStatus.FAILURE


def is_new_import(task: Task) -> bool:
    """A task that brings an image's data in (rather than copying it between stores)."""
    return task.method in NEW_IMPORT_METHODS


def is_location_import(task: Task) -> bool:
    return task.method == LOCATION_IMPORT


def active_once_central_has_it(task: Task) -> bool:
    """allow-failure: a new import is usable as soon as its first store, central, has it."""
    return not task.all_stores_must_succeed


def decide(task: Task, image: Image | None, *, central: str) -> Outcome:
    """The outcome of `task`, all of whose jobs have finished. `image` is the
    image as the catalog has it now (None if it was deleted meanwhile)."""
    failed = task.stores_in(StoreJobState.FAILED)
    succeeded = task.stores_in(StoreJobState.DONE)
    if is_location_import(task):
        return _location_outcome(task, image, ok=bool(succeeded) and not failed, failed=failed)
    ok = succeeded_overall(task, succeeded=succeeded, failed=failed, central=central)
    return Outcome(
        succeeded=ok, failed=failed,
        roll_back=[] if ok else succeeded,
        message=outcome_message(task, ok, failed),
        image_fields=final_image_fields(task, image, ok) if is_new_import(task) else {},
    )


def _location_outcome(task: Task, image: Image | None, *, ok: bool, failed: list[str]) -> Outcome:
    url = task.input.get("location_url", "")
    if ok:
        message = f"location {url} checked: the image is active in store {task.stores[0]}"
        fields: dict[str, Any] = {"status": ImageStatus.ACTIVE}
    else:
        reasons = "; ".join(f"{j.store}: {j.reason}" for j in task.jobs if j.store in failed)
        message = f"location {url} refused: {reasons or 'not checked'}; the image is queued again, with no location"
        fields = {"status": ImageStatus.QUEUED, **HASH_FIELDS_CLEARED}
    return Outcome(succeeded=ok, failed=failed, roll_back=[], message=message,
                   image_fields=fields if image is not None else {})


def succeeded_overall(task: Task, *, succeeded: list[str], failed: list[str], central: str) -> bool:
    if task.all_stores_must_succeed and failed:
        return False
    return central in succeeded if is_new_import(task) else bool(succeeded)


def final_image_fields(task: Task, image: Image | None, ok: bool) -> dict[str, Any]:
    """What a new import leaves the image as: active, or queued without data."""
    if image is None:
        return {}
    if ok:
        return {"status": ImageStatus.ACTIVE}
    original = task.input.get("disk_format") or image.disk_format
    return {"status": ImageStatus.QUEUED, "disk_format": original, **HASH_FIELDS_CLEARED}


def outcome_message(task: Task, ok: bool, failed: list[str]) -> str:
    reasons = "; ".join(f"{j.store}: {j.reason}" for j in task.jobs if j.store in failed)
    if ok:
        return f"imported to {len(task.stores) - len(failed)} store(s)" + (
            f"; failed: {reasons}" if reasons else "")
    rule = " (all_stores_must_succeed: every store was rolled back)" if task.all_stores_must_succeed else ""
    return f"failed{rule}: {reasons or 'no store succeeded'}"
