"""In-process API fixtures: a real `Hub` (three file stores, SQLite catalog,
qemu-img) behind aiohttp's test server, driven by aiohttp's test client.

* `hub_dir`: a tmp directory with `sites/{central,dcn0,dcn1}.toml`,
  `tokens.toml` and `hub.toml`, in the formats `edgesync.config` reads.
* `api`: the running hub plus one client per caller (`api.admin`, `api.p1`
  — a member of project p1 —, `api.p2`, `api.anon`) and helpers to create,
  stage, import and wait for tasks.
* `source`: a small HTTP server on 127.0.0.1 that the hub's URI filter
  allows (http, host 127.0.0.1, that port only), serving what a test puts in
  `source.files`, with `/redirect?to=URL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgesync.config import load_hub
from edgesync.hub.app import Hub

MiB = 1 << 20
KiB = 1 << 10
STORES = ("central", "dcn0", "dcn1")
TOKENS = {
    "admin": ("tok-admin", "admin", "admin", ["admin"]),
    "p1": ("tok-p1", "alice", "p1", ["member"]),
    "p2": ("tok-p2", "bob", "p2", ["member"]),
    # dcn0's agent: known by its token (dcn0's site file names it), not its name
    "agent0": ("tok-agent-dcn0", "agent-dcn0", "edgesync-agents", ["agent"]),
    "agent1": ("tok-agent-dcn1", "agent-dcn1", "edgesync-agents", ["agent"]),
    # a member whose user merely has an agent's name
    "impostor": ("tok-impostor", "agent-dcn0", "p1", ["member"]),
    # Nova acting for a member of p1: the user's roles plus the service token's
    "nova": ("tok-nova-p1", "alice", "p1", ["member", "service"]),
    # project p1's read-only persona, and a service user (Nova, Cinder) whose
    # token goes in X-Service-Token beside a user's
    "reader": ("tok-reader", "rita", "p1", ["reader"]),
    "service": ("tok-service", "nova", "service", ["service"]),
    # Cinder's own service user, as its get_location calls (project "service")
    "cinder": ("tok-cinder", "cinder", "service", ["service"]),
}
AGENT_TOKENS = {"dcn0": "agent0", "dcn1": "agent1"}
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


# --- data -------------------------------------------------------------------------


def sparse_bytes(size: int, runs: Iterable[tuple[int, int]], seed: int = 0) -> bytes:
    """`size` bytes, zero except (offset, length) runs of pseudo-random data."""
    content = bytearray(size)
    for i, (offset, length) in enumerate(runs):
        content[offset:offset + length] = hashlib.shake_256(f"{seed}-{i}".encode()).digest(length)
    return bytes(content)


def default_image(seed: int = 0) -> bytes:
    """8 MiB, 1 MiB + 192 KiB of data in three 64 KiB-aligned runs, a trailing hole."""
    return sparse_bytes(8 * MiB, [(0, 512 * KiB), (3 * MiB, 640 * KiB), (6 * MiB + 64 * KiB, 64 * KiB)], seed)


def data_bytes(content: bytes) -> int:
    """Bytes of `content` in non-zero 64 KiB blocks (what a sparse store must allocate)."""
    block = 64 * KiB
    zero = bytes(block)
    return sum(min(block, len(content) - i) for i in range(0, len(content), block)
               if content[i:i + block] != zero[:min(block, len(content) - i)])


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def qcow2_of(raw: bytes, tmp: Path, *, backing: bool = False) -> bytes:
    """The bytes of a qcow2 holding `raw`; with `backing`, an overlay that
    references a backing file on this host (must be refused)."""
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "src.raw"
    src.write_bytes(raw)
    base = tmp / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", src, base)
    if not backing:
        return base.read_bytes()
    overlay = tmp / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
    return overlay.read_bytes()


async def chunks(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    """A chunked request body, 1 MiB at a time, as glanceclient sends stage data."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


# --- responses --------------------------------------------------------------------


async def error_of(resp: aiohttp.ClientResponse, status: int, *fragments: str) -> str:
    """Assert a JSON error `{"error": {"code", "title", "message"}}` with
    `status`, whose message contains every fragment; return the message."""
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
    assert resp.content_type == "application/json", f"error body is not JSON: {resp.content_type} {text!r}"
    body = json.loads(text)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == status and isinstance(err["title"], str) and err["title"], err
    message = err["message"]
    assert isinstance(message, str) and len(message) > 15, f"message too terse to act on: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- the source server for web-download ------------------------------------------


@dataclass
class Source:
    base: str
    port: int
    files: dict[str, bytes]

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"


