"""The hub's bus bridge against the real Mosquitto: the outbox reaches the
site (and survives a broker restart), events reach the orchestration once,
statuses and heartbeats keep the site registry current, an AZ mismatch is
caught."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edgesync.bus import (
    BusClient,
    CopyCommand,
    Delivery,
    DoneEvent,
    Heartbeat,
    Message,
    SiteState,
    SiteStatus,
    topics,
)
from edgesync.catalog import Catalog
from edgesync.config import SiteConfig, StoreConfig
from edgesync.hub.bus_bridge import EventRouter, OutboxPublisher, outbox_row, run_hub_bus
from edgesync.hub.remote import AgentCommands, SiteOffline
from edgesync.hub.sites import SiteRegistry
from tests.fixtures.broker import WAIT_S, Inbox, LabBroker, unique_id


def site(name: str, role: str = "edge") -> SiteConfig:
    store = StoreConfig(type="file", path=Path("/nonexistent"))
    return SiteConfig(name, role, name, name, name, store)


SITES = (site("central", "central"), site("dcn0"), site("dcn1"))


def copy_command(task_id: str) -> CopyCommand:
    return CopyCommand(task_id=task_id, image_id="img-" + task_id, size_bytes=1024,
                       os_hash_value="ab" * 64, source_url="http://hub.invalid")


@pytest.fixture
async def catalog(tmp_path: Path):  # type: ignore[no-untyped-def]
    cat = await Catalog.open(tmp_path / "catalog.sqlite3")
    yield cat
    await cat.close()


async def test_outbox_rows_reach_the_site_once_and_are_marked_published(
        broker: LabBroker, catalog: Catalog) -> None:
    commands = [copy_command(unique_id("t")) for _ in range(3)]
    for command in commands:
        await catalog.outbox_add(*outbox_row(topics.cmd("dcn0"), command))
    async with BusClient(broker.site("dcn0", unique_id("agent"))) as agent, Inbox(agent) as inbox:
        await agent.subscribe(topics.cmd("dcn0"))
        async with BusClient(broker.hub(unique_id("hub"))) as hub:
            assert await OutboxPublisher(catalog).publish_once(hub) == 3
            assert await OutboxPublisher(catalog).publish_once(hub) == 0  # nothing left
        got = await inbox.wait_for_count(3)
    assert [d.message for d in got] == commands  # same ids: resends are recognisable
    assert await catalog.outbox_pending() == []


async def test_commands_queued_while_the_broker_restarts_are_delivered(
        broker: LabBroker, catalog: Catalog) -> None:
    agent_id = unique_id("agent")
    async with BusClient(broker.site("dcn1", agent_id)) as agent:
        await agent.subscribe(topics.cmd("dcn1"))  # persistent session, then away
    command = copy_command(unique_id("t"))
    await catalog.outbox_add(*outbox_row(topics.cmd("dcn1"), command))
    async with BusClient(broker.hub(unique_id("hub"))) as hub:
        await OutboxPublisher(catalog).publish_once(hub)
    await broker.restart()
    async with BusClient(broker.site("dcn1", agent_id)) as agent, Inbox(agent) as inbox:
        await inbox.wait_for_id(command.message_id)


async def test_router_feeds_registry_and_orchestration_and_drops_duplicates(broker: LabBroker) -> None:
    registry = SiteRegistry(SITES, stale_after_s=30)
    task_events: list[tuple[str, Message]] = []
    arrived = asyncio.Event()

    async def on_task_event(site_name: str, message: Message) -> None:
        task_events.append((site_name, message))
        arrived.set()

    router = EventRouter(registry, on_task_event)
    async with BusClient(broker.hub(unique_id("hub"))) as hub:
        await router.subscribe(hub)
        consumer = asyncio.create_task(router.consume(hub))
        try:
            await _publish_agent_events(broker, registry, arrived)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    assert [m for _, m in task_events] == [DONE] and task_events[0][0] == "dcn0"
    assert router.duplicates >= 1
    view = registry.view("dcn0")
    assert view.in_flight == ("t1",) and view.free_bytes == 42
    assert not registry.is_up("dcn1")


DONE = DoneEvent(task_id="t1", image_id="i1", location_url="rbd://f/images/i1/snap")


async def _publish_agent_events(broker: LabBroker, registry: SiteRegistry, arrived: asyncio.Event) -> None:
    async with BusClient(broker.site("dcn0", unique_id("agent"))) as agent:
        online = SiteStatus(site="dcn0", state=SiteState.ONLINE, availability_zone="dcn0")
        await agent.publish(topics.status("dcn0"), online)
        await agent.publish(topics.event("dcn0"), Heartbeat(site="dcn0", ts=time.time(),
                                                            in_flight=("t1",), free_bytes=42))
        await agent.publish(topics.event("dcn0"), DONE)
        await agent.publish(topics.event("dcn0"), DONE)  # QoS 1 may deliver twice
        # One topic, one publisher: delivered in order. Once this marker is in,
        # the duplicate before it has been handled.
        sent_at = time.time()
        await agent.publish(topics.event("dcn0"), Heartbeat(site="dcn0", ts=sent_at,
                                                            in_flight=("t1",), free_bytes=42))
        async with asyncio.timeout(WAIT_S):
            await arrived.wait()
            while (registry.view("dcn0").last_heartbeat or 0) < sent_at or not registry.is_up("dcn0"):
                await registry.wait_change("dcn0", 0.5)


def test_registry_flags_an_az_mismatch_and_keeps_the_site_down() -> None:
    registry = SiteRegistry(SITES)
    problem = registry.on_status("dcn0", SiteStatus(site="dcn0", state=SiteState.ONLINE,
                                                    availability_zone="az-elsewhere"))
    assert problem is not None and "az-elsewhere" in problem and "dcn0" in problem
    assert not registry.is_up("dcn0")
    another = registry.on_status("dcn0", SiteStatus(site="dcn0", state=SiteState.ONLINE,
                                                    availability_zone="dcn1"))
    assert another is not None and "site dcn1's zone" in another


async def test_router_refuses_a_running_agent_whose_az_disagrees() -> None:
    refused: list[tuple[str, str, str]] = []

    async def on_refused(site_name: str, az: str, problem: str) -> None:
        refused.append((site_name, az, problem))

    async def on_task_event(site_name: str, message: Message) -> None:
        raise AssertionError("a status is not a task event")

    router = EventRouter(SiteRegistry(SITES), on_task_event, on_refused)
    deliveries = [
        SiteStatus(site="dcn1", state=SiteState.OFFLINE, availability_zone="dcn0"),  # a will: nothing to stop
        SiteStatus(site="dcn1", state=SiteState.ONLINE, availability_zone="dcn1"),  # right: nothing to say
        SiteStatus(site="dcn1", state=SiteState.ONLINE, availability_zone="dcn0"),
    ]
    for status in deliveries:
        await router.handle(Delivery(topics.status("dcn1"), status))
    assert len(refused) == 1
    site_name, az, problem = refused[0]
    assert (site_name, az) == ("dcn1", "dcn0") and "site dcn0's zone" in problem
    assert not router.registry.is_up("dcn1")


def test_registry_marks_a_silent_site_down() -> None:
    now = [1000.0]
    registry = SiteRegistry(SITES, stale_after_s=10, clock=lambda: now[0])
    registry.on_status("dcn1", SiteStatus(site="dcn1", state=SiteState.ONLINE, availability_zone="dcn1"))
    assert registry.is_up("dcn1")
    now[0] += 11
    assert not registry.is_up("dcn1")
    registry.on_heartbeat("dcn1", Heartbeat(site="dcn1", ts=now[0]))
    assert registry.is_up("dcn1")
    registry.on_status("dcn1", SiteStatus(site="dcn1", state=SiteState.OFFLINE))
    assert not registry.is_up("dcn1")


async def test_a_copy_given_up_for_an_offline_site_is_followed_by_its_delete(catalog: Catalog) -> None:
    registry = SiteRegistry(SITES)  # dcn0's agent never said it was online
    commands = AgentCommands(catalog, OutboxPublisher(catalog), registry, offline_deadline_s=0)
    command = copy_command(unique_id("t"))
    with pytest.raises(SiteOffline, match="site offline: the agent of dcn0"):
        await commands.call("dcn0", command)
    rows = await catalog.outbox_pending()
    # In this order, to the same site: its agent runs one image's commands in order.
    assert [(row.topic, row.payload["type"], row.payload["image_id"]) for row in rows] == [
        (str(topics.cmd("dcn0")), "copy", command.image_id), (str(topics.cmd("dcn0")), "delete", command.image_id)]


async def test_run_hub_bus_publishes_and_consumes(broker: LabBroker, catalog: Catalog) -> None:
    registry = SiteRegistry(SITES)
    seen: list[Message] = []

    async def on_task_event(site_name: str, message: Message) -> None:
        seen.append(message)

    publisher = OutboxPublisher(catalog)
    bridge = asyncio.create_task(run_hub_bus(BusClient(broker.hub(unique_id("hub"))), publisher,
                                             EventRouter(registry, on_task_event)))
    try:
        async with BusClient(broker.site("dcn0", unique_id("agent"))) as agent, Inbox(agent) as inbox:
            await agent.subscribe(topics.cmd("dcn0"))
            command = copy_command(unique_id("t"))
            await catalog.outbox_add(*outbox_row(topics.cmd("dcn0"), command))
            publisher.wake()
            await inbox.wait_for_id(command.message_id)
            done = DoneEvent(task_id=command.task_id, image_id=command.image_id, location_url="x")
            await agent.publish(topics.event("dcn0"), done)
            async with asyncio.timeout(WAIT_S):
                while done not in seen:
                    await asyncio.sleep(0.05)
    finally:
        bridge.cancel()
        await asyncio.gather(bridge, return_exceptions=True)
