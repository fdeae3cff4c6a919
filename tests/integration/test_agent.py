"""The agent against the session's real Mosquitto, with file stores in temporary
directories and the real HTTP transfer (`data_routes` serving a "central"
store, the agent pulling with `HttpSource`).

A test plays the hub: it publishes commands as user `hub` and watches the
site's events and status. Each agent gets its own client id, so earlier
tests' sessions never leak in; events are matched by task id, statuses by
being live (not retained) deliveries. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgesync.agent.config import AgentConfig, load_agent
from edgesync.agent.daemon import Agent, AgentRefused
from edgesync.agent.journal import Journal, TaskState
from edgesync.backoff import Backoff
from edgesync.bus import (
    BusClient,
    BusError,
    CheckDeletableCommand,
    CopyCommand,
    DeleteCommand,
    Delivery,
    DoneEvent,
    FailedEvent,
    Heartbeat,
    Inventory,
    Message,
    ProgressEvent,
    SiteRefused,
    SiteState,
    SiteStatus,
    VerifyCommand,
    topics,
)
from edgesync.errors import StoreImageInUse, Unauthorized
from edgesync.lab import mosquitto
from edgesync.stores.file import FileStore
from edgesync.transfer.http import AUTH_HEADER, HttpSource, TransferError, data_routes
from edgesync.transfer.pipeline import StoreSource, pump
from tests.fixtures.broker import SITES, WAIT_S, Inbox, LabBroker, unique_id
from tests.fixtures.metrics_text import Scrape
from tests.fixtures.sparse_images import CountingSource, SampleImage, publish_image, read_image

REPO = Path(__file__).resolve().parents[2]
TOKEN = "agent-token-for-tests"
LAYOUT = "DZDDZDZZDZ"  # 40 MiB logical, 24 MiB of data


# --- the hub's side: its data endpoint and its bus client ------------------------------


class HubData:
    """The hub's data endpoint over a "central" file store (the real `data_routes`),
    counting the data bytes it serves. `hold_after(n)` makes every data request
    after the n-th wait until `release()`, which then answers it 503: a copy can
    be stopped mid-way without any byte served twice being counted."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.bytes_served = 0
        self.bytes_sent = 0
        self.data_requests = 0
        self.url = ""
        self.holding = asyncio.Event()
        self._hold_after: int | None = None
        self._released = asyncio.Event()

    def hold_after(self, requests: int) -> None:
        self._hold_after = requests

    def release(self) -> None:
        self._hold_after = None
        self._released.set()

    def app(self) -> web.Application:
        async def lookup(image_id: str) -> FileStore:
            return self.store

        async def authorize(request: web.Request, image_id: str) -> None:
            if request.headers.get(AUTH_HEADER) != TOKEN:
                raise Unauthorized("bad token")

        app = web.Application(middlewares=[self._count_and_hold])
        app.add_routes(data_routes(lookup, authorize))
        return app

    @web.middleware
    async def _count_and_hold(self, request: web.Request, handler: Callable) -> web.StreamResponse:  # type: ignore[type-arg]
        if not request.path.endswith("/data"):
            return await handler(request)
        self.data_requests += 1
        if self._hold_after is not None and self.data_requests > self._hold_after:
            self.holding.set()
            await self._released.wait()
            raise web.HTTPServiceUnavailable(text="released without serving")
        response = await handler(request)
        # The range's data bytes, whether they went compressed or not, and
        # what crossed the wire for them.
        self.bytes_served += int(request.query["length"]) if response.status == 200 else 0
        self.bytes_sent += response.content_length or 0
        return response


