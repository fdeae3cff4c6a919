"""Deletes at edge sites as the hub sends them (`AgentCommands`, real catalog,
real site registry; the test plays the agent by reading the outbox and
answering through `on_event`): pending until the agent confirms, whoever is
still waiting; never waiting for a site that is down; probes only asked of a
site that is up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgesync.bus import DoneEvent, FailedEvent, SiteState, SiteStatus, decode
from edgesync.catalog import Catalog
from edgesync.config import SiteConfig, StoreConfig
from edgesync.errors import StoreImageInUse, StoreUnavailable
from edgesync.hub.bus_bridge import OutboxPublisher
from edgesync.hub.remote import AgentCommands, SiteOffline
from edgesync.hub.sites import SiteRegistry
from edgesync.model import Image
from edgesync.stores.base import Location

WAIT_S = 30.0  # an upper bound, not a timing claim (2 busy cores)


def site(name: str, role: str = "edge") -> SiteConfig:
    return SiteConfig(name, role, name, name, name, StoreConfig(type="file", path=Path("/nonexistent")))


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    cat = await Catalog.open(tmp_path / "catalog.sqlite3")
    yield cat
    await cat.close()


@pytest.fixture
def registry() -> SiteRegistry:
    reg = SiteRegistry((site("central", "central"), site("dcn0")), stale_after_s=30)
    set_online(reg, "dcn0", True)
    return reg


def set_online(registry: SiteRegistry, name: str, online: bool) -> None:
    state = SiteState.ONLINE if online else SiteState.OFFLINE
    registry.on_status(name, SiteStatus(site=name, state=state, availability_zone=name))


@pytest.fixture
def commands(catalog: Catalog, registry: SiteRegistry) -> AgentCommands:
    return AgentCommands(catalog, OutboxPublisher(catalog), registry, offline_deadline_s=300)


async def image_at(catalog: Catalog, *stores: str) -> str:
    image = await catalog.insert_image(Image(id="0f1e2d3c-0000-4000-8000-000000000001", owner="p1"))
    for store in stores:
        await catalog.add_location(image.id, Location(store, f"file:///{store}/{image.id}"))
    return image.id


async def sent_command(catalog: Catalog, type_name: str) -> dict[str, object]:
    """The agent's side: wait for the command of that type in the outbox."""
    async with asyncio.timeout(WAIT_S):
        while True:
            for row in await catalog.outbox_pending():
                if row.payload["type"] == type_name:
                    await catalog.outbox_mark_published([row.id])
                    return row.payload
            await asyncio.sleep(0.01)


async def test_a_delete_the_agent_confirms_leaves_nothing_pending(catalog: Catalog, commands: AgentCommands) -> None:
    image_id = await image_at(catalog, "central", "dcn0")
    deleting = asyncio.create_task(commands.delete("dcn0", image_id))
    command = await sent_command(catalog, "delete")
    [pending] = await catalog.pending_deletes()
    assert (pending.task_id, pending.image_id, pending.site) == (command["task_id"], image_id, "dcn0")
    await commands.on_event("dcn0", DoneEvent(task_id=str(command["task_id"]), image_id=image_id))
    await asyncio.wait_for(deleting, WAIT_S)
    assert await catalog.pending_deletes() == []
    assert (await catalog.require_image(image_id)).stores == ["central"]


async def test_a_site_that_is_down_is_told_later_and_its_answer_settles_the_entry(
        catalog: Catalog, commands: AgentCommands, registry: SiteRegistry) -> None:
    image_id = await image_at(catalog, "central", "dcn0")
    set_online(registry, "dcn0", False)
    with pytest.raises(SiteOffline, match="pending"):
        await asyncio.wait_for(commands.delete("dcn0", image_id), WAIT_S)  # no waiting for the site
    command = await sent_command(catalog, "delete")  # sent all the same: the broker keeps it
    assert [p.task_id for p in await catalog.pending_deletes("dcn0")] == [command["task_id"]]
    # The agent returns and answers; nobody waits any more: the catalog settles it.
    set_online(registry, "dcn0", True)
    done = DoneEvent(task_id=str(command["task_id"]), image_id=image_id)
    await commands.on_event("dcn0", done)
    assert await catalog.pending_deletes() == []
    assert (await catalog.require_image(image_id)).stores == ["central"]
    await commands.on_event("dcn0", done)  # a duplicate changes nothing
    assert await catalog.pending_deletes() == []


