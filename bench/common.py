"""Shared benchmark helpers: test images, timing, peak RSS, a lab client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from edgesync.lab.ports import in_netns
from edgesync.tls import client_context

MiB = 1024 * 1024
GiB = 1024 * MiB


def make_half_zero_image(path: Path, size_bytes: int = GiB, stripe_bytes: int = 4 * MiB) -> Path:
    """RAW image alternating `stripe_bytes` of random data and of holes."""
    if path.exists() and path.stat().st_size == size_bytes:
        return path
    block = os.urandom(stripe_bytes)
    with path.open("wb") as fh:
        fh.truncate(size_bytes)
        for offset in range(0, size_bytes, 2 * stripe_bytes):
            fh.seek(offset)
            fh.write(block[: min(stripe_bytes, size_bytes - offset)])
    return path


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


@contextmanager
def timed(results: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    results[name] = time.monotonic() - start


def lab_connector(ca_file: str | None, netns: str | None = None) -> aiohttp.TCPConnector:
    """Connections that verify the lab's daemons against its CA (lab.json's
    ca_file; None: a plaintext lab), with sockets made in network namespace
    `netns` if given: a WAN lab's agent listens on an address that exists only
    in its site's namespace (from the machine's own namespace, 10.77.x.y would
    go to the default route, off the machine)."""
    ssl = client_context(Path(ca_file)) if ca_file else True
    if netns is None:
        return aiohttp.TCPConnector(ssl=ssl)
    site_netns = netns

    def socket_in_netns(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto = addr_info[:3]
        return in_netns(site_netns, lambda: socket.socket(family, kind, proto))
    return aiohttp.TCPConnector(ssl=ssl, socket_factory=socket_in_netns)


class HubClient:
    """Just enough of the Glance API to drive a benchmark."""

    def __init__(self, url: str, token: str, ca_file: str | None = None) -> None:
        self.url = url
        self.headers = {"X-Auth-Token": token}
        self.session = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=3600),
                                             connector=lab_connector(ca_file))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        async with self.session.request(method, self.url + path, **kw) as r:
            text = await r.text()
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: {r.status} {text}")
            return json.loads(text) if text else None

    async def create(self, name: str) -> str:
        body = {"name": name, "disk_format": "raw", "container_format": "bare"}
        return (await self.call("POST", "/v2/images", json=body))["id"]

    async def stage_file(self, image_id: str, path: Path) -> None:
        async def chunks() -> Any:
            with path.open("rb") as fh:
                while block := fh.read(4 * MiB):
                    yield block

        await self.call("PUT", f"/v2/images/{image_id}/stage", data=chunks(),
                        headers={"Content-Type": "application/octet-stream",
                                 "x-openstack-image-size": str(path.stat().st_size)})

    async def import_(self, image_id: str, method: str, stores: list[str], must_succeed: bool = True) -> None:
        await self.call("POST", f"/v2/images/{image_id}/import", json={
            "method": {"name": method}, "stores": stores, "all_stores_must_succeed": must_succeed})

    async def wait(self, image_id: str, predicate: Any, timeout_s: float = 600,
                   poll_s: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            image = await self.call("GET", f"/v2/images/{image_id}")
            if predicate(image):
                return image
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"image {image_id} did not get there in {timeout_s} s")


def settled(image: dict[str, Any]) -> bool:
    return image["status"] == "active" and not image.get("os_glance_importing_to_stores")
