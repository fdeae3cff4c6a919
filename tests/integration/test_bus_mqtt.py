"""BusClient against the session's real Mosquitto (tests/fixtures/broker.py).

Mosquitto's ACL denials are silent, so permissions are checked by delivery:
a forbidden message is published (or subscribed to) first and a permitted
control message after it on the same connection; the broker handles one
connection's packets in order, so once the control message has arrived, the
forbidden one would have arrived before it. No test sleeps to "let things
settle"; every wait is bounded and ends on an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from edgesync.backoff import Backoff
from edgesync.bus import (
    BusClient,
    BusError,
    Channel,
    CopyCommand,
    DeleteCommand,
    Delivery,
    DoneEvent,
    Heartbeat,
    Message,
    ProgressEvent,
    SiteState,
    SiteStatus,
    run_forever,
    topics,
)
from edgesync.lab import mosquitto
from tests.fixtures.broker import WAIT_S, Inbox, LabBroker, unique_id

REPO = Path(__file__).resolve().parents[2]


def copy_command(n: int = 0) -> CopyCommand:
    image_id = str(uuid.uuid4())
    return CopyCommand(task_id=f"task-{n}-{image_id[:8]}", image_id=image_id, size_bytes=1 << 30,
                       os_hash_value="ab" * 64, source_url=f"http://hub/v2/images/{image_id}/file")


def ids(items: list[Message] | list[Delivery]) -> list[str]:
    return [i.message.message_id if isinstance(i, Delivery) else i.message_id for i in items]


# --- basics --------------------------------------------------------------------


async def test_a_command_published_by_the_hub_reaches_the_sites_agent(broker: LabBroker) -> None:
    command = copy_command()
    async with BusClient(broker.site("dcn0", unique_id("agent"))) as agent, Inbox(agent) as inbox:
        await agent.subscribe(topics.cmd("dcn0"))
        async with BusClient(broker.hub(unique_id("hub"))) as hub:
            await hub.publish(topics.cmd("dcn0"), command)
        delivery = await inbox.wait_for_id(command.message_id)
    assert delivery.message == command
    assert delivery.topic == topics.cmd("dcn0") and delivery.site == "dcn0"


async def test_an_event_from_any_site_reaches_the_hub(broker: LabBroker) -> None:
    events = {site: ProgressEvent(task_id=f"t-{site}", bytes_done=1, bytes_total=2) for site in ("dcn0", "dcn1")}
    async with BusClient(broker.hub(unique_id("hub"))) as hub, Inbox(hub) as inbox:
        await hub.subscribe(topics.every_site(Channel.EVENT))
        for site, event in events.items():
            async with BusClient(broker.site(site, unique_id(f"agent-{site}"))) as agent:
                await agent.publish(topics.event(site), event)
        for site, event in events.items():
            delivery = await inbox.wait_for_id(event.message_id)
            assert delivery.site == site and delivery.message == event


# --- persistent sessions -------------------------------------------------------


async def _subscribe_and_leave(bus: BusClient, topic: topics.SiteTopic) -> None:
    """Connect once to create the persistent session and its subscription, then go away."""
    async with bus:
        await bus.subscribe(topic)


async def _send_commands(broker: LabBroker, site: str, count: int) -> list[CopyCommand]:
    commands = [copy_command(n) for n in range(count)]
    async with BusClient(broker.hub(unique_id("hub"))) as hub:
        for command in commands:
            await hub.publish(topics.cmd(site), command)
    return commands


async def test_commands_sent_while_the_agent_was_away_arrive_when_it_returns(broker: LabBroker) -> None:
    agent = BusClient(broker.site("dcn0", unique_id("agent")))
    await _subscribe_and_leave(agent, topics.cmd("dcn0"))
    sent = await _send_commands(broker, "dcn0", 3)
    async with agent, Inbox(agent) as inbox:  # same client id: the session is resumed
        received = await inbox.wait_for_count(3)
    assert ids(received) == ids(sent)


async def test_queued_commands_survive_a_broker_restart(broker: LabBroker) -> None:
    agent = BusClient(broker.site("dcn1", unique_id("agent")))
    await _subscribe_and_leave(agent, topics.cmd("dcn1"))
    sent = await _send_commands(broker, "dcn1", 3)
    pid_before = broker.info.pid
    await broker.restart()
    assert broker.info.pid != pid_before
    async with agent, Inbox(agent) as inbox:
        received = await inbox.wait_for_count(3)
    assert ids(received) == ids(sent)


# --- retained status and last will ----------------------------------------------

# An agent stand-in in its own process, so the test can kill it with SIGKILL:
# the broker then sees the connection die without a DISCONNECT and publishes
# the will.
_AGENT_WITH_WILL = """
import asyncio, json, sys
from edgesync.bus import BusClient, BusSettings, LastWill, SiteState, SiteStatus, topics

