"""Store jobs' progress reaches the catalog in batches: the first report at
once, later ones together at most once per interval, each job's latest only
(issue 12 item 5: a copy to hundreds of sites is a report a second from each)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from edgesync.catalog import Catalog
from edgesync.catalog.schema import CatalogError
from edgesync.hub.imports.jobs import JobBook, ProgressWriter
from edgesync.model import Image, ImageStatus, StoreJob, StoreJobState, Task, TaskStatus
from edgesync.stores.base import Location


class FakeCatalog:
    def __init__(self) -> None:
        self.writes: list[dict[tuple[str, str], tuple[int, int]]] = []
        self.fail_next = False

    async def record_progress(self, progress: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise CatalogError("disk I/O error")
        self.writes.append(dict(progress))


def writer(interval_s: float) -> tuple[ProgressWriter, FakeCatalog]:
    fake = FakeCatalog()
    return ProgressWriter(cast(Catalog, fake), interval_s=interval_s), fake


async def settle(fake: FakeCatalog, writes: int) -> None:
    async with asyncio.timeout(10):
        while len(fake.writes) < writes:
            await asyncio.sleep(0.01)


async def test_the_first_report_is_written_at_once_and_the_rest_together_latest_only() -> None:
    progress, fake = writer(interval_s=0.3)
    progress.record("t1", "dcn0", 10, 100)
    await settle(fake, 1)
    for site in range(200):  # every site reports, several times, before the next write is due
        for done in (20, 30, 40):
            progress.record("t1", f"dcn{site}", done, 100)
    assert len(fake.writes) == 1
    await settle(fake, 2)

    assert fake.writes[0] == {("t1", "dcn0"): (10, 100)}
    assert fake.writes[1] == {("t1", f"dcn{site}"): (40, 100) for site in range(200)}
    await asyncio.sleep(0.5)
    assert len(fake.writes) == 2  # nothing new: no more writes


async def test_a_failed_write_is_logged_and_the_next_carries_newer_figures(caplog: Any) -> None:
    progress, fake = writer(interval_s=0.05)
    fake.fail_next = True
    progress.record("t1", "dcn0", 10, 100)
    await asyncio.sleep(0.1)
    progress.record("t1", "dcn0", 20, 100)
    await settle(fake, 1)
    assert fake.writes == [{("t1", "dcn0"): (20, 100)}]
    assert "disk I/O error" in caplog.text


async def copy_task(catalog: Catalog, stores: list[str]) -> Task:
    """A running copy of a new active image to `stores`."""
    image = await catalog.insert_image(Image(id=str(uuid.uuid4()), owner="p1", status=ImageStatus.ACTIVE))
    task_id = str(uuid.uuid4())
    task = Task(id=task_id, image_id=image.id, owner="p1", method="copy-image", stores=stores,
                all_stores_must_succeed=True, status=TaskStatus.PROCESSING,
                jobs=[StoreJob(task_id, store) for store in stores])
    await catalog.start_task(task, lock_ttl_s=60)
    return task


async def test_a_copy_that_ends_before_its_reports_are_written_is_done_with_all_its_bytes(
        tmp_path: Path) -> None:
    """A site that makes its copy mostly from blocks it already holds ends
    within the writer's interval: its reports were still waiting when the job
    ended, and a late write never touches a finished job — the job must not
    stay at 0 B (the admin CLI showed 'done 0 B in 0:01')."""
    catalog = await Catalog.open(tmp_path / "catalog.sqlite3")
    try:
        task = await copy_task(catalog, ["dcn0", "dcn1"])
        book = JobBook(catalog)
        book.progress = ProgressWriter(catalog, interval_s=3600)  # nothing written after the first
        other, copy = book.progress_recorder(task, "dcn1"), book.progress_recorder(task, "dcn0")
        await other(1, 100)  # the writer's first write is due at once; dcn0's reports then wait
        await copy(4096, 16 << 20)
        await copy(16 << 20, 16 << 20)
        await book.copied(task, "dcn0", Location("dcn0", "file:///dcn0/x"), copy)
        jobs = {job.store: job for job in (await catalog.get_task(task.id)).jobs}  # type: ignore[union-attr]
        assert (jobs["dcn0"].state, jobs["dcn0"].bytes_done, jobs["dcn0"].bytes_total) == (
            StoreJobState.DONE, 16 << 20, 16 << 20)
    finally:
        await catalog.close()


async def test_a_resumed_copy_without_reports_in_this_run_keeps_what_the_last_run_wrote(
        tmp_path: Path) -> None:
    catalog = await Catalog.open(tmp_path / "catalog.sqlite3")
    try:
        task = await copy_task(catalog, ["dcn0"])
        await catalog.record_progress({(task.id, "dcn0"): (100, 300)})  # the previous hub run's
        book = JobBook(catalog)
        await book.copied(task, "dcn0", Location("dcn0", "file:///dcn0/x"), book.progress_recorder(task, "dcn0"))
        [job] = (await catalog.get_task(task.id)).jobs  # type: ignore[union-attr]
        assert (job.state, job.bytes_done, job.bytes_total) == (StoreJobState.DONE, 300, 300)
    finally:
        await catalog.close()


async def test_progress_for_many_jobs_is_written_in_as_many_trips_as_for_one(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The batch is one statement for all its jobs: one trip per job to the
    catalog's thread held the catalog's lock for hundreds of event loop turns
    a second during a copy to hundreds of sites, and the API's reads queued."""
    import aiosqlite
    catalog = await Catalog.open(tmp_path / "catalog.sqlite3")
    try:
        one, many = await copy_task(catalog, ["dcn0"]), await copy_task(catalog, [f"dcn{i}" for i in range(40)])
        trips = 0
        original = aiosqlite.Connection._execute

        async def counted(conn: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal trips
            trips += 1
            return await original(conn, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        await catalog.record_progress({(one.id, "dcn0"): (1, 10)})
        for_one, trips = trips, 0
        await catalog.record_progress({(many.id, f"dcn{i}"): (i, 100) for i in range(40)})
        assert trips == for_one
        monkeypatch.undo()
        jobs = {job.store: job for job in (await catalog.get_task(many.id)).jobs}  # type: ignore[union-attr]
        assert [(jobs[f"dcn{i}"].bytes_done, jobs[f"dcn{i}"].bytes_total) for i in range(40)] == [
            (i, 100) for i in range(40)]
    finally:
        await catalog.close()
