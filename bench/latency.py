"""The API's latency while something else runs: a client that keeps asking
the hub for one image and for the image list, one request at a time, and
keeps every answer's time — and the hub's own view of the same routes (its
request-duration histogram, before and after), which leaves out the time a
request spends before the hub reads it: on a machine whose cores are all
busy, the difference is the machine, not the hub."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from typing import ClassVar, TypeVar

import aiohttp
from common import lab_connector

T = TypeVar("T")


class ApiProbe:
    CALLS = ("GET /v2/images/{id}", "GET /v2/images")
    ROUTES: ClassVar[dict[str, str]] = {CALLS[0]: "/v2/images/{image_id}", CALLS[1]: "/v2/images"}
    PAUSE_S = 0.05  # between requests: a client polling, not a flood

    def __init__(self, url: str, token: str, image_id: str, ca_file: str | None = None) -> None:
        self.paths = {self.CALLS[0]: f"{url}/v2/images/{image_id}", self.CALLS[1]: f"{url}/v2/images?limit=25"}
        self.token = token
        self.metrics_url = f"{url}/metrics"
        self.hub_side: dict[str, list[tuple[float, float]]] = {}  # route -> (le, count) over the run
        self.ca_file = ca_file
        self.times: dict[str, list[float]] = {name: [] for name in self.CALLS}
        self.failures = 0

    async def during(self, work: Awaitable[T]) -> T:
        """Await `work`, probing the API until it is done."""
        async with aiohttp.ClientSession(headers={"X-Auth-Token": self.token},
                                         connector=lab_connector(self.ca_file)) as session:
            before = await self._histograms(session)
            probing = asyncio.create_task(self._probe(session))
            try:
                return await work
            finally:
                probing.cancel()
                await asyncio.gather(probing, return_exceptions=True)
                after = await self._histograms(session)
                self.hub_side = {route: [(le, n - dict(before.get(route, [])).get(le, 0.0)) for le, n in buckets]
                                 for route, buckets in after.items()}

    async def _histograms(self, session: aiohttp.ClientSession) -> dict[str, list[tuple[float, float]]]:
        """GET 200s' cumulative duration buckets per route, from the hub's /metrics."""
        async with session.get(self.metrics_url) as r:
            text = await r.text()
        found: dict[str, list[tuple[float, float]]] = {}
        for line in text.splitlines():
            if not line.startswith("edgesync_api_request_duration_seconds_bucket{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("method") == "GET" and labels.get("status") == "200":
                found.setdefault(labels["route"], []).append((float(labels["le"]), float(line.rsplit(" ", 1)[1])))
        return found

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


    def hub_summary(self, name: str) -> str:
        """The hub's own p50/p99 for the route, as the bucket each falls in."""
        buckets = sorted(self.hub_side.get(self.ROUTES[name], []))
        total = buckets[-1][1] if buckets else 0
        if not total:
            return "no requests"
        def bound(p: float) -> str:
            le = next(le for le, n in buckets if n >= total * p / 100)
            return f"≤ {le * 1000:g} ms" if le != float("inf") else "> the top bucket"
        return f"p50 {bound(50)}, p99 {bound(99)} ({total:.0f} requests, every client's)"


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ordered list."""
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]