async def main(cfg):
    site = cfg["site"]
    will = LastWill(topics.status(site),
                    SiteStatus(site=site, state=SiteState.OFFLINE, message_id=cfg["will_id"]))
    async with BusClient(BusSettings(**cfg["settings"]), will=will) as bus:
        online = SiteStatus(site=site, state=SiteState.ONLINE, message_id=cfg["online_id"])
        await bus.publish(topics.status(site), online, retain=True)
        print("online", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(json.loads(sys.argv[1])))
"""


async def _start_agent_with_will(broker: LabBroker, site: str, online_id: str, will_id: str
                                 ) -> asyncio.subprocess.Process:
    cfg = {"site": site, "online_id": online_id, "will_id": will_id,
           "settings": asdict(broker.site(site, unique_id("agent-will")))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _AGENT_WITH_WILL, json.dumps(cfg), cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if line.strip() != b"online":
        proc.kill()
        _, err = await proc.communicate()
        raise AssertionError(f"the agent stand-in failed: {err.decode(errors='replace')}")
    return proc


async def test_the_will_marks_a_killed_agent_offline_and_stays_retained(broker: LabBroker) -> None:
    online_id, will_id = uuid.uuid4().hex, uuid.uuid4().hex
    async with BusClient(broker.hub(unique_id("hub"))) as hub, Inbox(hub) as inbox:
        await hub.subscribe(topics.status("dcn1"))
        proc = await _start_agent_with_will(broker, "dcn1", online_id, will_id)
        try:
            online = await inbox.wait_for_id(online_id)
            assert isinstance(online.message, SiteStatus) and online.message.state is SiteState.ONLINE
            assert will_id not in inbox.message_ids()  # a live agent has no will published
        finally:
            proc.kill()  # SIGKILL: no DISCONNECT reaches the broker
            await proc.communicate()
        offline = await inbox.wait_for_id(will_id)
    assert isinstance(offline.message, SiteStatus) and offline.message.state is SiteState.OFFLINE
    # Whoever subscribes later (a restarted hub) learns the site is offline from the retained will.
    async with BusClient(broker.hub(unique_id("hub-later"))) as later, Inbox(later) as later_inbox:
        await later.subscribe(topics.status("dcn1"))
        retained = await later_inbox.wait_for(lambda d: d.retained)
    assert retained.message.message_id == will_id


# --- ACL -------------------------------------------------------------------------


async def test_a_site_cannot_publish_on_another_sites_topics(broker: LabBroker) -> None:
    forged = [
        (topics.event("dcn1"), DoneEvent(task_id="t-forged", image_id="i", location_url="rbd://x/images/i/snap")),
        (topics.status("dcn1"), SiteStatus(site="dcn1", state=SiteState.OFFLINE)),
        (topics.cmd("dcn1"), DeleteCommand(task_id="t-forged", image_id="i")),
        (topics.cmd("dcn0"), DeleteCommand(task_id="t-self", image_id="i")),  # nor command itself
    ]
    control = ProgressEvent(task_id="t-control", bytes_done=1, bytes_total=2)
    async with BusClient(broker.hub(unique_id("hub"))) as hub, Inbox(hub) as inbox:
        await hub.subscribe(topics.HUB_ACL_FILTER)  # sees everything the broker delivers
        async with BusClient(broker.site("dcn0", unique_id("agent"))) as dcn0:
            for topic, message in forged:
                with pytest.raises(BusError) as refused:
                    await dcn0.publish(topic, message)
                assert not refused.value.retryable
                assert "refused" in refused.value.message and str(topic) in refused.value.message
            await dcn0.publish(topics.event("dcn0"), control)  # still connected, still allowed
        await inbox.wait_for_id(control.message_id)
    assert inbox.message_ids().isdisjoint(m.message_id for _, m in forged)


async def test_a_site_cannot_read_another_sites_commands(broker: LabBroker) -> None:
    secret, control = copy_command(1), copy_command(2)
    async with BusClient(broker.site("dcn0", unique_id("agent"))) as dcn0, Inbox(dcn0) as snoop, \
            BusClient(broker.site("dcn1", unique_id("agent"))) as dcn1, Inbox(dcn1) as owner:
        # Mosquitto grants a forbidden subscription and then delivers nothing on it.
        await dcn0.subscribe(topics.cmd("dcn1"))
        await dcn0.subscribe(topics.every_site(Channel.CMD))
        await dcn0.subscribe(topics.cmd("dcn0"))
        await dcn1.subscribe(topics.cmd("dcn1"))
        async with BusClient(broker.hub(unique_id("hub"))) as hub:
            await hub.publish(topics.cmd("dcn1"), secret)
            await hub.publish(topics.cmd("dcn0"), control)
        await owner.wait_for_id(secret.message_id)  # the command exists and reached its site
        await snoop.wait_for_id(control.message_id)
    assert secret.message_id not in snoop.message_ids()


# --- errors ----------------------------------------------------------------------


async def test_a_bad_password_is_a_non_retryable_bus_error(broker: LabBroker) -> None:
    settings = replace(broker.site("dcn0", unique_id("agent")), password="not-the-password")
    with pytest.raises(BusError) as caught:
        async with BusClient(settings):
            pass
    assert caught.value.retryable is False
    assert "credentials" in caught.value.message and "site-dcn0" in caught.value.message


async def test_an_unreachable_broker_is_a_retryable_bus_error(broker: LabBroker) -> None:
    settings = replace(broker.hub(unique_id("hub")), port=_closed_port(), timeout_s=2.0)
    with pytest.raises(BusError) as caught:
        async with BusClient(settings):
            pass
    assert caught.value.retryable is True


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_undecodable_payloads_are_dropped_and_the_consumer_carries_on(broker: LabBroker) -> None:
    good = ProgressEvent(task_id="t-good", bytes_done=3, bytes_total=4)
    async with BusClient(broker.hub(unique_id("hub"))) as hub, Inbox(hub) as inbox:
        await hub.subscribe(topics.event("dcn0"))
        await _raw_publish(broker, "dcn0", topics.event("dcn0"), b"this is not json")
        async with BusClient(broker.site("dcn0", unique_id("agent"))) as dcn0:
            # A valid message claiming to be another site, on dcn0's own topic.
            await dcn0.publish(topics.event("dcn0"), Heartbeat(site="dcn1", ts=1.0))
            await dcn0.publish(topics.event("dcn0"), good)
        await inbox.wait_for_id(good.message_id)
    assert ids(inbox.deliveries) == [good.message_id]
    assert hub.invalid_messages == 2


async def _raw_publish(broker: LabBroker, site: str, topic: topics.SiteTopic, payload: bytes) -> None:
    """Publish bytes BusClient would never produce, with Mosquitto's own client."""
    user = mosquitto.site_user(site)
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", broker.info.host, "-p", str(broker.info.port), "-V", "mqttv5",
        "-u", user, "-P", broker.info.password(user), "-q", "1", "-t", str(topic), "-s",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(payload), timeout=WAIT_S)
    assert proc.returncode == 0, out.decode(errors="replace")