@pytest.fixture
async def hub_data(tmp_path: Path) -> AsyncIterator[HubData]:
    data = HubData(FileStore("central", tmp_path / "central"))
    runner = web.AppRunner(data.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    data.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield data
    finally:
        data.release()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hub_bus(broker: LabBroker, site: str, client_id: str | None = None) -> AsyncIterator[tuple[BusClient, Inbox]]:
    async with BusClient(broker.hub(client_id or unique_id("hub"))) as hub, Inbox(hub) as inbox:
        await hub.subscribe(topics.event(site))
        await hub.subscribe(topics.status(site))
        yield hub, inbox


def live_status(state: SiteState) -> Callable[[Delivery], bool]:
    return lambda d: isinstance(d.message, SiteStatus) and d.message.state is state and not d.retained


def for_task(task_id: str, kind: type[Message]) -> Callable[[Delivery], bool]:
    return lambda d: isinstance(d.message, kind) and getattr(d.message, "task_id", None) == task_id


def of_task(inbox: Inbox, task_id: str, kind: type[Message]) -> list[Message]:
    return [d.message for d in inbox.deliveries if for_task(task_id, kind)(d)]


# --- the agent ---------------------------------------------------------------------------


def agent_config(tmp_path: Path, broker: LabBroker, hub_url: str, *, site: str = "dcn0",
                 listen_port: int = 0, extra: str = "", name: str = "agent") -> Path:
    base = tmp_path / name
    base.mkdir()
    (base / "token").write_text(TOKEN)
    (base / "mqtt").write_text(broker.info.password(mosquitto.site_user(site)))
    path = base / f"{site}.toml"
    path.write_text(
        f'name = "{site}"\nrole = "edge"\navailability_zone = "{site}"\n'
        '[store]\ntype = "file"\npath = "store"\n'
        f'[agent]\nhub_url = "{hub_url}"\ntoken_file = "token"\nstate_dir = "state"\n'
        f'listen = "127.0.0.1:{listen_port}"\nheartbeat_interval_s = 0.2\ntls = {{ plaintext = true }}\n{extra}\n'
        f'[agent.broker]\nhost = "{broker.info.host}"\nport = {broker.info.port}\npassword_file = "mqtt"\n'
        f'client_id = "{unique_id(f"agent-{site}")}"\n')
    return path


def edge_store(config: AgentConfig) -> FileStore:
    assert config.site.store.path is not None
    return FileStore(config.name, config.site.store.path)


@contextlib.asynccontextmanager
async def running(config: AgentConfig, **kwargs: object) -> AsyncIterator[Agent]:
    """An agent started in-process; stopped (cleanly) on the way out."""
    agent = Agent(config, reconnect_backoff=Backoff(initial_s=0.1, max_s=0.5), **kwargs)  # type: ignore[arg-type]
    await agent.start()
    task = asyncio.create_task(agent.run(), name="agent")
    agent.task = task  # type: ignore[attr-defined]
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


@pytest.fixture
def config(tmp_path: Path, broker: LabBroker, hub_data: HubData) -> AgentConfig:
    return load_agent(agent_config(tmp_path, broker, hub_data.url))


def copy_command(image: SampleImage, hub_data: HubData, *, os_hash_value: str | None = None) -> CopyCommand:
    return CopyCommand(task_id=unique_id("copy"), image_id=image.image_id, size_bytes=image.size,
                       os_hash_value=os_hash_value or image.sha512, source_url=hub_data.url)


# --- copies ------------------------------------------------------------------------------


async def test_a_copy_reports_progress_then_done_and_is_identical_and_sparse(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data)
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config):
        online = await inbox.wait_for(live_status(SiteState.ONLINE))
        assert online.message.availability_zone == "dcn0"  # type: ignore[attr-defined]
        await hub.publish(topics.cmd("dcn0"), command)
        done = await inbox.wait_for(for_task(command.task_id, DoneEvent))
        await inbox.wait_for(lambda d: isinstance(d.message, Inventory) and image.image_id in d.message.image_ids)

    store = edge_store(config)
    assert done.message == DoneEvent(task_id=command.task_id, image_id=image.image_id,
                                     location_url=store.location_url(image.image_id),
                                     message_id=done.message.message_id)
    progress = of_task(inbox, command.task_id, ProgressEvent)
    assert progress, "no progress before Done"
    assert inbox.deliveries.index(done) > max(inbox.deliveries.index(d) for d in inbox.deliveries
                                              if d.message in progress)
    assert all(p.bytes_total == image.data_bytes for p in progress)  # type: ignore[attr-defined]
    assert await read_image(store, image.image_id) == image.data
    assert await store.allocated_bytes(image.image_id) <= image.data_bytes + 64 * 1024  # holes stayed holes
    assert hub_data.bytes_served == image.data_bytes  # holes never crossed the wire


