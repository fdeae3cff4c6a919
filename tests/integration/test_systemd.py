"""The daemons as systemd runs them: subprocesses given a `NOTIFY_SOCKET` the
test binds (an abstract unix datagram socket, as systemd's can be) and a
`WATCHDOG_USEC`, logging JSON lines, stopped with SIGTERM.

The stop bound asserted is the units' TimeoutStopSec (after which systemd
kills): generous on a busy machine, and the contract that matters.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edgesync.agent.config import load_agent
from edgesync.agent.journal import Journal, TaskState
from edgesync.bus import DoneEvent, ProgressEvent, SiteState, SiteStatus, topics
from tests.fixtures.broker import LabBroker
from tests.fixtures.sparse_images import publish_image
from tests.integration.test_agent import (  # noqa: F401  (hub_data is a fixture)
    LAYOUT,
    HubData,
    agent_config,
    copy_command,
    for_task,
    free_port,
    hub_bus,
    hub_data,
    live_status,
)

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
WATCHDOG_USEC = 200_000  # pings every 0.1 s
WAIT_S = 20.0


def stop_timeout_s(unit: str) -> float:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((UNITS / unit).read_text())
    return float(parser["Service"]["TimeoutStopSec"].rstrip("s"))


class NotifySocket:
    """systemd's end: a bound abstract datagram socket, messages collected as they come."""

    def __init__(self) -> None:
        self.name = f"@edgesync-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))
            self._arrived.set()

    def count(self, key: str) -> int:
        return sum(1 for _, m in self.messages if key in m)

    async def wait_for(self, key: str, count: int = 1, timeout_s: float = WAIT_S) -> dict[str, str]:
        async with asyncio.timeout(timeout_s):
            while self.count(key) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return [m for _, m in self.messages if key in m][count - 1]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close()


@pytest.fixture
async def notify() -> AsyncIterator[NotifySocket]:
    listener = NotifySocket()
    try:
        yield listener
    finally:
        await listener.close()


