"""The SQLite catalog: migrations, reopening, one transaction per unit of
work (all or nothing), the import lock and its expiry."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgesync.catalog import Catalog, CatalogError, ImageQuery, PendingDelete
from edgesync.catalog.schema import LATEST_VERSION, MIGRATIONS
from edgesync.catalog.tables import Tables
from edgesync.errors import Conflict, NotFound
from edgesync.model import Image, ImageStatus, StoreJob, StoreJobState, Task, TaskStatus, Visibility
from edgesync.sqlite import Database
from edgesync.stores.base import Location


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    cat = await Catalog.open(tmp_path / "state" / "catalog.sqlite3")
    yield cat
    await cat.close()


def new_image(**kw) -> Image:  # type: ignore[no-untyped-def]
    return Image(id=str(uuid.uuid4()), owner=kw.pop("owner", "p1"), **kw)


def new_task(image_id: str, stores: list[str], method: str = "copy-image") -> Task:
    task_id = str(uuid.uuid4())
    return Task(id=task_id, image_id=image_id, owner="p1", method=method, stores=stores,
                all_stores_must_succeed=True, status=TaskStatus.PROCESSING,
                jobs=[StoreJob(task_id, s) for s in stores])


# --- schema ------------------------------------------------------------------------


async def test_a_new_catalog_is_at_the_latest_schema(catalog: Catalog) -> None:
    assert await catalog.schema_version() == LATEST_VERSION


async def test_reopen_keeps_everything_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    cat = await Catalog.open(path)
    image = await cat.insert_image(new_image(name="n", properties={"k": "v"}, tags=["t"]))
    await cat.add_location(image.id, Location("central", "file:///x"))
    await cat.close()
    cat = await Catalog.open(path)
    try:
        again = await cat.require_image(image.id)
        assert (again.name, again.properties, again.tags, again.stores) == ("n", {"k": "v"}, ["t"], ["central"])
        assert await cat.schema_version() == LATEST_VERSION
    finally:
        await cat.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (LATEST_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_catalog_from_a_newer_edgesync_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    await (await Catalog.open(path)).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(CatalogError, match="newer than this edgesync understands"):
        await Catalog.open(path)


def write_catalog_of_the_schema_version_table_era(path: Path, version: int) -> None:
    """A catalog as edgesync wrote it before edgesync.sqlite: its version in a
    one-row table `schema_version`, user_version 0, and some of everything in it.
    The tables are the released migrations (never edited), applied as that code did."""
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for script in MIGRATIONS[:version]:
            db.executescript(f"BEGIN; {script}; COMMIT;")
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        db.execute("INSERT INTO images (id, name, status, visibility, owner, created_at, updated_at) "
                   "VALUES ('img', 'old', 'active', 'private', 'p1', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
        db.execute("INSERT INTO image_properties VALUES ('img', 'k', 'v')")
        db.execute("INSERT INTO image_tags VALUES ('img', 't')")
        db.execute("INSERT INTO locations VALUES ('img', 'central', 'file:///c/img', '1.000000')")
        db.execute("INSERT INTO tasks (id, image_id, owner, method, stores, all_stores_must_succeed, status, "
                   "created_at, updated_at) VALUES ('task', 'img', 'p1', 'copy-image', '[\"dcn0\"]', 1, "
                   "'processing', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
        db.execute("INSERT INTO store_jobs (task_id, store, state, updated_at) "
                   "VALUES ('task', 'dcn0', 'pending', '2026-01-01T00:00:00Z')")
        db.execute("INSERT INTO import_locks VALUES ('img', 'task', ?)", (time.time() + 3600,))
        db.execute("INSERT INTO outbox (topic, payload, created_at) VALUES ('t/cmd', '{\"task_id\": \"task\"}', 1.0)")
        if version >= 2:
            db.execute("INSERT INTO pending_deletes (task_id, image_id, site, created_at) "
                       "VALUES ('del', 'img', 'dcn1', 2.0)")


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_a_catalog_from_before_user_version_migrates_forward_with_its_data(
        tmp_path: Path, version: int) -> None:
    path = tmp_path / "catalog.sqlite3"
    write_catalog_of_the_schema_version_table_era(path, version)
    catalog = await Catalog.open(path)
    try:
        assert await catalog.schema_version() == LATEST_VERSION
        image = await catalog.require_image("img")
        assert (image.name, image.properties, image.tags, image.stores) == ("old", {"k": "v"}, ["t"], ["central"])
        [task] = await catalog.tasks_for_image("img")
        assert (task.id, [job.store for job in task.jobs]) == ("task", ["dcn0"])
        assert await catalog.lock_holder("img") == "task"
        assert [row.payload for row in await catalog.outbox_pending()] == [{"task_id": "task"}]
        assert [p.task_id for p in await catalog.pending_deletes()] == (["del"] if version >= 2 else [])
        # and the tables a later migration added work
        await catalog.send_delete(PendingDelete("del2", "img", "dcn0", 3.0), "t/cmd", {"task_id": "del2"})
    finally:
        await catalog.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (LATEST_VERSION,)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'schema_version'").fetchone() is None


async def test_a_file_that_is_not_a_database_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="cannot open catalog"):
        await Catalog.open(path)


# --- images --------------------------------------------------------------------------


async def test_update_with_expected_status_is_all_or_nothing(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image())
    with pytest.raises(Conflict, match="queued; this needs it to be active"):
        await catalog.update_image(image.id, fields={"name": "x"}, set_properties={"k": "v"},
                                   expect_status=[ImageStatus.ACTIVE])
    after = await catalog.require_image(image.id)
    assert after.name is None and after.properties == {}
    with pytest.raises(NotFound):
        await catalog.update_image(str(uuid.uuid4()), fields={"name": "x"})


async def test_a_failing_statement_rolls_back_the_whole_update(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image(name="before"))
    with pytest.raises(ValueError, match="not an image column"):
        await catalog.update_image(image.id, set_properties={"k": "v"}, fields={"name": "after", "bogus": 1})
    after = await catalog.require_image(image.id)
    assert after.name == "before" and after.properties == {}
    # and the connection is usable afterwards (no transaction left open)
    await catalog.update_image(image.id, fields={"name": "ok"})
    assert (await catalog.require_image(image.id)).name == "ok"


async def test_concurrent_updates_do_not_interleave(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image())
    await asyncio.gather(*(catalog.update_image(image.id, set_properties={f"k{i}": str(i)}, tags=[f"t{i}"])
                           for i in range(30)))
    after = await catalog.require_image(image.id)
    assert len(after.properties) == 30 and len(after.tags) == 1


async def test_locations_keep_insertion_order_and_cascade_on_delete(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image())
    for store in ("central", "dcn1", "dcn0"):
        await catalog.add_location(image.id, Location(store, f"file:///{store}"))
    assert (await catalog.require_image(image.id)).stores == ["central", "dcn1", "dcn0"]
    await catalog.remove_location(image.id, "dcn1")
    assert (await catalog.require_image(image.id)).stores == ["central", "dcn0"]
    await catalog.delete_image(image.id)
    assert await catalog.get_image(image.id) is None


async def test_list_visibility_rules(catalog: Catalog) -> None:
    mine = await catalog.insert_image(new_image(visibility=Visibility.PRIVATE))
    theirs = await catalog.insert_image(new_image(owner="p2", visibility=Visibility.PRIVATE))
    public = await catalog.insert_image(new_image(owner="p2", visibility=Visibility.PUBLIC))
    community = await catalog.insert_image(new_image(owner="p2", visibility=Visibility.COMMUNITY))
    shared = await catalog.insert_image(new_image(owner="p2", visibility=Visibility.SHARED))
    await catalog.set_member(shared.id, "p1", "accepted")

    async def ids(**kw) -> set[str]:  # type: ignore[no-untyped-def]
        return {i.id for i in await catalog.list_images(ImageQuery(viewer_project="p1", **kw))}

    assert await ids() == {mine.id, public.id, shared.id}
    assert await ids(visibility="community") == {community.id}
    assert await ids(include_community=True) == {mine.id, public.id, shared.id, community.id}
    assert theirs.id in await ids(is_admin=True)


# --- tasks and the lock ---------------------------------------------------------------


async def test_start_task_writes_task_jobs_lock_image_and_outbox_together(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image(status=ImageStatus.ACTIVE))
    task = new_task(image.id, ["dcn0", "dcn1"])
    await catalog.start_task(task, lock_ttl_s=60, image_properties={"os_glance_import_task": task.id},
                             commands=[("edgesync/site/dcn0/cmd", {"op": "copy"})])
    stored = await catalog.get_task(task.id)
    assert stored is not None and [j.store for j in stored.jobs] == ["dcn0", "dcn1"]
    assert await catalog.lock_holder(image.id) == task.id
    assert (await catalog.require_image(image.id)).properties["os_glance_import_task"] == task.id
    [message] = await catalog.outbox_pending()
    assert message.topic == "edgesync/site/dcn0/cmd" and message.payload == {"op": "copy"}
    await catalog.outbox_mark_published([message.id])
    assert await catalog.outbox_pending() == []


async def test_a_refused_start_task_leaves_nothing(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image(status=ImageStatus.ACTIVE))
    first = new_task(image.id, ["dcn0"])
    await catalog.start_task(first, lock_ttl_s=60)
    second = new_task(image.id, ["dcn1"])
    with pytest.raises(Conflict, match=f"locked by import task {first.id}"):
        await catalog.start_task(second, lock_ttl_s=60, image_fields={"name": "changed"},
                                 commands=[("t", {"x": 1})])
    assert await catalog.get_task(second.id) is None
    assert (await catalog.require_image(image.id)).name is None
    assert await catalog.outbox_pending() == []
    assert await catalog.lock_holder(image.id) == first.id
    # wrong status: refused too, nothing written
    third = new_task(image.id, ["dcn1"])
    await catalog.finish_task(first.id, TaskStatus.SUCCESS, "ok")
    with pytest.raises(Conflict):
        await catalog.start_task(third, lock_ttl_s=60, expect_status=[ImageStatus.QUEUED])
    assert await catalog.get_task(third.id) is None and await catalog.lock_holder(image.id) is None


async def test_an_expired_lock_is_taken_over(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image(status=ImageStatus.ACTIVE))
    dead = new_task(image.id, ["dcn0"])
    await catalog.start_task(dead, lock_ttl_s=0.05)
    assert await catalog.lock_holder(image.id) == dead.id
    deadline = time.monotonic() + 5
    while await catalog.lock_holder(image.id) is not None:
        assert time.monotonic() < deadline, "the lock never lapsed"
        await asyncio.sleep(0.02)
    alive = new_task(image.id, ["dcn1"])
    await catalog.start_task(alive, lock_ttl_s=60)
    assert await catalog.lock_holder(image.id) == alive.id
    # the dead holder can neither renew nor release the new holder's lock
    assert not await catalog.renew_lock(image.id, dead.id, 60)
    await catalog.finish_task(dead.id, TaskStatus.FAILURE, "lapsed")
    assert await catalog.lock_holder(image.id) == alive.id
    assert await catalog.renew_lock(image.id, alive.id, 60)


async def test_update_job_records_state_progress_and_location_at_once(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image(status=ImageStatus.ACTIVE))
    task = new_task(image.id, ["dcn0"])
    await catalog.start_task(task, lock_ttl_s=60)
    await catalog.record_progress({(task.id, "dcn0"): (100, 200)})
    [job] = (await catalog.get_task(task.id)).jobs  # type: ignore[union-attr]
    assert (job.bytes_done, job.bytes_total) == (100, 200)
    # progress is recorded only now and then: done means all of the total
    await catalog.update_job(task.id, "dcn0", StoreJobState.DONE, all_bytes_done=True,
                             image_properties={"os_glance_importing_to_stores": ""},
                             location=(image.id, Location("dcn0", "file:///dcn0/x")))
    [job] = (await catalog.get_task(task.id)).jobs  # type: ignore[union-attr]
    assert (job.state, job.bytes_done, job.bytes_total) == (StoreJobState.DONE, 200, 200)
    await catalog.record_progress({(task.id, "dcn0"): (150, 200)})  # a report written late: too late
    [job] = (await catalog.get_task(task.id)).jobs  # type: ignore[union-attr]
    assert (job.state, job.bytes_done) == (StoreJobState.DONE, 200)
    after = await catalog.require_image(image.id)
    assert after.stores == ["dcn0"] and after.properties == {"os_glance_importing_to_stores": ""}


async def test_finish_task_applies_the_outcome_and_releases_the_lock(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image(status=ImageStatus.IMPORTING))
    task = new_task(image.id, ["central"], method="glance-direct")
    await catalog.start_task(task, lock_ttl_s=60, image_properties={"os_glance_import_task": task.id})
    await catalog.finish_task(task.id, TaskStatus.FAILURE, "boom", image_fields={"status": ImageStatus.QUEUED},
                              set_properties={"os_glance_failed_import": "central"},
                              remove_properties=["os_glance_import_task"])
    after = await catalog.require_image(image.id)
    assert after.status == ImageStatus.QUEUED
    assert after.properties == {"os_glance_failed_import": "central"}
    assert await catalog.lock_holder(image.id) is None
    stored = await catalog.get_task(task.id)
    assert stored is not None and (stored.status, stored.message) == (TaskStatus.FAILURE, "boom")
    assert await catalog.tasks(unfinished_only=True) == []
    with pytest.raises(NotFound):
        await catalog.finish_task(str(uuid.uuid4()), TaskStatus.SUCCESS, "")


async def test_a_task_outlives_its_deleted_image(catalog: Catalog) -> None:
    image = await catalog.insert_image(new_image(status=ImageStatus.ACTIVE))
    task = new_task(image.id, ["dcn0"])
    await catalog.start_task(task, lock_ttl_s=60)
    await catalog.delete_image(image.id)
    assert await catalog.lock_holder(image.id) is None
    await catalog.update_job(task.id, "dcn0", StoreJobState.DONE,
                             location=(image.id, Location("dcn0", "file:///x")),
                             image_properties={"k": "v"})
    await catalog.finish_task(task.id, TaskStatus.SUCCESS, "done", image_fields={"status": ImageStatus.ACTIVE})
    assert await catalog.get_image(image.id) is None
    assert (await catalog.tasks_for_image(image.id))[0].status == TaskStatus.SUCCESS


async def test_a_transaction_cancelled_at_its_begin_leaves_the_catalog_usable(tmp_path: Path) -> None:
    catalog = await Catalog.open(tmp_path / "c.sqlite3")
    try:
        for _ in range(20):  # cancel at different points of the BEGIN's round trip
            attempt = asyncio.create_task(catalog.insert_image(Image(id=str(uuid.uuid4()), owner="p")))
            await asyncio.sleep(0)
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
        image = await catalog.insert_image(Image(id="after-cancels", owner="p"))
        assert image.id == "after-cancels"
    finally:
        await catalog.close()


# --- the package's cut ----------------------------------------------------------------


def test_no_table_family_hides_another_familys_method() -> None:
    families = [base for base in Catalog.__mro__ if base not in (Catalog, Tables, object)]
    assert len(families) >= 4
    seen: dict[str, str] = {}
    for family in families:
        for name in vars(family):
            if not name.startswith("_"):
                assert name not in seen, f"{family.__name__}.{name} is also {seen[name]}.{name}"
                seen[name] = family.__name__


async def reads_to_list(catalog: Catalog, monkeypatch: pytest.MonkeyPatch, listing: str) -> int:
    """How many queries the catalog sends to list tasks (`tasks` or `tasks_for_image`)."""
    reads = 0
    real_rows = Database.rows

    async def counted(self: Database, sql: str, args: Any = ()) -> Any:
        nonlocal reads
        reads += 1
        return await real_rows(self, sql, args)

    with monkeypatch.context() as patched:
        patched.setattr(Database, "rows", counted)
        found = await (catalog.tasks(limit=1000) if listing == "tasks" else catalog.tasks_for_image("img"))
    assert all(len(task.jobs) == 2 for task in found)
    return reads


@pytest.mark.parametrize("listing", ["tasks", "tasks_for_image"])
async def test_listing_tasks_takes_as_many_queries_for_one_task_as_for_fifty(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch, listing: str) -> None:
    await catalog.insert_image(Image(id="img", owner="p1"))
    counts = []
    for wanted in (1, 50):
        while len(await catalog.tasks_for_image("img")) < wanted:
            task = new_task("img", ["central", "dcn0"])
            await catalog.start_task(task, lock_ttl_s=60)
            await catalog.finish_task(task.id, TaskStatus.SUCCESS, "done")
        counts.append(await reads_to_list(catalog, monkeypatch, listing))
    assert counts[0] == counts[1] == 2  # the tasks, then every job of theirs at once
    [newest, *_] = await catalog.tasks_for_image("img")
    assert [job.store for job in newest.jobs] == ["central", "dcn0"]
