"""AgentCommands: an agent's progress reaches the waiting copy with its data
total, and its answer ends the wait (events fed as the bus router would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgesync.bus import CopyCommand, DoneEvent, ProgressEvent
from edgesync.catalog import Catalog
from edgesync.config import SiteConfig, StoreConfig
from edgesync.hub.bus_bridge import OutboxPublisher
from edgesync.hub.remote import AgentCommands
from edgesync.hub.sites import SiteRegistry

SITES = tuple(SiteConfig(name, role, name, name, name, StoreConfig(type="file", path=Path("/nonexistent")))
              for name, role in (("central", "central"), ("dcn0", "edge")))


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    cat = await Catalog.open(tmp_path / "catalog.sqlite3")
    yield cat
    await cat.close()


async def test_progress_reaches_the_copy_with_the_data_total(catalog: Catalog) -> None:
    commands = AgentCommands(catalog, OutboxPublisher(catalog), SiteRegistry(SITES), offline_deadline_s=60)
    seen: list[tuple[int, int]] = []

    async def on_progress(done_bytes: int, total_bytes: int) -> None:
        seen.append((done_bytes, total_bytes))

    command = CopyCommand(task_id="t1", image_id="i1", size_bytes=8192, os_hash_value="ab" * 64,
                          source_url="http://hub.invalid")
    call = asyncio.create_task(commands.call("dcn0", command, on_progress))
    async with asyncio.timeout(5):
        while not await catalog.outbox_pending():  # the command is queued: the call waits
            await asyncio.sleep(0.01)
    await commands.on_event("dcn0", ProgressEvent(task_id="t1", bytes_done=1024, bytes_total=4096))
    done = DoneEvent(task_id="t1", image_id="i1", location_url="file:///dcn0/i1")
    await commands.on_event("dcn0", done)
    assert await asyncio.wait_for(call, 5) == done
    assert seen == [(1024, 4096)]