# --- reconnect loop ------------------------------------------------------------------


async def test_run_forever_reconnects_after_a_broker_restart(broker: LabBroker) -> None:
    connections = 0
    connected = asyncio.Event()

    async def work(bus: BusClient) -> Message:
        nonlocal connections
        connections += 1
        await bus.subscribe(topics.cmd("dcn0"))
        connected.set()
        async for delivery in bus.messages():
            return delivery.message
        raise AssertionError("messages() ended without an error")

    client = BusClient(broker.site("dcn0", unique_id("agent")))
    runner = asyncio.create_task(run_forever(client, work, backoff=Backoff(initial_s=0.05, max_s=0.5)))
    try:
        await asyncio.wait_for(connected.wait(), WAIT_S)
        connected.clear()
        await broker.restart()
        await asyncio.wait_for(connected.wait(), WAIT_S)
        assert connections == 2
        command = copy_command()
        async with BusClient(broker.hub(unique_id("hub"))) as hub:
            await hub.publish(topics.cmd("dcn0"), command)
        received = await asyncio.wait_for(runner, WAIT_S)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert received == command


async def test_run_forever_gives_up_at_once_on_bad_credentials(broker: LabBroker) -> None:
    async def never_sleep(delay_s: float) -> None:
        raise AssertionError(f"run_forever retried ({delay_s:.2f} s) a non-retryable error")

    async def work(bus: BusClient) -> None:
        raise AssertionError("connected with a bad password")

    client = BusClient(replace(broker.hub(unique_id("hub")), password="wrong"))
    with pytest.raises(BusError) as caught:
        await run_forever(client, work, sleep=never_sleep)
    assert caught.value.retryable is False
