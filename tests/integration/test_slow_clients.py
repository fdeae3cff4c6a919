"""Slow and oversized clients against the real servers, over real sockets:
a hub started from its config (as `edgesync hub` starts it) and an agent's
data endpoint. Headers that trickle in, a body that stops, an idle
kept-alive connection: each cut off after its configured bound; a body
declared larger than it may be: answered before the client sends it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgesync.agent.config import load_agent
from edgesync.config import load_hub
from edgesync.hub.app import Hub
from tests.fixtures.broker import LabBroker
from tests.integration.test_agent import agent_config, running
from tests.integration.test_https import HOST, free_port

HEADER_S, BODY_S, IDLE_S = 1.0, 1.0, 2.5
MAX_IMAGE = 4 << 20
TIMEOUTS = f"header_timeout_s = {HEADER_S}\nbody_timeout_s = {BODY_S}\nidle_timeout_s = {IDLE_S}\n"


@dataclass
class RunningHub:
    hub: Hub
    port: int

    async def create_image(self) -> str:
        reply = await exchange(self.port, request("POST", "/v2/images", body=b'{"disk_format": "raw", '
                                                  b'"container_format": "bare"}'))
        assert reply.startswith(b"HTTP/1.1 201"), reply[:200]
        return str(json.loads(reply.split(b"\r\n\r\n", 1)[1])["id"])


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    port = free_port()
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "central.toml").write_text(
        'name = "central"\nrole = "central"\n[store]\ntype = "file"\n'
        f'path = "{tmp_path / "central"}"\n')
    (tmp_path / "hub.toml").write_text(
        f'[hub]\nlisten = "{HOST}:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'sites_dir = "{tmp_path / "sites"}"\nauth = "noauth"\n'
        f'[hub.tls]\nplaintext = true\n[hub.http]\n{TIMEOUTS}'
        f'[import]\nmax_image_size_bytes = {MAX_IMAGE}\n')
    running_hub = Hub(load_hub(tmp_path / "hub.toml"))
    await running_hub.start()
    try:
        yield RunningHub(running_hub, port)
    finally:
        await running_hub.close()


# --- raw HTTP over a socket ---------------------------------------------------------------


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    if "Content_Length" not in headers and "Transfer_Encoding" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port)


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await connect(port)
    writer.write(raw)
    reply = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return reply


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """What the server sent before it closed the connection, and when it closed."""
    started, got = time.monotonic(), b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            got += chunk
    return got, time.monotonic() - started


async def trickle(writer: asyncio.StreamWriter, pieces: list[bytes], pause_s: float) -> int:
    """Send `pieces` `pause_s` apart until the server cuts the connection; how many went."""
    sent = 0
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            sent += 1
            await asyncio.sleep(pause_s)
    except ConnectionError:
        pass
    return sent


# --- read timeouts ---------------------------------------------------------------------------


async def test_headers_that_trickle_in_are_cut_off_after_the_header_timeout(hub: RunningHub) -> None:
    reader, writer = await connect(hub.port)
    # A complete request line, then a header byte every 0.2 s: never done.
    pieces = [f"GET /v2/images HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode(), *([b"a"] * 100)]
    sender = asyncio.create_task(trickle(writer, pieces, 0.2))
    got, after = await closed_within(reader, 3 * HEADER_S)
    assert got == b"" and after < HEADER_S + 1.0  # closed unanswered: nothing was asked yet
    assert await sender < len(pieces)
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(hub: RunningHub) -> None:
    reader, writer = await connect(hub.port)
    got, after = await closed_within(reader, 3 * HEADER_S)
    assert got == b"" and HEADER_S - 0.2 < after < HEADER_S + 1.0
    writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(hub: RunningHub) -> None:
    reader, writer = await connect(hub.port)
    writer.write(request("GET", "/v2/images"))
    first = await asyncio.wait_for(reader.read(65536), 5)
    assert first.startswith(b"HTTP/1.1 200")
    # Kept alive past the header timeout (no request is arriving), closed at the idle one.
    got, after = await closed_within(reader, 3 * IDLE_S)
    assert got == b"" and IDLE_S - 0.3 < after < IDLE_S + 1.0
    writer.close()


async def test_a_body_that_stops_is_a_408_and_the_stage_is_undone(hub: RunningHub) -> None:
    image_id = await hub.create_image()
    reader, writer = await connect(hub.port)
    writer.write(request("PUT", f"/v2/images/{image_id}/stage", Content_Length=str(1 << 20),
                         Content_Type="application/octet-stream") + b"x" * 4096)
    got, after = await closed_within(reader, 4 * BODY_S)
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert "no request body bytes arrived" in json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert BODY_S - 0.2 < after < BODY_S + 1.5
    writer.close()
    image = await hub.hub.catalog.require_image(image_id)
    assert image.status.value == "queued" and not hub.hub.images.staging.staged_ids()


async def test_a_slow_but_steady_body_is_read_whole(hub: RunningHub) -> None:
    """The bound is on each wait for bytes, not on the whole body."""
    image_id = await hub.create_image()
    reader, writer = await connect(hub.port)
    piece = b"y" * 4096
    writer.write(request("PUT", f"/v2/images/{image_id}/stage", Content_Length=str(6 * len(piece))))
    sent = await trickle(writer, [piece] * 6, BODY_S / 2)  # 3 body timeouts in all
    assert sent == 6
    reply = await asyncio.wait_for(reader.read(65536), 5)
    assert reply.startswith(b"HTTP/1.1 204"), reply[:300]
    writer.close()


async def test_an_agents_data_endpoint_cuts_off_trickling_headers(tmp_path: Path, broker: LabBroker) -> None:
    config = load_agent(agent_config(tmp_path, broker, "http://127.0.0.1:9",
                                     extra=f"http = {{ header_timeout_s = {HEADER_S} }}"))
    assert config.read_timeouts.header_s == HEADER_S
    async with running(config) as agent:
        reader, writer = await connect(agent.http_port)
        pieces = [b"GET /healthz HTTP/1.1\r\nX-Slow: ", *([b"b"] * 100)]
        sender = asyncio.create_task(trickle(writer, pieces, 0.2))
        got, after = await closed_within(reader, 3 * HEADER_S)
        assert got == b"" and after < HEADER_S + 1.0
        assert await sender < len(pieces)
        writer.close()


# --- bodies declared too large ------------------------------------------------------------------


async def test_a_content_length_over_the_size_limit_is_refused_before_the_body(hub: RunningHub) -> None:
    image_id = await hub.create_image()
    reader, writer = await connect(hub.port)
    writer.write(request("PUT", f"/v2/images/{image_id}/stage", Content_Length=str(64 << 30)))
    reply = await asyncio.wait_for(reader.read(65536), 5)  # not one body byte sent
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"max_image_size_bytes" in reply
    writer.close()


async def test_a_content_length_over_the_declared_image_size_is_refused_before_the_body(
        hub: RunningHub) -> None:
    image_id = await hub.create_image()
    reader, writer = await connect(hub.port)
    writer.write(request("PUT", f"/v2/images/{image_id}/stage", Content_Length=str(2 << 20),
                         x_openstack_image_size=str(1 << 20)))
    reply = await asyncio.wait_for(reader.read(65536), 5)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"x-openstack-image-size" in reply
    writer.close()


def send_until_answered(port: int, head: bytes, body_bytes: int) -> tuple[bytes, int]:
    """Send `head` then up to `body_bytes` of a chunked body, reading as we go
    (as curl does); the answer and how much of the body had gone when it came."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        chunk = b"%x\r\n" % (1 << 16) + b"z" * (1 << 16) + b"\r\n"
        sent, pending, answer, deadline = 0, memoryview(b""), b"", time.monotonic() + 20
        while time.monotonic() < deadline and not answer.endswith(b"}"):
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer or sent >= body_bytes:
                time.sleep(0.01)
                continue
            if not pending:
                pending = memoryview(chunk)
            try:
                n = sock.send(pending)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except ConnectionError:
                break
            pending, sent = pending[n:], sent + n
        return answer, sent


async def test_a_chunked_body_past_the_limit_is_answered_while_the_client_still_sends(
        hub: RunningHub) -> None:
    image_id = await hub.create_image()
    head = request("PUT", f"/v2/images/{image_id}/stage", Transfer_Encoding="chunked")
    answer, sent = await asyncio.to_thread(send_until_answered, hub.port, head, 64 * MAX_IMAGE)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 8 * MAX_IMAGE  # the answer came near the limit, not after the whole 256 MiB
    assert not hub.hub.images.staging.staged_ids()


async def test_a_json_body_declared_over_its_limit_is_refused_before_the_body(hub: RunningHub) -> None:
    reader, writer = await connect(hub.port)
    writer.write(request("POST", "/v2/images", Content_Length=str(2 << 20), Content_Type="application/json"))
    reply = await asyncio.wait_for(reader.read(65536), 5)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    writer.close()
