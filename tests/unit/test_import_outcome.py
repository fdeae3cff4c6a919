"""The outcome rules of a task (hub/imports/outcome.py), pure: hub first,
allow-failure, what is rolled back and what becomes of the image."""

from __future__ import annotations

import pytest

from edgesync.hub.imports.outcome import (
    HASH_FIELDS_CLEARED,
    active_once_central_has_it,
    decide,
    is_new_import,
)
from edgesync.model import Image, ImageStatus, StoreJob, StoreJobState, Task, TaskStatus

DONE, FAILED = StoreJobState.DONE, StoreJobState.FAILED


def task(method: str, must_succeed: bool, **states: StoreJobState) -> Task:
    t = Task(id="t1", image_id="i1", owner="p1", method=method, stores=list(states),
             all_stores_must_succeed=must_succeed, status=TaskStatus.PROCESSING,
             input={"disk_format": "qcow2"} if method != "copy-image" else {})
    t.jobs = [StoreJob("t1", store, state=state, reason="disk full" if state == FAILED else "")
              for store, state in states.items()]
    return t


IMAGE = Image(id="i1", owner="p1", status=ImageStatus.IMPORTING, disk_format="raw", size=10)


@pytest.mark.parametrize("method", ["glance-direct", "web-download", "upload"])
def test_a_new_import_with_every_store_done_succeeds_and_goes_active(method: str) -> None:
    decided = decide(task(method, True, central=DONE, dcn0=DONE), IMAGE, central="central")
    assert decided.succeeded and decided.status == TaskStatus.SUCCESS
    assert decided.roll_back == [] and decided.failed == []
    assert decided.image_fields == {"status": ImageStatus.ACTIVE}
    assert decided.message == "imported to 2 store(s)"


def test_must_succeed_with_one_failure_rolls_back_every_store_that_succeeded() -> None:
    decided = decide(task("glance-direct", True, central=DONE, dcn0=DONE, dcn1=FAILED), IMAGE, central="central")
    assert not decided.succeeded and decided.status == TaskStatus.FAILURE
    assert decided.roll_back == ["central", "dcn0"] and decided.failed == ["dcn1"]
    assert decided.message == "failed (all_stores_must_succeed: every store was rolled back): dcn1: disk full"


def test_a_failed_new_import_leaves_the_image_queued_without_data_and_its_format_restored() -> None:
    decided = decide(task("web-download", True, central=FAILED), IMAGE, central="central")
    assert decided.image_fields == {"status": ImageStatus.QUEUED, "disk_format": "qcow2", **HASH_FIELDS_CLEARED}


def test_allow_failure_keeps_the_stores_that_succeeded_and_lists_the_failed() -> None:
    decided = decide(task("glance-direct", False, central=DONE, dcn0=FAILED, dcn1=DONE), IMAGE, central="central")
    assert decided.succeeded and decided.roll_back == [] and decided.failed == ["dcn0"]
    assert decided.message == "imported to 2 store(s); failed: dcn0: disk full"


@pytest.mark.parametrize("must_succeed", [True, False])
def test_a_new_import_without_central_fails_whatever_allow_failure_says(must_succeed: bool) -> None:
    """Hub first: an edge that succeeded can't make up for central."""
    decided = decide(task("glance-direct", must_succeed, central=FAILED, dcn0=DONE), IMAGE, central="central")
    assert not decided.succeeded
    assert decided.roll_back == ["dcn0"]


def test_a_copy_succeeds_with_any_store_when_failures_are_allowed() -> None:
    decided = decide(task("copy-image", False, dcn0=FAILED, dcn1=DONE), IMAGE, central="central")
    assert decided.succeeded and decided.failed == ["dcn0"]
    assert decided.image_fields == {}  # a copy never changes the image's status


def test_a_copy_with_no_store_done_fails_and_says_so() -> None:
    decided = decide(task("copy-image", False, dcn0=FAILED), IMAGE, central="central")
    assert not decided.succeeded and decided.roll_back == []
    assert decided.message == "failed: dcn0: disk full"


def test_a_copy_without_central_in_it_does_not_need_central() -> None:
    decided = decide(task("copy-image", True, dcn0=DONE), IMAGE, central="central")
    assert decided.succeeded


def test_a_failed_task_whose_image_was_deleted_changes_no_image() -> None:
    decided = decide(task("glance-direct", True, central=FAILED), None, central="central")
    assert not decided.succeeded and decided.image_fields == {}


def test_no_failure_and_nothing_done_is_a_failure_naming_no_store() -> None:
    decided = decide(task("copy-image", True), IMAGE, central="central")
    assert not decided.succeeded and decided.message == "failed (all_stores_must_succeed: every store was rolled back): no store succeeded"


def test_which_tasks_are_new_imports_and_when_one_goes_active_early() -> None:
    assert is_new_import(task("upload", True)) and not is_new_import(task("copy-image", True))
    assert active_once_central_has_it(task("glance-direct", False))
    assert not active_once_central_has_it(task("glance-direct", True))
