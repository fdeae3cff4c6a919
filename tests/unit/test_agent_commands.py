"""The hub's side of a command to an agent, without a broker: resending a
command the agent's heartbeats say it never got, and a restarted hub
re-attaching to the copies its agents were making (not failing them)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgesync.bus import (
    CopyCommand,
    DeleteCommand,
    DoneEvent,
    FailedEvent,
    Heartbeat,
    Message,
    ProgressEvent,
    SiteState,
    SiteStatus,
    VerifyCommand,
    topics,
)
from edgesync.catalog import Catalog
from edgesync.config import ImportConfig, SiteConfig, StoreConfig
from edgesync.errors import StoreError, StoreUnavailable
from edgesync.hub.bus_bridge import OutboxPublisher, outbox_row
from edgesync.hub.imports import Importer
from edgesync.hub.remote import RESEND_AFTER_BEATS, VERIFY_MAX_RESENDS, AgentCommands, SiteOffline
from edgesync.hub.sites import Site, SiteRegistry, Sites
from edgesync.hub.sites.agent import AgentSite
from edgesync.hub.sites.local import LocalSite
from edgesync.hub.staging import Staging
from edgesync.model import IMPORTING_TO_STORES, Image, ImageStatus, StoreJob, StoreJobState, Task, TaskStatus
from edgesync.stores import open_store
from edgesync.stores.base import Location

CHECK_EVERY_S = 0.01
WAIT_S = 10.0


def site(name: str, tmp: Path, role: str = "edge") -> SiteConfig:
    return SiteConfig(name, role, name, name, name, StoreConfig(type="file", path=tmp / name))


class RecordingBus:
    """Stands in for the broker connection: the publisher's rows are 'acked'."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def publish(self, topic: Any, message: Message, **kw: Any) -> None:
        self.sent.append(message)


@dataclass
class Hub:
    catalog: Catalog
    registry: SiteRegistry
    publisher: OutboxPublisher
    commands: AgentCommands
    bus: RecordingBus

    async def publish(self) -> list[Message]:
        before = len(self.bus.sent)
        await self.publisher.publish_once(self.bus)  # type: ignore[arg-type]
        return self.bus.sent[before:]

    def online(self, name: str) -> None:
        self.registry.on_status(name, SiteStatus(site=name, state=SiteState.ONLINE, availability_zone=name))

    def heartbeat(self, name: str, *in_flight: str) -> None:
        self.registry.on_heartbeat(name, Heartbeat(site=name, ts=time.time(), in_flight=in_flight))

    async def sent_for(self, task_id: str) -> list[dict[str, Any]]:
        return [r.payload for r in await self.catalog.outbox_for_task(task_id)]


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    catalog = await Catalog.open(tmp_path / "catalog.sqlite3")
    registry = SiteRegistry((site("central", tmp_path, "central"), site("dcn0", tmp_path), site("dcn1", tmp_path)),
                            stale_after_s=3600)
    publisher = OutboxPublisher(catalog)
    commands = AgentCommands(catalog, publisher, registry, offline_deadline_s=3600, check_every_s=CHECK_EVERY_S)
    yield Hub(catalog, registry, publisher, commands, RecordingBus())
    await catalog.close()


def command(image_id: str = "img") -> CopyCommand:
    return CopyCommand(task_id=str(uuid.uuid4()), image_id=image_id, size_bytes=1024,
                       os_hash_value="ab" * 64, source_url="http://hub.invalid")


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S:.0f} s for {what}"
        await asyncio.sleep(CHECK_EVERY_S)


async def beats_handled(hub: Hub, call: asyncio.Task[Any], count: int, *in_flight: str) -> None:
    """Send `count` heartbeats, each looked at by the waiting call before the next."""
    for _ in range(count):
        hub.heartbeat("dcn0", *in_flight)
        pending = hub.commands._pending[call.get_name()]
        await until(lambda: _seen(hub, pending), "the heartbeat to be looked at")  # noqa: B023 — awaited in this turn


async def _seen(hub: Hub, pending: Any) -> bool:
    return pending.heartbeats_seen == hub.registry.view(pending.site).heartbeats


# --- resending ---------------------------------------------------------------------


