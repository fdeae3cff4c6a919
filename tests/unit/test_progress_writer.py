"""Store jobs' progress reaches the catalog in batches: the first report at
once, later ones together at most once per interval, each job's latest only
(issue 12 item 5: a copy to hundreds of sites is a report a second from each)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from edgesync.catalog import Catalog
from edgesync.catalog.schema import CatalogError
from edgesync.hub.imports.jobs import ProgressWriter


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