async def test_a_redelivered_command_is_answered_again_without_a_second_copy(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data)
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config):
        await inbox.wait_for(live_status(SiteState.ONLINE))
        await hub.publish(topics.cmd("dcn0"), command)
        first = await inbox.wait_for(for_task(command.task_id, DoneEvent))
        await hub.publish(topics.cmd("dcn0"), command)  # the hub's outbox resends it
        await inbox.wait_for(lambda d: len(of_task(inbox, command.task_id, DoneEvent)) == 2)
        # The hub retrying under a new task id: the copy is there already.
        retry = CopyCommand(task_id=unique_id("retry"), image_id=image.image_id, size_bytes=image.size,
                            os_hash_value=image.sha512, source_url=hub_data.url)
        await hub.publish(topics.cmd("dcn0"), retry)
        retried = await inbox.wait_for(for_task(retry.task_id, DoneEvent))

    answers = of_task(inbox, command.task_id, DoneEvent)
    assert answers[0] == answers[1] == first.message  # same message id: the hub drops it if it has it
    assert retried.message.location_url == first.message.location_url  # type: ignore[attr-defined]
    assert hub_data.bytes_served == image.data_bytes  # copied once


async def test_a_copy_that_does_not_match_its_hash_fails_and_publishes_nothing(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data, os_hash_value="0" * 128)
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config):
        await inbox.wait_for(live_status(SiteState.ONLINE))
        await hub.publish(topics.cmd("dcn0"), command)
        failed = await inbox.wait_for(for_task(command.task_id, FailedEvent))
    assert failed.message.code == "checksum_mismatch" and not failed.message.retryable  # type: ignore[attr-defined]
    assert "nothing was published" in failed.message.reason  # type: ignore[attr-defined]
    assert of_task(inbox, command.task_id, DoneEvent) == []
    assert list(edge_store(config).root.iterdir()) == []  # no copy, no partial copy


async def test_a_copy_stopped_mid_way_resumes_and_fetches_only_what_it_lacks(
        tmp_path: Path, broker: LabBroker, hub_data: HubData) -> None:
    config = load_agent(agent_config(tmp_path, broker, hub_data.url, extra="shutdown_grace_s = 0"))
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data)
    hub_data.hold_after(3)  # three 4 MiB chunks, then the link "stalls"
    async with hub_bus(broker, "dcn0") as (hub, inbox):
        async with running(config):
            await inbox.wait_for(live_status(SiteState.ONLINE))
            await hub.publish(topics.cmd("dcn0"), command)
            await hub_data.holding.wait()
            # Progress comes once a chunk went to the store (reads run ahead of writes).
            await inbox.wait_for(for_task(command.task_id, ProgressEvent))
        # A clean stop mid-copy: the copy checkpoints, and the site says offline.
        await inbox.wait_for(live_status(SiteState.OFFLINE))
        first_run = hub_data.bytes_served
        assert 0 < first_run < image.data_bytes
        journal = await Journal.open(config.journal_path)
        try:
            record = await journal.get(command.task_id)
            assert record is not None and record.state is TaskState.RUNNING  # resumed at the next start
            journaled = sum(e.length for e in await journal.done_ranges(command.task_id))
            assert 0 < journaled <= first_run
        finally:
            await journal.close()
        hub_data.release()

        async with running(config):
            await inbox.wait_for(for_task(command.task_id, DoneEvent))
    second_run = hub_data.bytes_served - first_run
    assert second_run == image.data_bytes - journaled < image.data_bytes
    assert await read_image(edge_store(config), image.image_id) == image.data


