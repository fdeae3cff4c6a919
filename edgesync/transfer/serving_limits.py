"""What a server of the transfer routes allows itself: a number of data
requests in flight per site, and one egress rate for all sites together.

The hub serves every site's copies from one place. Without a bound, a copy
to a thousand sites is a thousand agents each with several 4 MiB requests
in flight, every one of them holding its body in the hub's memory while it
trickles out, and a site on a fast link takes as much of central's uplink as
it can. So:

- **per site**: at most `per_site` data requests (ranges, spans) of one site
  are served at once, from the read to the last byte sent; the others wait
  their turn, in arrival order. A request waits before its range is read,
  so a waiting request holds no image bytes.
- **slices**: every data response is written `SLICE_BYTES` at a time, with
  a turn of the event loop between slices, limit or not (see `send`).
- **egress**: each slice is taken from one token bucket (`RateLimiter`) for all sites, so together
  they never pass the rate (bytes on the wire: zstd frames as sent), and
  every transfer moves a slice at a time in turn — none waits for whole
  bodies of the others, so none waits long enough to time out.

Requests not from a site (an admin's tools) are not counted per site but do
take their bytes from the egress bucket. The figures (`in_flight`,
`peak_in_flight`, `waited_total`, `sent_bytes`) are what `/metrics` shows and
what tests count.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

from aiohttp import web

from edgesync.transfer.ratelimit import RateLimiter

SLICE_BYTES = 256 << 10  # small enough to interleave hundreds of transfers, large enough to cost little


class ServingLimits:
    def __init__(self, per_site: int = 0, egress_bytes_per_s: float = 0.0) -> None:
        """`per_site` <= 0: no limit per site; `egress_bytes_per_s` <= 0: no egress limit."""
        self.per_site = per_site
        self.egress = RateLimiter(egress_bytes_per_s, burst_bytes=max(SLICE_BYTES, int(egress_bytes_per_s / 4)))
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self.peak_in_flight: defaultdict[str, int] = defaultdict(int)
        self.waited_total = 0
        self.sent_bytes = 0

    @contextlib.asynccontextmanager
    async def slot(self, site: str | None) -> AsyncIterator[None]:
        """Held while one of `site`'s data requests is served (None: not a site)."""
        if site is None:
            yield
            return
        slots = self._slots.get(site) if self.per_site > 0 else None
        if slots is None and self.per_site > 0:
            slots = self._slots[site] = asyncio.Semaphore(self.per_site)
        if slots is not None and slots.locked():
            self.waited_total += 1
        async with slots if slots is not None else contextlib.nullcontext():
            self.in_flight[site] += 1
            self.peak_in_flight[site] = max(self.peak_in_flight[site], self.in_flight[site])
            try:
                yield
            finally:
                self.in_flight[site] -= 1

    async def send(self, request: web.Request, response: web.StreamResponse, body: bytes) -> web.StreamResponse:
        """Write `response` with `body`, slice by slice from the egress bucket."""
        response.content_length = len(body)
        await response.prepare(request)
        view = memoryview(body)
        for start in range(0, len(body), SLICE_BYTES):
            piece = view[start:start + SLICE_BYTES]
            await self.egress.acquire(len(piece))
            await response.write(piece)
            self.sent_bytes += len(piece)
            # A turn for everything else between slices, limit or not: on TLS
            # one write encrypts its whole buffer in the loop and keeps it until
            # sent, so whole 4 MiB bodies to hundreds of sites were seconds-long
            # loop turns (API requests waited them out) and GiBs of ciphertext.
            await asyncio.sleep(0)
        await response.write_eof()
        return response