@pytest.fixture(scope="session")
async def source() -> AsyncIterator[Source]:
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type="application/octet-stream")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.add_routes([web.get("/files/{name}", serve), web.get("/redirect", redirect)])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield Source(f"http://127.0.0.1:{server.port}", server.port, files)
    await server.close()


# --- configuration ---------------------------------------------------------------


def _q(value: str | Path) -> str:
    return json.dumps(str(value))


def write_hub_files(directory: Path, *, source_port: int, auth: str = "token",
                    lock_ttl_s: float = 120, max_image_size_bytes: int = 256 * MiB,
                    extra_import: str = "") -> Path:
    """Site files, tokens and hub.toml under `directory`; returns hub.toml."""
    sites = directory / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(STORES):
        (sites / f"{name}.toml").write_text(
            f"name = {_q(name)}\n"
            f'role = "{"central" if i == 0 else "edge"}"\n'
            f"availability_zone = {_q(name)}\n\n"
            "[store]\n"
            'type = "file"\n'
            f"description = {_q(f'{name} test store')}\n"
            f"path = {_q(directory / 'stores' / name)}\n"
            + (f"\n[agent]\ntoken_file = {_q(directory / f'{name}.token')}\n" if name in AGENT_TOKENS else "")
        )
        if name in AGENT_TOKENS:
            (directory / f"{name}.token").write_text(TOKENS[AGENT_TOKENS[name]][0] + "\n")
    tokens = directory / "tokens.toml"
    tokens.write_text("".join(
        f'[tokens.{tok}]\nuser = "{user}"\nproject = "{project}"\nroles = {json.dumps(roles)}\n\n'
        for tok, user, project, roles in TOKENS.values()
    ))
    hub_toml = directory / "hub.toml"
    hub_toml.write_text(
        "[hub]\n"
        'listen = "127.0.0.1:9292"\n'
        'public_url = "http://hub.test:9292"\n'
        f"state_dir = {_q(directory / 'state')}\n"
        f"sites_dir = {_q(sites)}\n"
        f"tokens_file = {_q(tokens)}\n"
        f"auth = {_q(auth)}\n"
        "show_locations = true\n"
        "tls = { plaintext = true }\n\n"
        "[import]\n"
        f"lock_ttl_s = {lock_ttl_s}\n"
        f"max_image_size_bytes = {max_image_size_bytes}\n"
        f"{extra_import}\n"
        "[import.uri_filter]\n"
        'allowed_schemes = ["http"]\n'
        'allowed_hosts = ["127.0.0.1"]\n'
        f"allowed_ports = [{source_port}]\n"
    )
    return hub_toml


# --- the API under test ------------------------------------------------------------