async def test_a_copy_that_keeps_failing_is_reported_retryable_and_leaves_nothing(
        tmp_path: Path, broker: LabBroker, hub_data: HubData) -> None:
    config = load_agent(agent_config(tmp_path, broker, hub_data.url, extra="copy_retry_window_s = 0"))
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data)

    def flaky_link(command: CopyCommand) -> CountingSource:
        return CountingSource(StoreSource(hub_data.store, command.image_id), fail_after_reads=2)

    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config, sources=flaky_link):
        await inbox.wait_for(live_status(SiteState.ONLINE))
        await hub.publish(topics.cmd("dcn0"), command)
        failed = await inbox.wait_for(for_task(command.task_id, FailedEvent))
    assert (failed.message.code, failed.message.retryable) == ("link_down", True)  # type: ignore[attr-defined]
    assert list(edge_store(config).root.iterdir()) == []  # the partial copy went with the task


async def test_work_goes_on_while_the_broker_is_down_and_its_events_follow(
        tmp_path: Path, broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data)
    hub_id = unique_id("hub")
    hub_data.hold_after(2)
    async with running(config) as agent:
        async with hub_bus(broker, "dcn0", hub_id) as (hub, inbox):
            # Retained or live: an agent stopped earlier left "offline" retained, not "online".
            await inbox.wait_for(lambda d: isinstance(d.message, SiteStatus) and d.message.state is SiteState.ONLINE)
            await hub.publish(topics.cmd("dcn0"), command)
            await hub_data.holding.wait()
        await mosquitto.down(broker.dir)
        try:
            hub_data.release()  # held ranges fail with 503 and are fetched again: the copy finishes
            await health_says(agent, lambda h: h["owed_results"] == 1 and not h["in_flight"])
        finally:
            broker.info = await mosquitto.up(broker.dir, SITES)
        async with hub_bus(broker, "dcn0", hub_id) as (hub, inbox):  # the hub's session kept its place
            done = await inbox.wait_for(for_task(command.task_id, DoneEvent), timeout_s=WAIT_S)
    assert done.message.location_url == edge_store(config).location_url(image.image_id)  # type: ignore[attr-defined]




async def health(agent: Agent) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{agent.http_port}/healthz") as response:
        assert response.status == 200
        return await response.json()  # type: ignore[no-any-return]


async def health_says(agent: Agent, predicate: Callable[[dict], bool]) -> dict:  # type: ignore[type-arg]
    async with asyncio.timeout(WAIT_S):
        while not predicate(answer := await health(agent)):
            await asyncio.sleep(0.05)
    return answer


# --- deletes -------------------------------------------------------------------------------


async def test_a_delete_removes_the_copy_and_a_missing_copy_is_done_too(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    store = edge_store(config)
    image = await publish_image(store, "DZ")
    delete = DeleteCommand(task_id=unique_id("delete"), image_id=image.image_id)
    again = DeleteCommand(task_id=unique_id("delete"), image_id=image.image_id)
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config):
        await inbox.wait_for(live_status(SiteState.ONLINE))
        await inbox.wait_for(lambda d: isinstance(d.message, Inventory) and image.image_id in d.message.image_ids)
        await hub.publish(topics.cmd("dcn0"), delete)
        done = await inbox.wait_for(for_task(delete.task_id, DoneEvent))
        await inbox.wait_for(lambda d: isinstance(d.message, Inventory) and d.message.image_ids == ())
        await hub.publish(topics.cmd("dcn0"), again)
        await inbox.wait_for(for_task(again.task_id, DoneEvent))
    assert done.message.location_url is None  # type: ignore[attr-defined]
    assert list(store.root.iterdir()) == []


class ClonedStore(FileStore):
    """A store whose copies all have COW clones (what RBD says when a VM booted from one)."""

    async def delete(self, image_id: str) -> None:
        raise StoreImageInUse(f"store {self.name}: image {image_id} has COW clones: vms/instance-1")

    async def ensure_deletable(self, image_id: str) -> None:
        if await self.exists(image_id):
            raise StoreImageInUse(f"store {self.name}: image {image_id} has COW clones: vms/instance-1")


