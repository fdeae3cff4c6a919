"""The transfer routes' authorisation costs one catalog look-up per image per
second, however many sites copy it: a copy to a thousand sites asked the
catalog a thousand times a second for a task of a thousand store jobs."""

from __future__ import annotations

import asyncio
from typing import cast

from edgesync.catalog import Catalog
from edgesync.hub.transfer_auth import TransferAuthorizer
from edgesync.model import StoreJob, StoreJobState, Task

SITES = [f"dcn{i}" for i in range(300)]


class FakeCatalog:
    def __init__(self, task: Task) -> None:
        self.task = task
        self.lookups = 0

    async def lock_holder(self, image_id: str) -> str | None:
        await asyncio.sleep(0.01)  # a look-up takes a while: the sites asking meanwhile share it
        return self.task.id

    async def get_task(self, task_id: str) -> Task | None:
        self.lookups += 1
        return self.task


def copy_task(unfinished: list[str]) -> Task:
    task = Task(id="t1", image_id="img", owner="p1", method="copy-image", stores=list(unfinished),
                all_stores_must_succeed=False)
    task.jobs = [StoreJob(task_id="t1", store=s, state=StoreJobState.RUNNING) for s in unfinished]
    return task


async def test_every_site_copying_an_image_shares_one_look_up() -> None:
    fake = FakeCatalog(copy_task(SITES))
    authorizer = TransferAuthorizer(cast(Catalog, fake), reuse_s=60)

    answers = await asyncio.gather(*(authorizer.copy_open(site, "img") for site in SITES))
    again = await asyncio.gather(*(authorizer.copy_open(site, "img") for site in SITES))

    assert all(answers) and all(again)
    assert fake.lookups == 1


async def test_a_site_not_in_the_remembered_copy_is_looked_up_afresh_and_refused() -> None:
    fake = FakeCatalog(copy_task(SITES[:2]))
    authorizer = TransferAuthorizer(cast(Catalog, fake), reuse_s=60)
    assert await authorizer.copy_open("dcn0", "img")
    assert not await authorizer.copy_open("dcn7", "img")  # not copying there: a no is never reused
    fake.task = copy_task(SITES[:8])  # a copy to dcn7 starts
    assert await authorizer.copy_open("dcn7", "img")
    assert fake.lookups == 3
