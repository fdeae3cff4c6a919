"""After a hub restart: finish every task the last run left open, so no
image stays locked or `importing`, and clear what staging still holds.

Work the hub did itself (central, the sites whose store it writes) died with
it: those jobs fail. Copies a site's agent was making go on without the hub
(`Site.copies_outlive_hub`), so their jobs are re-attached, not failed: a
task with such jobs goes on in the background once the bus is up, and its
outcome is decided as on the normal path. So does a task with any such site,
since its rollback may need that site.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from edgesync.catalog import Catalog, ImageQuery
from edgesync.hub.imports.jobs import JobBook, job_reason
from edgesync.hub.imports.outcome import is_location_import
from edgesync.hub.sites import Sites
from edgesync.hub.staging import Staging
from edgesync.model import ImageStatus, StoreJobState, Task

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the hub restarted while this store was being written"
MAX_OPEN_TASKS = 10_000

Finish = Callable[[str], Awaitable[None]]  # decide a task's outcome by its id
GoOn = Callable[[Task, list[str]], None]  # run a task on in the background, waiting for those stores


def resumable_stores(task: Task, *, central: str, outlives_hub: Callable[[str], bool]) -> list[str]:
    """The unfinished jobs of `task` that may still be under way without the
    hub. None while central is unfinished in the task: hub first, so no copy
    to another site had started."""
    central_job = task.job(central)
    if central_job is not None and central_job.state != StoreJobState.DONE:
        return []
    return [name for name in task.unfinished_stores if outlives_hub(name)]


class Recovery:
    def __init__(self, *, catalog: Catalog, sites: Sites, staging: Staging, jobs: JobBook,
                 lock_ttl_s: float) -> None:
        self.catalog = catalog
        self.sites = sites
        self.staging = staging
        self.jobs = jobs
        self.lock_ttl_s = lock_ttl_s

    async def run(self, *, finish: Finish, go_on: GoOn) -> None:
        for task in await self.catalog.tasks(unfinished_only=True, limit=MAX_OPEN_TASKS):
            await self._recover_task(task, finish=finish, go_on=go_on)
        await self._clean_staging()

    async def _recover_task(self, task: Task, *, finish: Finish, go_on: GoOn) -> None:
        if is_location_import(task):
            # A check that died with the hub is failed (the image goes back to
            # queued), one that finished is finished; the copy it checked is
            # its maker's, so nothing at the site is cleaned.
            await self.jobs.fail_all(task, INTERRUPTED)
            await finish(task.id)
            return
        await self._clean_leftovers(task)
        resumable = resumable_stores(task, central=self.sites.central.name, outlives_hub=self._outlives_hub)
        await self.jobs.fail_all(task, INTERRUPTED, keep=resumable)
        if not any(self._outlives_hub(j.store) for j in task.jobs):
            await finish(task.id)
            return
        # Hold the image at once: the lock may have lapsed while the hub was down.
        await self.catalog.renew_lock(task.image_id, task.id, self.lock_ttl_s)
        log.info("recovery: task %s on image %s goes on; waiting for %s", task.id, task.image_id,
                 ", ".join(resumable) or "nothing (finishing it)")
        go_on(task, resumable)

    def _outlives_hub(self, store: str) -> bool:
        site = self.sites.get(store)  # None: the site was removed from the config
        return site is not None and site.copies_outlive_hub

    async def _clean_leftovers(self, task: Task) -> None:
        """Partial or unrecorded copies the dead run left at the task's sites
        (those the hub writes itself; an agent cleans its own, from its journal)."""
        image = await self.catalog.get_image(task.image_id)
        recorded = image.stores if image is not None else []
        for name in task.unfinished_stores:
            site = self.sites.get(name)  # None: the site was removed from the config
            if site is None:
                continue
            try:
                await site.clean_after_crash(task.image_id, recorded=name in recorded)
            except Exception as exc:  # noqa: BLE001 — a broken store must not stop the hub starting
                log.warning("recovery: cleaning %s in %s failed: %s", task.image_id, name, job_reason(exc))

    async def _clean_staging(self) -> None:
        for image_id in self.staging.staged_ids():
            image = await self.catalog.get_image(image_id)
            if image is None or image.status != ImageStatus.UPLOADING or not self.staging.has(image_id):
                self.staging.discard(image_id)
        # `uploading` without whole staged data: the hub died mid-stage. Back
        # to queued, so the client can stage again.
        for hidden in (False, True):
            query = ImageQuery(is_admin=True, status=ImageStatus.UPLOADING.value, os_hidden=hidden)
            for image in await self.catalog.list_images(query):
                if not self.staging.has(image.id):
                    await self.catalog.update_image(image.id, fields={"status": ImageStatus.QUEUED},
                                                    expect_status=[ImageStatus.UPLOADING])