async def test_a_probe_says_whether_the_copy_could_be_deleted_and_changes_nothing(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    store = ClonedStore(config.name, edge_store(config).root)
    image = await publish_image(store, "DZ")
    in_use = CheckDeletableCommand(task_id=unique_id("probe"), image_id=image.image_id)
    absent = CheckDeletableCommand(task_id=unique_id("probe"), image_id="no-such-image")
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config, store=store):
        await inbox.wait_for(live_status(SiteState.ONLINE))
        await hub.publish(topics.cmd("dcn0"), in_use)
        failed = await inbox.wait_for(for_task(in_use.task_id, FailedEvent))
        await hub.publish(topics.cmd("dcn0"), absent)
        await inbox.wait_for(for_task(absent.task_id, DoneEvent))
    assert (failed.message.code, failed.message.retryable) == ("in_use", False)  # type: ignore[attr-defined]
    assert await store.exists(image.image_id)
    journal = await Journal.open(config.journal_path)
    try:  # a question, not a task: nothing to resume or answer again after a restart
        assert await journal.get(in_use.task_id) is None and await journal.unreported() == []
    finally:
        await journal.close()


async def test_a_verify_hashes_a_copy_made_at_the_site_and_refuses_one_that_is_not_there(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    store = edge_store(config)
    image = await publish_image(store, "DZZD")  # written there by someone else (Nova's snapshot)
    present = VerifyCommand(task_id=unique_id("verify"), image_id=image.image_id)
    absent = VerifyCommand(task_id=unique_id("verify"), image_id=str(uuid.uuid4()))
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config):
        await inbox.wait_for(live_status(SiteState.ONLINE))
        await hub.publish(topics.cmd("dcn0"), present)
        done = (await inbox.wait_for(for_task(present.task_id, DoneEvent))).message
        await hub.publish(topics.cmd("dcn0"), absent)
        failed = (await inbox.wait_for(for_task(absent.task_id, FailedEvent))).message
    assert isinstance(done, DoneEvent) and isinstance(failed, FailedEvent)
    assert (done.size_bytes, done.os_hash_value, done.checksum) == (
        image.size, image.sha512, hashlib.md5(image.data).hexdigest())
    assert done.location_url == store.location_url(image.image_id)
    assert failed.code == "store_image_not_found" and "no published copy" in failed.reason
    # its manifest is kept like those of the site's own copies (dedup takes blocks from it)
    assert (config.state_dir / "manifests" / f"{image.image_id}.manifest").is_file()
    assert await read_image(store, image.image_id) == image.data  # read-only


async def test_a_copy_in_use_is_not_deleted(broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    store = ClonedStore(config.name, edge_store(config).root)
    image = await publish_image(store, "DZ")
    delete = DeleteCommand(task_id=unique_id("delete"), image_id=image.image_id)
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config, store=store):
        await inbox.wait_for(live_status(SiteState.ONLINE))
        await hub.publish(topics.cmd("dcn0"), delete)
        failed = await inbox.wait_for(for_task(delete.task_id, FailedEvent))
    assert (failed.message.code, failed.message.retryable) == ("in_use", False)  # type: ignore[attr-defined]
    assert "COW clones" in failed.message.reason  # type: ignore[attr-defined]
    assert await store.exists(image.image_id)


async def test_a_stop_right_after_connecting_still_says_offline(
        tmp_path: Path, broker: LabBroker, hub_data: HubData) -> None:
    """The loops are cancelled mid-publish here; a cancellation that aiomqtt's
    wait_for swallows (Python 3.11) once kept the heartbeat going and the
    goodbye never came."""
    for attempt in range(5):
        config = load_agent(agent_config(tmp_path, broker, hub_data.url, name=f"agent-{attempt}"))
        async with hub_bus(broker, "dcn0") as (_hub, inbox):
            agent = Agent(config)
            await agent.start()
            task = asyncio.create_task(agent.run())
            await inbox.wait_for(live_status(SiteState.ONLINE))
            agent.stop()
            await asyncio.wait_for(task, WAIT_S)
            await inbox.wait_for(live_status(SiteState.OFFLINE))