class Caller:
    """One caller's view of the API: every request carries its token."""

    def __init__(self, client: TestClient, token: str | None) -> None:
        self.client = client
        self.token = token

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        if self.token is not None:
            out.setdefault("X-Auth-Token", self.token)
        return out

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
        return self.client.request(method, path, headers=self._headers(headers), **kw)

    def get(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any):  # type: ignore[no-untyped-def]
        return self.request("DELETE", path, **kw)

    def patch(self, image_id: str, ops: Any, *, content_type: str = PATCH_TYPE):  # type: ignore[no-untyped-def]
        return self.request("PATCH", f"/v2/images/{image_id}", data=json.dumps(ops),
                            headers={"Content-Type": content_type})

    # --- conveniences that assert success ---

    async def create(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "img", "disk_format": "raw", "container_format": "bare", **fields}
        async with self.post("/v2/images", json=body) as resp:
            assert resp.status == 201, await resp.text()
            return await resp.json()

    async def show(self, image_id: str) -> dict[str, Any]:
        async with self.get(f"/v2/images/{image_id}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def stage(self, image_id: str, data: bytes, *, size: int | None = None) -> None:
        headers = {"Content-Type": "application/octet-stream",
                   "x-openstack-image-size": str(len(data) if size is None else size)}
        async with self.put(f"/v2/images/{image_id}/stage", data=chunks(data), headers=headers) as resp:
            assert resp.status == 204, await resp.text()

    async def import_(self, image_id: str, body: dict[str, Any], status: int = 202) -> aiohttp.ClientResponse:
        async with self.post(f"/v2/images/{image_id}/import", json=body) as resp:
            text = await resp.text()
            assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
            return resp

    async def tasks(self, image_id: str) -> list[dict[str, Any]]:
        async with self.get(f"/v2/images/{image_id}/tasks") as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["tasks"]

    async def download(self, image_id: str) -> bytes:
        async with self.get(f"/v2/images/{image_id}/file") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.read()


def direct(stores: Iterable[str], *, must_succeed: bool | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"method": {"name": "glance-direct"}, "stores": list(stores)}
    if must_succeed is not None:
        body["all_stores_must_succeed"] = must_succeed
    return body


def copy(stores: Iterable[str] | None = None, *, all_stores: bool = False,
         must_succeed: bool | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"method": {"name": "copy-image"}}
    if stores is not None:
        body["stores"] = list(stores)
    if all_stores:
        body["all_stores"] = True
    if must_succeed is not None:
        body["all_stores_must_succeed"] = must_succeed
    return body


@dataclass
class Api:
    hub: Hub
    client: TestClient
    dir: Path
    admin: Caller
    p1: Caller
    p2: Caller
    anon: Caller
    agent0: Caller
    agent1: Caller
    impostor: Caller

    def store_dir(self, store: str) -> Path:
        return self.dir / "stores" / store

    @property
    def staging_dir(self) -> Path:
        return self.hub.config.staging_dir

    def staging_files(self) -> list[str]:
        return sorted(p.name for p in self.staging_dir.iterdir())

    def store_files(self, store: str) -> list[str]:
        return sorted(p.name for p in self.store_dir(store).iterdir())

    def assert_nothing_left(self, image_id: str) -> None:
        """No staging file and no copy (published or partial) anywhere."""
        assert not [f for f in self.staging_files() if f.startswith(image_id)], self.staging_files()
        for store in STORES:
            left = [f for f in self.store_files(store) if f.startswith(image_id)]
            assert not left, f"{store} still holds {left}"

    async def wait_idle(self, timeout_s: float = 20.0) -> None:
        await asyncio.wait_for(self.hub.importer.wait_idle(), timeout_s)

    async def active_image(self, data: bytes, stores: Iterable[str] = ("central",),
                           caller: Caller | None = None, **fields: Any) -> dict[str, Any]:
        """create + stage + glance-direct import to `stores`, waited for; must end active."""
        who = caller or self.p1
        image = await who.create(**fields)
        await who.stage(image["id"], data)
        await who.import_(image["id"], direct(stores))
        await self.wait_idle()
        image = await who.show(image["id"])
        assert image["status"] == "active", image
        return image

    async def last_task(self, image_id: str) -> dict[str, Any]:
        tasks = await self.admin.tasks(image_id)
        assert tasks, f"no task for image {image_id}"
        return tasks[0]


@contextlib.asynccontextmanager
async def running_api(directory: Path) -> AsyncIterator[Api]:
    hub = Hub(load_hub(directory / "hub.toml"))
    await hub.open()
    client = TestClient(TestServer(hub.app()))
    await client.start_server()
    try:
        yield Api(
            hub=hub, client=client, dir=directory,
            admin=Caller(client, TOKENS["admin"][0]), p1=Caller(client, TOKENS["p1"][0]),
            p2=Caller(client, TOKENS["p2"][0]), anon=Caller(client, None),
            agent0=Caller(client, TOKENS["agent0"][0]), agent1=Caller(client, TOKENS["agent1"][0]),
            impostor=Caller(client, TOKENS["impostor"][0]),
        )
    finally:
        await client.close()
        await hub.close(grace_s=10)


@pytest.fixture
def hub_dir(tmp_path: Path, source: Source) -> Path:
    write_hub_files(tmp_path, source_port=source.port)
    return tmp_path


@pytest.fixture
async def api(hub_dir: Path) -> AsyncIterator[Api]:
    async with running_api(hub_dir) as running:
        yield running


# --- pausing a real store (deterministic concurrency, no fakes) -------------------


@dataclass
class Gate:
    """Holds every write to one store until `open()`; `entered` is set when
    the first write is waiting."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self) -> None:
        self.released.set()

    async def wait_entered(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self.entered.wait(), timeout_s)


def gate_store_writes(monkeypatch: pytest.MonkeyPatch, hub: Hub, store: str) -> Gate:
    """Make `store`'s writers wait at their first write until the gate opens.
    The store stays real: the write happens, just later."""
    gate = Gate()
    target = hub.stores[store]
    original = target.open_writer

    async def open_writer(image_id: str, size_bytes: int, *, resume: bool = False):  # type: ignore[no-untyped-def]
        writer = await original(image_id, size_bytes, resume=resume)
        real_write = writer.write

        async def write(offset: int, data: bytes | memoryview) -> None:
            gate.entered.set()
            await gate.released.wait()
            await real_write(offset, data)

        writer.write = write  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(target, "open_writer", open_writer)
    return gate


async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Bounded polling for a condition the test can't await directly."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.01)


def break_store(api: Api, store: str) -> None:
    """Make a store really fail: its directory becomes a regular file, so
    every create under it fails with ENOTDIR."""
    path = api.store_dir(store)
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
    path.write_bytes(b"not a directory")


def repair_store(api: Api, store: str) -> None:
    path = api.store_dir(store)
    path.unlink()
    path.mkdir()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512