async def test_a_refusal_nobody_waits_for_stays_listed_with_its_reason(
        catalog: Catalog, commands: AgentCommands, registry: SiteRegistry) -> None:
    set_online(registry, "dcn0", False)
    with pytest.raises(SiteOffline):
        await commands.delete("dcn0", "gone-image")
    command = await sent_command(catalog, "delete")
    await commands.on_event("dcn1", DoneEvent(task_id=str(command["task_id"]), image_id="gone-image"))
    assert len(await catalog.pending_deletes()) == 1  # another site can't settle dcn0's delete
    await commands.on_event("dcn0", FailedEvent(task_id=str(command["task_id"]), reason="COW clones: vms/x",
                                                retryable=False, code="in_use"))
    [pending] = await catalog.pending_deletes()
    assert pending.last_error == "COW clones: vms/x"


async def test_a_refusal_while_the_caller_waits_is_raised_and_the_copy_stays(
        catalog: Catalog, commands: AgentCommands) -> None:
    image_id = await image_at(catalog, "central", "dcn0")
    deleting = asyncio.create_task(commands.delete("dcn0", image_id))
    command = await sent_command(catalog, "delete")
    await commands.on_event("dcn0", FailedEvent(task_id=str(command["task_id"]), reason="COW clones: vms/x",
                                                retryable=False, code="in_use"))
    with pytest.raises(StoreImageInUse, match="COW clones"):
        await asyncio.wait_for(deleting, WAIT_S)
    assert await catalog.pending_deletes() == []
    assert (await catalog.require_image(image_id)).stores == ["central", "dcn0"]


async def test_pending_deletes_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = await Catalog.open(path)
    registry = SiteRegistry((site("central", "central"), site("dcn0")))  # nobody up yet
    with pytest.raises(SiteOffline):
        await AgentCommands(catalog, OutboxPublisher(catalog), registry, offline_deadline_s=1).delete("dcn0", "i1")
    await catalog.close()
    catalog = await Catalog.open(path)
    try:
        [pending] = await catalog.pending_deletes()
        [row] = await catalog.outbox_pending()
        assert decode(json.dumps(row.payload)).task_id == pending.task_id  # type: ignore[attr-defined]
        assert pending.site == "dcn0" and pending.created_at <= time.time()
    finally:
        await catalog.close()


async def test_a_probe_is_not_sent_to_a_site_that_is_down(
        catalog: Catalog, commands: AgentCommands, registry: SiteRegistry) -> None:
    set_online(registry, "dcn0", False)
    with pytest.raises(SiteOffline, match="offline"):
        await commands.probe("dcn0", "i1")
    assert await catalog.outbox_pending() == []


async def test_a_probe_answers_in_use_or_deletable(catalog: Catalog, commands: AgentCommands) -> None:
    probing = asyncio.create_task(commands.probe("dcn0", "i1"))
    command = await sent_command(catalog, "check_deletable")
    await commands.on_event("dcn0", FailedEvent(task_id=str(command["task_id"]), reason="COW clones: vms/x",
                                                retryable=False, code="in_use"))
    with pytest.raises(StoreImageInUse):
        await asyncio.wait_for(probing, WAIT_S)
    probing = asyncio.create_task(commands.probe("dcn0", "i1"))
    command = await sent_command(catalog, "check_deletable")
    await commands.on_event("dcn0", DoneEvent(task_id=str(command["task_id"]), image_id="i1"))
    await asyncio.wait_for(probing, WAIT_S)
    assert await catalog.pending_deletes() == []  # a question leaves no trace


async def test_a_probe_the_sites_store_cannot_answer_is_a_503(catalog: Catalog, commands: AgentCommands) -> None:
    probing = asyncio.create_task(commands.probe("dcn0", "i1"))
    command = await sent_command(catalog, "check_deletable")
    await commands.on_event("dcn0", FailedEvent(task_id=str(command["task_id"]), reason="ceph: timed out",
                                                retryable=True, code="store_unavailable"))
    with pytest.raises(StoreUnavailable, match="ceph: timed out") as raised:
        await asyncio.wait_for(probing, WAIT_S)
    assert raised.value.http_status == 503