async def test_refused_credentials_stop_the_agent_with_the_reason(
        tmp_path: Path, broker: LabBroker, hub_data: HubData) -> None:
    path = agent_config(tmp_path, broker, hub_data.url)
    (path.parent / "mqtt").write_text("not-the-password")
    agent = Agent(load_agent(path))
    await agent.start()
    with pytest.raises(BusError, match="refused the credentials of user 'site-dcn0'") as refused:
        await asyncio.wait_for(agent.run(), 5)
    assert not refused.value.retryable


async def test_the_hubs_refusal_of_its_zone_stops_the_agent_saying_why(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    async with hub_bus(broker, "dcn0") as (hub, inbox):
        agent = Agent(config)
        await agent.start()
        task = asyncio.create_task(agent.run())
        try:
            await inbox.wait_for(live_status(SiteState.ONLINE))
            # About a configuration this agent no longer has (queued while it was away): ignored.
            await hub.publish(topics.cmd("dcn0"), SiteRefused(site="dcn0", availability_zone="az-old",
                                                              reason="the old zone"))
            await hub.publish(topics.cmd("dcn0"), SiteRefused(site="dcn0", availability_zone="dcn0",
                                                              reason="dcn0 is not this site's zone"))
            with pytest.raises(AgentRefused, match="refused this agent: dcn0 is not this site's zone"):
                await asyncio.wait_for(task, 15)
        finally:
            agent.stop()
            await asyncio.gather(task, return_exceptions=True)
        await inbox.wait_for(live_status(SiteState.OFFLINE))


# --- liveness and the agent's own endpoints -----------------------------------------------


async def test_heartbeats_say_what_is_in_flight(broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data)
    hub_data.hold_after(1)
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config) as agent:
        await inbox.wait_for(live_status(SiteState.ONLINE))
        beat = await inbox.wait_for(lambda d: isinstance(d.message, Heartbeat))
        await hub.publish(topics.cmd("dcn0"), command)
        # A second copy of the image waits for the first: queued, not in flight.
        second = copy_command(image, hub_data)
        await hub.publish(topics.cmd("dcn0"), second)
        busy = await inbox.wait_for(lambda d: isinstance(d.message, Heartbeat)
                                    and command.task_id in d.message.in_flight
                                    and second.task_id in d.message.queued)
        assert second.task_id not in busy.message.in_flight  # type: ignore[attr-defined]
        assert (await health(agent))["in_flight"] == [command.task_id]
        hub_data.release()
        await inbox.wait_for(for_task(command.task_id, DoneEvent))
        await inbox.wait_for(lambda d: getattr(d.message, "task_id", None) == second.task_id
                             and isinstance(d.message, (DoneEvent, FailedEvent)))
    assert beat.message.site == "dcn0" and beat.message.free_bytes  # type: ignore[attr-defined]
    assert busy.message.ts >= beat.message.ts  # type: ignore[attr-defined]


async def scrape(agent: Agent) -> Scrape:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{agent.http_port}/metrics") as response:  # no token: Prometheus has none
        assert response.status == 200
        return Scrape.parse(await response.text())


async def metrics_say(agent: Agent, predicate: Callable[[Scrape], bool]) -> Scrape:
    async with asyncio.timeout(WAIT_S):
        while not predicate(page := await scrape(agent)):
            await asyncio.sleep(0.05)
    return page


