"""The lab's broker lifecycle: idempotent up, users that follow the sites, restart and down by pid."""

from __future__ import annotations

from pathlib import Path

from edgesync.bus import BusClient, BusSettings, DeleteCommand, topics
from edgesync.lab import mosquitto
from tests.fixtures.broker import Inbox


def _settings(info: mosquitto.BrokerInfo, user: str, client_id: str) -> BusSettings:
    return BusSettings(info.host, info.port, user, info.password(user), client_id=client_id)


async def test_up_reuses_a_running_broker_and_down_stops_it(tmp_path: Path) -> None:
    first = await mosquitto.up(tmp_path, ["dcn0"])
    try:
        assert await mosquitto.up(tmp_path, ["dcn0"]) == first  # nothing restarted, nothing changed
        assert mosquitto.is_running(tmp_path)
        assert (tmp_path / "passwd").stat().st_mode & 0o077 == 0
        assert first.password("site-dcn0") not in (tmp_path / "passwd").read_text()  # hashed
    finally:
        await mosquitto.down(tmp_path)
    assert not mosquitto.is_running(tmp_path)
    assert mosquitto.load(tmp_path).pid is None
    await mosquitto.down(tmp_path)  # idempotent


async def test_a_new_site_gets_a_user_and_old_credentials_and_sessions_survive(tmp_path: Path) -> None:
    before = await mosquitto.up(tmp_path, ["dcn0"])
    try:
        agent = BusClient(_settings(before, "site-dcn0", "agent-dcn0"))
        async with agent:
            await agent.subscribe(topics.cmd("dcn0"))
        queued = DeleteCommand(task_id="t", image_id="i")
        async with BusClient(_settings(before, "hub", "hub")) as hub:
            await hub.publish(topics.cmd("dcn0"), queued)

        after = await mosquitto.up(tmp_path, ["dcn0", "dcn1"])  # restarts with the new user

        assert after.pid != before.pid and after.port == before.port
        assert after.users["site-dcn0"] == before.users["site-dcn0"]
        async with BusClient(_settings(after, "site-dcn1", "agent-dcn1")):
            pass  # the new site's user can log in
        async with agent, Inbox(agent) as inbox:  # persistence kept the queued command
            await inbox.wait_for_id(queued.message_id)
    finally:
        await mosquitto.down(tmp_path)


async def test_up_after_down_starts_it_again_on_the_same_port(tmp_path: Path) -> None:
    first = await mosquitto.up(tmp_path, ["dcn0"])
    await mosquitto.down(tmp_path)
    try:
        again = await mosquitto.up(tmp_path, ["dcn0"])
        assert again.port == first.port and again.users == first.users and again.pid != first.pid
        assert mosquitto.is_running(tmp_path)
    finally:
        await mosquitto.down(tmp_path)