async def test_a_command_the_heartbeats_never_list_is_sent_again_and_the_answer_ends_the_wait(hub: Hub) -> None:
    cmd = command()
    hub.online("dcn0")
    call = asyncio.create_task(hub.commands.call("dcn0", cmd), name=cmd.task_id)
    await until(lambda: _has_rows(hub, cmd.task_id, 1), "the command in the outbox")
    # Heartbeats before the broker acked the command say nothing about it.
    await beats_handled(hub, call, RESEND_AFTER_BEATS)
    assert len(await hub.sent_for(cmd.task_id)) == 1
    assert [m.message_id for m in await hub.publish()] == [cmd.message_id]
    await beats_handled(hub, call, RESEND_AFTER_BEATS - 1)
    assert len(await hub.sent_for(cmd.task_id)) == 1  # not yet: one more
    await beats_handled(hub, call, 1)
    rows = await hub.sent_for(cmd.task_id)
    assert len(rows) == 2 and rows[1]["message_id"] != cmd.message_id  # a new message: the agent takes it
    assert {k: v for k, v in rows[1].items() if k != "message_id"} == \
        {k: v for k, v in rows[0].items() if k != "message_id"}
    await hub.publish()
    done = DoneEvent(task_id=cmd.task_id, image_id=cmd.image_id, location_url="file:///x")
    await hub.commands.on_event("dcn0", done)
    assert await asyncio.wait_for(call, WAIT_S) == done


async def test_a_command_the_agent_holds_is_not_sent_again(hub: Hub) -> None:
    cmd = command()
    hub.online("dcn0")
    call = asyncio.create_task(hub.commands.call("dcn0", cmd), name=cmd.task_id)
    await until(lambda: _has_rows(hub, cmd.task_id, 1), "the command in the outbox")
    await hub.publish()
    # Listed in flight, then queued, then only progress: the agent has it.
    await beats_handled(hub, call, 2 * RESEND_AFTER_BEATS, cmd.task_id)
    for _ in range(RESEND_AFTER_BEATS - 1):
        await beats_handled(hub, call, 1)
        await hub.commands.on_event("dcn0", ProgressEvent(task_id=cmd.task_id, bytes_done=1, bytes_total=2))
    assert len(await hub.sent_for(cmd.task_id)) == 1
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)


async def _has_rows(hub: Hub, task_id: str, count: int) -> bool:
    return len(await hub.sent_for(task_id)) >= count


async def test_a_resumed_call_waits_without_sending_and_takes_an_answer_that_came_first(hub: Hub) -> None:
    cmd = command()
    await hub.catalog.outbox_add(*outbox_row(topics.cmd("dcn0"), cmd))
    await hub.publish()
    done = DoneEvent(task_id=cmd.task_id, image_id=cmd.image_id, location_url="file:///x")
    await hub.commands.on_event("dcn0", done)  # before anyone waits: kept
    assert await asyncio.wait_for(hub.commands.call("dcn0", cmd, resume=True), WAIT_S) == done
    assert len(await hub.sent_for(cmd.task_id)) == 1


# --- recovery: re-attaching ------------------------------------------------------------


async def test_recovery_reattaches_agent_copies_and_finalizes_on_their_answers(hub: Hub, tmp_path: Path) -> None:
    image = await hub.catalog.insert_image(Image(
        id=str(uuid.uuid4()), owner="p1", status=ImageStatus.ACTIVE, disk_format="raw",
        container_format="bare", size=1024, os_hash_algo="sha512", os_hash_value="ab" * 64))
    await hub.catalog.add_location(image.id, Location("central", "file:///central/x"))
    # What a hub killed mid-copy left: both jobs running, the command to dcn0
    # published, the one to dcn1 never written (it died before).
    task = Task(id=str(uuid.uuid4()), image_id=image.id, owner="p1", method="copy-image",
                stores=["dcn0", "dcn1"], all_stores_must_succeed=True, status=TaskStatus.PROCESSING)
    task.jobs = [StoreJob(task.id, s, state=StoreJobState.RUNNING) for s in task.stores]
    dcn0_cmd = CopyCommand(task_id=f"{task.id}-dcn0", image_id=image.id, size_bytes=1024,
                           os_hash_value="ab" * 64, source_url="http://hub")
    await hub.catalog.start_task(task, lock_ttl_s=600, image_properties={IMPORTING_TO_STORES: "dcn0,dcn1"},
                                 commands=[outbox_row(topics.cmd("dcn0"), dcn0_cmd)])
    await hub.publish()

    importer = make_importer(hub, tmp_path)
    await importer.recover()
    after = await hub.catalog.get_task(task.id)
    assert after is not None and after.status == TaskStatus.PROCESSING
    assert {j.store: j.state for j in after.jobs} == {"dcn0": StoreJobState.RUNNING, "dcn1": StoreJobState.RUNNING}
    assert await hub.catalog.lock_holder(image.id) == task.id
    await until(lambda: _has_rows(hub, f"{task.id}-dcn1", 1), "the never-sent command to be sent")
    assert [m.task_id for m in await hub.publish()] == [f"{task.id}-dcn1"]  # type: ignore[attr-defined]
    assert len(await hub.sent_for(f"{task.id}-dcn0")) == 1  # not sent again
    for name in ("dcn0", "dcn1"):
        await hub.commands.on_event(name, DoneEvent(task_id=f"{task.id}-{name}", image_id=image.id,
                                                    location_url=f"file://{tmp_path / name / image.id}"))
    await asyncio.wait_for(importer.wait_idle(), WAIT_S)
    final = await hub.catalog.get_task(task.id)
    assert final is not None and final.status == TaskStatus.SUCCESS, final
    shown = await hub.catalog.require_image(image.id)
    assert sorted(shown.stores) == ["central", "dcn0", "dcn1"]
    assert shown.properties[IMPORTING_TO_STORES] == ""
    assert await hub.catalog.lock_holder(image.id) is None


