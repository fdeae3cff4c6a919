"""A task's store jobs in the catalog: their states, and the image's
`os_glance_importing_to_stores` / `os_glance_failed_import` that follow them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from edgesync.catalog import Catalog
from edgesync.errors import EdgesyncError
from edgesync.model import FAILED_IMPORT, IMPORTING_TO_STORES, StoreJobState, Task
from edgesync.stores.base import Location

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0


def job_reason(exc: Exception) -> str:
    """A failure as a store job's reason; a store error that escaped
    translation into edgesync's family still says what happened."""
    if isinstance(exc, EdgesyncError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def progress_properties(task: Task) -> dict[str, str]:
    """The image properties that show the task's progress, as its jobs stand."""
    return {
        IMPORTING_TO_STORES: ",".join(task.unfinished_stores),
        FAILED_IMPORT: ",".join(task.stores_in(StoreJobState.FAILED)),
    }


class JobBook:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.progress = ProgressWriter(catalog)

    async def set(self, task: Task, store: str, state: StoreJobState, *,
                  reason: str | None = None, bytes_done: int | None = None,
                  bytes_total: int | None = None, all_bytes_done: bool = False,
                  location: Location | None = None) -> None:
        """Record a job's new state (in `task` too) with the image's progress properties."""
        job = task.job(store)
        assert job is not None
        job.state = state
        if reason is not None:
            job.reason = reason
        await self.catalog.update_job(
            task.id, store, state, reason=reason, bytes_done=bytes_done, bytes_total=bytes_total,
            all_bytes_done=all_bytes_done,
            image_properties=progress_properties(task),
            location=(task.image_id, location) if location is not None else None,
        )

    async def fail_all(self, task: Task, reason: str, *, keep: Collection[str] = ()) -> None:
        """Fail every unfinished job of the task but those in `keep`."""
        fresh = await self.catalog.get_task(task.id)
        for job in (fresh or task).jobs:
            if not job.state.finished and job.store not in keep:
                await self.set(task, job.store, StoreJobState.FAILED, reason=reason)

    def progress_recorder(self, task: Task, store: str) -> JobProgress:
        """Records a store's progress (data bytes, holes excluded) through
        the book's ProgressWriter: every store's latest, in one write."""
        return JobProgress(self.progress, task.id, store)

    async def copied(self, task: Task, store: str, location: Location, progress: JobProgress) -> None:
        """The copy to `store` is done: its job says so with all its bytes.
        The figures come from the copy's own last report: the throttled
        writer may not have written any of them yet (a copy the site made
        mostly from blocks it held ends within a second), and a late write
        never touches a finished job — it would have stayed at 0 B."""
        if progress.last is None:
            # no report in this hub's run (a resumed copy): what an earlier one wrote
            await self.set(task, store, StoreJobState.DONE, location=location, all_bytes_done=True)
            return
        total = progress.last[1]
        await self.set(task, store, StoreJobState.DONE, location=location, bytes_done=total, bytes_total=total)


class JobProgress:
    """One store job's progress callback (a CopyProgressFn): each report goes
    to the ProgressWriter, and the latest is kept for the job's end."""

    def __init__(self, writer: ProgressWriter, task_id: str, store: str) -> None:
        self._writer = writer
        self._task_id = task_id
        self._store = store
        self.last: tuple[int, int] | None = None

    async def __call__(self, done_bytes: int, total_bytes: int) -> None:
        self.last = (done_bytes, total_bytes)
        self._writer.record(self._task_id, self._store, done_bytes, total_bytes)


class ProgressWriter:
    """Store jobs' progress, written for every job in one transaction at most
    once per `interval_s`: a report that finds no write due for a while is
    written at once (the total shows as a copy starts), later ones wait for
    the next write, and only each job's latest report is written.

    Written one transaction per report, a copy to hundreds of sites (a
    report a second from each agent) was hundreds of catalog transactions a
    second, and every API request queued behind them for the catalog.
    Progress is only progress: a write that fails is logged, the next one
    carries the newer figures; the catalog never lets it touch a finished job.
    """

    def __init__(self, catalog: Catalog, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.catalog = catalog
        self.interval_s = interval_s
        self._pending: dict[tuple[str, str], tuple[int, int]] = {}
        self._scheduled = False
        self._last_write = float("-inf")
        self._writing: set[asyncio.Task[None]] = set()

    def record(self, task_id: str, store: str, bytes_done: int, bytes_total: int) -> None:
        self._pending[(task_id, store)] = (bytes_done, bytes_total)
        if self._scheduled:
            return
        self._scheduled = True
        delay = max(0.0, self._last_write + self.interval_s - time.monotonic())
        asyncio.get_running_loop().call_later(delay, self._start_write)

    def _start_write(self) -> None:
        self._scheduled = False
        self._last_write = time.monotonic()
        batch, self._pending = self._pending, {}
        writing = asyncio.create_task(self._write(batch), name="progress-write")
        self._writing.add(writing)  # referenced until done
        writing.add_done_callback(self._writing.discard)

    async def _write(self, batch: dict[tuple[str, str], tuple[int, int]]) -> None:
        try:
            await self.catalog.record_progress(batch)
        except EdgesyncError as exc:
            log.warning("recording the progress of %d store job(s) failed: %s", len(batch), exc.message)
