"""Who may pull an image over the hub's transfer routes.

`/edgesync/v1/images/{id}/extents`, `/data`, `/manifest` and `/spans` serve central's copy to the
agents that copy it, and to admins (the hub's own tools). An agent — known
by its credential (`Caller.agent_site`), never by a name — reads an image
only while a copy of it to the agent's own site is unfinished: the command
it was sent is the only reason it has to read. Everyone else is refused,
members included (they download through `/v2/images/{id}/file`, which
checks visibility).

A copy asks range after range, so the sites an image's open copy goes to
are remembered for a second per image: one catalog look-up per second of a
copy, however many sites it goes to (per site and image, a copy to a
thousand sites cost a thousand look-ups of its thousand store jobs every
second). A site missing from what is remembered is looked up afresh (its
copy may have started within that second), so only a yes is ever reused:
a copy that ends meanwhile may be served for at most that second more, by
the agents that were making it.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from aiohttp import web

from edgesync.catalog import Catalog
from edgesync.errors import Forbidden, NotFound
from edgesync.hub.api.middleware import CALLER_KEY
from edgesync.hub.auth import Caller

ANSWER_REUSE_S = 1.0


class TransferAuthorizer:
    MAX_KEPT = 1024

    def __init__(self, catalog: Catalog, reuse_s: float = ANSWER_REUSE_S) -> None:
        self._catalog = catalog
        self._reuse_s = reuse_s
        self._open: dict[str, tuple[float, frozenset[str]]] = {}  # image -> (when seen, sites its copy goes to)
        self._looking: dict[str, asyncio.Future[frozenset[str]]] = {}

    async def __call__(self, request: web.Request, image_id: str) -> None:
        caller = cast(Caller, request[CALLER_KEY])
        if caller.agent_site is not None:
            if not await self.copy_open(caller.agent_site, image_id):
                raise NotFound(f"Image {image_id} is not being copied to site {caller.agent_site}; "
                               "an agent reads only the images its copy commands name")
            return
        if not caller.is_admin:
            raise Forbidden("The transfer routes serve the sites' agents and admins; "
                            f"download image data with GET /v2/images/{image_id}/file")

    async def copy_open(self, site: str, image_id: str) -> bool:
        now = time.monotonic()
        seen = self._open.get(image_id)
        if seen is not None and now - seen[0] < self._reuse_s and site in seen[1]:
            return True
        looking = self._looking.get(image_id)
        if looking is None:  # one look-up at a time per image: the sites asking at once share it
            looking = self._looking[image_id] = asyncio.ensure_future(self._open_sites(image_id))
            looking.add_done_callback(lambda _: self._looking.pop(image_id, None))
        sites = await asyncio.shield(looking)
        if len(self._open) >= self.MAX_KEPT:
            self._open = {k: v for k, v in self._open.items() if now - v[0] < self._reuse_s}
        if sites:
            self._open[image_id] = (time.monotonic(), sites)
        return site in sites

    async def _open_sites(self, image_id: str) -> frozenset[str]:
        holder = await self._catalog.lock_holder(image_id)
        task = await self._catalog.get_task(holder) if holder is not None else None
        return frozenset(task.unfinished_stores) if task is not None else frozenset()