def make_importer(hub: Hub, tmp_path: Path) -> Importer:
    central = site("central", tmp_path, "central")
    (tmp_path / "central").mkdir(exist_ok=True)
    central_site = LocalSite(open_store(central))
    sites: list[Site] = [central_site]
    for name in ("dcn0", "dcn1"):
        sites.append(AgentSite(site(name, tmp_path), hub.commands, hub_url="http://hub",
                               agent_url=None, agent_token=None))
    return Importer(catalog=hub.catalog, sites=Sites(sites, central_site), staging=Staging(tmp_path / "staging"),
                    config=ImportConfig())


async def test_a_reattached_copy_that_fails_rolls_back_the_other_edge_as_on_the_normal_path(
        hub: Hub, tmp_path: Path) -> None:
    image = await hub.catalog.insert_image(Image(
        id=str(uuid.uuid4()), owner="p1", status=ImageStatus.ACTIVE, disk_format="raw",
        container_format="bare", size=1024, os_hash_algo="sha512", os_hash_value="ab" * 64))
    await hub.catalog.add_location(image.id, Location("central", "file:///central/x"))
    # dcn0 finished and was recorded before the kill; dcn1 was still copying.
    task = Task(id=str(uuid.uuid4()), image_id=image.id, owner="p1", method="copy-image",
                stores=["dcn0", "dcn1"], all_stores_must_succeed=True, status=TaskStatus.PROCESSING)
    task.jobs = [StoreJob(task.id, "dcn0", state=StoreJobState.DONE),
                 StoreJob(task.id, "dcn1", state=StoreJobState.RUNNING)]
    dcn1_cmd = CopyCommand(task_id=f"{task.id}-dcn1", image_id=image.id, size_bytes=1024,
                           os_hash_value="ab" * 64, source_url="http://hub")
    await hub.catalog.start_task(task, lock_ttl_s=600, commands=[outbox_row(topics.cmd("dcn1"), dcn1_cmd)])
    await hub.catalog.add_location(image.id, Location("dcn0", "file:///dcn0/x"))
    await hub.publish()

    importer = make_importer(hub, tmp_path)
    await importer.recover()
    await hub.commands.on_event("dcn1", FailedEvent(task_id=dcn1_cmd.task_id, reason="store full",
                                                    retryable=False))

    async def delete_sent() -> bool:
        return any(isinstance(m, DeleteCommand) for m in await hub.publish())

    await until(delete_sent, "the rollback's delete to dcn0")
    delete = next(m for m in hub.bus.sent if isinstance(m, DeleteCommand))
    assert delete.image_id == image.id
    await hub.commands.on_event("dcn0", DoneEvent(task_id=delete.task_id, image_id=image.id))
    await asyncio.wait_for(importer.wait_idle(), WAIT_S)
    final = await hub.catalog.get_task(task.id)
    assert final is not None and final.status == TaskStatus.FAILURE
    assert {j.store: j.state for j in final.jobs} == {"dcn0": StoreJobState.ROLLED_BACK,
                                                       "dcn1": StoreJobState.FAILED}
    assert (await hub.catalog.require_image(image.id)).stores == ["central"]


# --- verify: a copy made at the site, checked there --------------------------------------


