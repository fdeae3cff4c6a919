"""A task's store jobs in the catalog: their states, and the image's
`os_glance_importing_to_stores` / `os_glance_failed_import` that follow them."""

from __future__ import annotations

import time
from collections.abc import Collection

from edgesync.catalog import Catalog
from edgesync.errors import EdgesyncError
from edgesync.model import FAILED_IMPORT, IMPORTING_TO_STORES, StoreJobState, Task
from edgesync.stores.base import Location
from edgesync.transfer.pipeline import CopyProgressFn

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

    def progress_recorder(self, task: Task, store: str) -> CopyProgressFn:
        """Records a store's progress (data bytes, holes excluded) at most
        once per PROGRESS_INTERVAL_S: the first report, so the total shows at
        once, and then at that pace."""
        last: float | None = None

        async def record(done_bytes: int, total_bytes: int) -> None:
            nonlocal last
            now = time.monotonic()
            if last is None or now - last >= PROGRESS_INTERVAL_S:
                last = now
                await self.catalog.record_progress(task.id, store, done_bytes, total_bytes)

        return record