class Daemon:
    """`edgesync hub|agent … --log-format json` as a subprocess, its stderr kept."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(cls, args: list[str], notify: NotifySocket, log_path: Path) -> Daemon:
        env = {**os.environ, "NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgesync", *args, "--log-format", "json",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=REPO)
        return cls(proc, log_path)

    async def stop(self, timeout_s: float) -> float:
        """SIGTERM; the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), timeout_s)
        return time.monotonic() - started

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def log_lines(self) -> list[dict]:  # type: ignore[type-arg]
        """Every line must be one JSON object."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


async def get_status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status


# --- the hub -------------------------------------------------------------------------


def hub_files(base: Path, port: int) -> Path:
    (base / "sites").mkdir(parents=True)
    (base / "sites" / "central.toml").write_text(
        'name = "central"\nrole = "central"\navailability_zone = "central"\n'
        f'[store]\ntype = "file"\npath = "{base / "central"}"\n')
    hub_toml = base / "hub.toml"
    hub_toml.write_text(f'[hub]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{base / "state"}"\n'
                        f'sites_dir = "{base / "sites"}"\nauth = "noauth"\ntls = {{ plaintext = true }}\n')
    return hub_toml


async def slow_body(first: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await release.wait()  # the rest never comes while the hub stops


async def test_the_hub_is_ready_once_it_serves_pings_and_stops_cleanly_mid_upload(
        tmp_path: Path, notify: NotifySocket) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["hub", "--config", str(hub_files(tmp_path, port))]
    hub = await Daemon.start(args, notify, tmp_path / "hub.log")
    release = asyncio.Event()
    try:
        ready = await notify.wait_for("READY")
        assert await get_status(f"{url}/") == 300  # at READY it answers, no retry needed
        assert ready["STATUS"] == f"hub: serving on 127.0.0.1:{port}"
        await notify.wait_for("WATCHDOG", count=3)

        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v2/images", json={
                    "name": "cut-off", "disk_format": "raw", "container_format": "bare"}) as created:
                image_id = (await created.json())["id"]
            upload = asyncio.create_task(session.put(
                f"{url}/v2/images/{image_id}/file", data=slow_body(b"x" * 65536, release),
                headers={"Content-Type": "application/octet-stream"}))
            async with asyncio.timeout(WAIT_S):  # the upload has begun: the image is saving
                while (await (await session.get(f"{url}/v2/images/{image_id}")).json())["status"] != "saving":
                    await asyncio.sleep(0.05)
            took_s = await hub.stop(stop_timeout_s("edgesync-hub.service"))
            release.set()
            await asyncio.gather(upload, return_exceptions=True)
        assert hub.proc.returncode == 0, hub.log_path.read_text()[-3000:]
        stopping = await notify.wait_for("STOPPING")
        assert stopping["STATUS"] == "hub: stopping (SIGTERM)"
        assert notify.messages[-1][1].keys() <= {"STATUS", "WATCHDOG"}  # nothing claims readiness after

        # Restarted: the cut-off upload left the image queued, nothing half-written.
        hub = await Daemon.start(args, notify, tmp_path / "hub.log")
        await notify.wait_for("READY", count=2)
        async with aiohttp.ClientSession() as session:
            image = await (await session.get(f"{url}/v2/images/{image_id}")).json()
            tasks = await (await session.get(f"{url}/v2/images/{image_id}/tasks")).json()
        assert image["status"] == "queued" and image["size"] is None, image
        assert [t["status"] for t in tasks["tasks"]] == ["failure"], tasks
        await hub.stop(stop_timeout_s("edgesync-hub.service"))
    finally:
        release.set()
        await hub.kill()
    lines = hub.log_lines()
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert any(line.get("image_id") == image_id for line in lines)
    print(f"hub stopped mid-upload in {took_s:.2f} s")


# --- the agent -------------------------------------------------------------------------


async def test_the_agent_is_ready_once_it_serves_and_a_stop_mid_copy_checkpoints_and_says_offline(
        tmp_path: Path, notify: NotifySocket, broker: LabBroker,
        hub_data: HubData) -> None:  # noqa: F811 — the fixture imported above
    port = free_port()
    path = agent_config(tmp_path, broker, hub_data.url, site="dcn1", listen_port=port,
                        extra="shutdown_grace_s = 1")
    config = load_agent(path)
    image = await publish_image(hub_data.store, LAYOUT)
    command = copy_command(image, hub_data)
    hub_data.hold_after(3)  # three chunks, then the link "stalls"
    args = ["agent", "--config", str(path)]
    bound_s = stop_timeout_s("edgesync-agent@.service")
    async with hub_bus(broker, "dcn1") as (hub, inbox):
        agent = await Daemon.start(args, notify, tmp_path / "agent.log")
        try:
            await notify.wait_for("READY")
            assert await get_status(f"http://127.0.0.1:{port}/healthz") == 200
            await notify.wait_for("WATCHDOG", count=3)
            await inbox.wait_for(live_status(SiteState.ONLINE), timeout_s=WAIT_S)
            await hub.publish(topics.cmd("dcn1"), command)
            await inbox.wait_for(for_task(command.task_id, ProgressEvent), timeout_s=WAIT_S)
            await hub_data.holding.wait()
            took_s = await agent.stop(bound_s)
        finally:
            await agent.kill()
        assert agent.proc.returncode == 0, agent.log_path.read_text()[-3000:]
        assert (await notify.wait_for("STOPPING"))["STATUS"] == "agent of site dcn1: stopping (SIGTERM)"
        await inbox.wait_for(live_status(SiteState.OFFLINE))
    # Anyone subscribing now (a restarted hub) reads the retained offline status.
    async with hub_bus(broker, "dcn1") as (hub, inbox):
        retained = await inbox.wait_for(lambda d: isinstance(d.message, SiteStatus) and d.retained)
        assert retained.message.state is SiteState.OFFLINE  # type: ignore[attr-defined]

    first_run = hub_data.bytes_served
    journal = await Journal.open(config.journal_path)
    try:
        record = await journal.get(command.task_id)
        assert record is not None and record.state is TaskState.RUNNING  # the next start resumes it
        journaled = sum(e.length for e in await journal.done_ranges(command.task_id))
    finally:
        await journal.close()
    assert 0 < journaled <= first_run < image.data_bytes

    hub_data.release()
    async with hub_bus(broker, "dcn1") as (hub, inbox):
        agent = await Daemon.start(args, notify, tmp_path / "agent.log")
        try:
            await inbox.wait_for(for_task(command.task_id, DoneEvent), timeout_s=WAIT_S)
            await agent.stop(bound_s)
        finally:
            await agent.kill()
    assert hub_data.bytes_served - first_run == image.data_bytes - journaled  # only what it lacked

    task_lines = [line for line in agent.log_lines() if line.get("task_id") == command.task_id]
    assert task_lines and all(line["image_id"] == image.image_id and line["site"] == "dcn1" for line in task_lines)
    print(f"agent stopped mid-copy in {took_s:.2f} s")