async def test_a_verify_listed_in_flight_is_not_sent_again_and_its_done_carries_the_digest(hub: Hub) -> None:
    hub.online("dcn0")
    task_id = str(uuid.uuid4())
    call = asyncio.create_task(hub.commands.verify("dcn0", "img", task_id), name=task_id)
    await until(lambda: _has_rows(hub, task_id, 1), "the verify in the outbox")
    [sent] = await hub.publish()
    assert isinstance(sent, VerifyCommand) and sent.image_id == "img"
    await beats_handled(hub, call, 2 * RESEND_AFTER_BEATS, task_id)  # hashing a big image takes a while
    assert len(await hub.sent_for(task_id)) == 1
    done = DoneEvent(task_id=task_id, image_id="img", location_url="file:///x", size_bytes=7,
                     checksum="cd" * 16, os_hash_value="ab" * 64)
    await hub.commands.on_event("dcn0", done)
    assert await asyncio.wait_for(call, WAIT_S) == done


async def test_a_verify_is_not_asked_of_a_site_that_is_down_nor_waited_for_once_it_goes(hub: Hub) -> None:
    with pytest.raises(SiteOffline, match="offline"):
        await hub.commands.verify("dcn0", "img", str(uuid.uuid4()))
    hub.online("dcn0")
    task_id = str(uuid.uuid4())
    call = asyncio.create_task(hub.commands.verify("dcn0", "img", task_id), name=task_id)
    await until(lambda: _has_rows(hub, task_id, 1), "the verify in the outbox")
    hub.registry.on_status("dcn0", SiteStatus(site="dcn0", state=SiteState.OFFLINE))
    with pytest.raises(SiteOffline, match="went offline"):
        await asyncio.wait_for(call, WAIT_S)


def _rbd_site(name: str) -> SiteConfig:
    return SiteConfig(name, "edge", name, name, name, StoreConfig(type="rbd", pool="images", user="dcn0"))


async def test_an_agent_sites_fsid_is_what_its_agent_announced_when_the_hub_has_no_ceph_conf(hub: Hub) -> None:
    agent_site = AgentSite(_rbd_site("dcn0"), hub.commands, hub_url="http://hub.invalid", agent_url=None,
                           agent_token=None)
    assert agent_site.store_properties().get("fsid") is None
    fsid = str(uuid.uuid4())
    hub.registry.on_status("dcn0", SiteStatus(site="dcn0", state=SiteState.ONLINE, availability_zone="dcn0",
                                              store_fsid=fsid))
    assert agent_site.store_properties()["fsid"] == fsid and agent_site.store_properties()["pool"] == "images"


@pytest.mark.parametrize("answer, fragment", [
    ({"location_url": "rbd://%s/images/img/snap"}, "lacks its digest"),
    ({"location_url": "rbd://%s/volumes/img/snap", "size_bytes": 1, "checksum": "c", "os_hash_value": "h"},
     "outside its store"),
])
async def test_an_agents_verify_answer_must_be_complete_and_in_its_store(
        hub: Hub, answer: dict[str, Any], fragment: str) -> None:
    agent_site = AgentSite(_rbd_site("dcn0"), hub.commands, hub_url="http://hub.invalid", agent_url=None,
                           agent_token=None)
    hub.online("dcn0")
    fsid = str(uuid.uuid4())
    answer = {**answer, "location_url": answer["location_url"] % fsid}
    check = asyncio.create_task(agent_site.verify("img", job_id="job-1"))
    await until(lambda: _has_rows(hub, "job-1", 1), "the verify in the outbox")
    await hub.commands.on_event("dcn0", DoneEvent(task_id="job-1", image_id="img", **answer))
    with pytest.raises(StoreError, match=fragment):
        await asyncio.wait_for(check, WAIT_S)


async def test_a_verify_an_older_agent_never_takes_is_given_up_on_after_a_few_resends(hub: Hub) -> None:
    hub.online("dcn0")
    task_id = str(uuid.uuid4())
    call = asyncio.create_task(hub.commands.verify("dcn0", "img", task_id), name=task_id)
    await until(lambda: _has_rows(hub, task_id, 1), "the verify in the outbox")
    resends = 0
    while not call.done():  # every send acked, every heartbeat without the task
        await hub.publish()
        hub.heartbeat("dcn0")
        await asyncio.sleep(CHECK_EVERY_S * 3)
        resends = len(await hub.sent_for(task_id)) - 1
        assert resends <= VERIFY_MAX_RESENDS + 1
    with pytest.raises(StoreUnavailable, match="older than this hub"):
        await call
    assert resends == VERIFY_MAX_RESENDS + 1
