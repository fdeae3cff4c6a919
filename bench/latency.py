"""The API's latency while something else runs: a client that keeps asking
the hub for one image and for the image list, one request at a time, and
keeps every answer's time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp

T = TypeVar("T")


class ApiProbe:
    CALLS = ("GET /v2/images/{id}", "GET /v2/images")
    PAUSE_S = 0.05  # between requests: a client polling, not a flood

    def __init__(self, url: str, token: str, image_id: str) -> None:
        self.paths = {self.CALLS[0]: f"{url}/v2/images/{image_id}", self.CALLS[1]: f"{url}/v2/images?limit=25"}
        self.token = token
        self.times: dict[str, list[float]] = {name: [] for name in self.CALLS}
        self.failures = 0

    async def during(self, work: Awaitable[T]) -> T:
        """Await `work`, probing the API until it is done."""
        async with aiohttp.ClientSession(headers={"X-Auth-Token": self.token}) as session:
            probing = asyncio.create_task(self._probe(session))
            try:
                return await work
            finally:
                probing.cancel()
                await asyncio.gather(probing, return_exceptions=True)

    async def _probe(self, session: aiohttp.ClientSession) -> None:
        while True:
            for name, url in self.paths.items():
                start = time.monotonic()
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    self.times[name].append(time.monotonic() - start)
                else:
                    self.failures += 1
                await asyncio.sleep(self.PAUSE_S)

    def summary(self, name: str) -> str:
        times = sorted(self.times[name])
        if not times:
            return "no answers"
        return (f"p50 {percentile(times, 50) * 1000:6.1f} ms  p99 {percentile(times, 99) * 1000:7.1f} ms  "
                f"max {times[-1] * 1000:7.1f} ms  ({len(times)} requests, {self.failures} failed)")


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ordered list."""
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]