async def test_the_agent_metrics_follow_its_copies(tmp_path: Path, broker: LabBroker, hub_data: HubData) -> None:
    config = load_agent(agent_config(tmp_path, broker, hub_data.url, extra="max_concurrent_copies = 1"))
    first = await publish_image(hub_data.store, LAYOUT, seed=1)
    second = await publish_image(hub_data.store, LAYOUT, seed=2)
    commands = [copy_command(first, hub_data), copy_command(second, hub_data)]
    hub_data.hold_after(1)
    async with hub_bus(broker, "dcn0") as (hub, inbox), running(config) as agent:
        await inbox.wait_for(live_status(SiteState.ONLINE))
        for command in commands:
            await hub.publish(topics.cmd("dcn0"), command)
        # One copy slot: the first copy is held mid-way, the second waits for the slot.
        # (A command just received is queued before it takes the slot: wait for both figures, not either.)
        busy = await metrics_say(agent, lambda m: (m.value("edgesync_tasks_queued", site="dcn0"),
                                                   m.value("edgesync_tasks_in_flight", site="dcn0")) == (1, 1))
        assert busy.value("edgesync_broker_connected", site="dcn0") == 1
        hub_data.release()
        for command in commands:
            await inbox.wait_for(for_task(command.task_id, DoneEvent))
        done = await scrape(agent)
    assert done.value("edgesync_tasks_in_flight", site="dcn0") == done.value("edgesync_tasks_queued", site="dcn0") == 0
    assert done.value("edgesync_replicated_bytes_total", site="dcn0") == first.data_bytes + second.data_bytes
    assert done.value("edgesync_transfer_bytes_total", site="dcn0") == hub_data.bytes_sent
    assert done.value("edgesync_store_free_bytes", store="dcn0")  # a file store: its filesystem's statvfs
    assert done.value("edgesync_api_requests_total", route="/metrics", method="GET", status="200")


async def test_the_agent_serves_its_published_copies_to_the_hub(
        broker: LabBroker, hub_data: HubData, config: AgentConfig) -> None:
    """An edge-created image goes to central through the agent's data endpoint."""
    store = edge_store(config)
    image = await publish_image(store, LAYOUT)
    central = hub_data.store
    async with running(config) as agent, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{agent.http_port}"
        assert (await health(agent))["site"] == "dcn0"
        source = HttpSource(session, url, image.image_id, token=TOKEN)
        async with await central.open_writer(image.image_id, image.size) as writer:
            digest = await pump(source, writer, size=image.size, with_md5=False)
            await writer.publish()
        assert digest.os_hash_value == image.sha512 and source.data_bytes_fetched == image.data_bytes
        assert source.bytes_fetched <= image.data_bytes  # compressed where worth it, never more
        with pytest.raises(TransferError) as refused:
            await HttpSource(session, url, image.image_id, token="not-the-token").size()
        assert refused.value.status == 401
        with pytest.raises(TransferError) as missing:
            await HttpSource(session, url, str(uuid.uuid4()), token=TOKEN).size()
        assert missing.value.status == 404
    assert await read_image(central, image.image_id) == image.data


# --- the process: CLI, retained status, last will -------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_killed_agent_process_is_marked_offline_by_its_will(
        tmp_path: Path, broker: LabBroker, hub_data: HubData) -> None:
    port = free_port()
    path = agent_config(tmp_path, broker, hub_data.url, site="dcn1", listen_port=port)
    async with hub_bus(broker, "dcn1") as (_hub, inbox):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgesync", "agent", "--config", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=REPO)
        try:
            online = await inbox.wait_for(live_status(SiteState.ONLINE), timeout_s=WAIT_S)
            await inbox.wait_for(lambda d: isinstance(d.message, Heartbeat))
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        offline = await inbox.wait_for(live_status(SiteState.OFFLINE))
    assert online.message.availability_zone == offline.message.availability_zone == "dcn1"  # type: ignore[attr-defined]
    # Whoever subscribes later (a restarted hub) learns it from the retained will.
    async with hub_bus(broker, "dcn1") as (_hub, inbox):
        retained = await inbox.wait_for(lambda d: isinstance(d.message, SiteStatus) and d.retained)
    assert retained.message == offline.message


async def test_sigterm_stops_the_agent_process_cleanly(
        tmp_path: Path, broker: LabBroker, hub_data: HubData) -> None:
    path = agent_config(tmp_path, broker, hub_data.url, site="dcn1", listen_port=free_port())
    async with hub_bus(broker, "dcn1") as (_hub, inbox):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgesync", "agent", "--config", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=REPO)
        try:
            await inbox.wait_for(live_status(SiteState.ONLINE), timeout_s=WAIT_S)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 10)
        offline = await inbox.wait_for(live_status(SiteState.OFFLINE))
    assert proc.returncode == 0, stderr.decode()
    assert offline.message.site == "dcn1"  # type: ignore[attr-defined]
