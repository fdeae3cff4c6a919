"""An edge site's store as the hub sees it: operated through the site's agent.

`RemoteStore` is an `ImageStore` whose work happens elsewhere: copies and
deletions are commands to the site's agent (through the catalog's outbox,
at-least-once), answered by its events; reads of an edge copy (to bring an
edge-created image to central) go over HTTP to the agent's data endpoint.
The orchestration keeps calling the one store interface and does not know
which stores are local.

While a site's agent is down, a command waits (the broker keeps it for the
agent's persistent session); if the site stays down past
`offline_deadline_s`, the operation fails with the reason "site offline".
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from edgesync.bus import CopyCommand, DeleteCommand, DoneEvent, FailedEvent, Message, ProgressEvent, topics
from edgesync.catalog import Catalog
from edgesync.config import SiteConfig
from edgesync.errors import StoreError, StoreImageInUse, StoreImageNotFound, StoreUnavailable
from edgesync.hub.bus_bridge import OutboxPublisher, outbox_row
from edgesync.hub.sites import SiteRegistry
from edgesync.model import Image
from edgesync.stores.base import Extent, ImageStore, ImageWriter, Location
from edgesync.transfer.http import HttpSource, TransferError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], Awaitable[None]]  # (data bytes done, data bytes in all)
WAIT_SLICE_S = 1.0


@dataclass
class _Pending:
    site: str
    result: asyncio.Future[Message] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    on_progress: ProgressFn | None = None


class AgentCommands:
    """Sends commands to agents and matches their answers to the waiting callers."""

    def __init__(self, catalog: Catalog, publisher: OutboxPublisher, registry: SiteRegistry,
                 *, offline_deadline_s: float) -> None:
        self.catalog = catalog
        self.publisher = publisher
        self.registry = registry
        self.offline_deadline_s = offline_deadline_s
        self._pending: dict[str, _Pending] = {}

    async def call(self, site: str, command: CopyCommand | DeleteCommand,
                   on_progress: ProgressFn | None = None) -> DoneEvent:
        """Send `command` to `site`'s agent and wait for its Done (returned) or
        Failed (raised as a store error)."""
        pending = self._pending[command.task_id] = _Pending(site, on_progress=on_progress)
        try:
            await self.catalog.outbox_add(*outbox_row(topics.cmd(site), command))
            self.publisher.wake()
            answer = await self._wait(site, pending.result)
        finally:
            self._pending.pop(command.task_id, None)
        if isinstance(answer, FailedEvent):
            raise _failure(site, answer)
        assert isinstance(answer, DoneEvent)
        return answer

    async def _wait(self, site: str, result: asyncio.Future[Message]) -> Message:
        down_since: float | None = None
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(result), WAIT_SLICE_S)
            except TimeoutError:
                pass
            if self.registry.is_up(site):
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > self.offline_deadline_s:
                raise StoreUnavailable(
                    f"site offline: the agent of {site} has not been up for "
                    f"{self.offline_deadline_s:.0f} s (agents.offline_deadline_s)", retryable=False)

    async def on_event(self, site: str, message: Message) -> None:
        """Events from the bus (the EventRouter's task-event handler)."""
        task_id = getattr(message, "task_id", None)
        pending = self._pending.get(task_id) if task_id else None
        if pending is None or pending.site != site:
            log.debug("event %s for task %s: nobody waits for it", type(message).__name__, task_id)
            return
        if isinstance(message, ProgressEvent):
            if pending.on_progress is not None:
                await pending.on_progress(message.bytes_done, message.bytes_total)
        elif isinstance(message, (DoneEvent, FailedEvent)) and not pending.result.done():
            pending.result.set_result(message)


def _failure(site: str, failed: FailedEvent) -> StoreError:
    text = f"{site}: {failed.reason}"
    if failed.code == "in_use":
        return StoreImageInUse(text)
    if failed.code == "not_found":
        return StoreImageNotFound(text)
    return StoreError(text, retryable=failed.retryable)


class RemoteStore(ImageStore):
    """An edge site's store, operated by its agent."""

    def __init__(self, site: SiteConfig, commands: AgentCommands, *, hub_url: str,
                 agent_url: str | None, agent_token: str | None) -> None:
        self.name = site.name
        self.type = site.store.type
        self.description = site.store.description
        self.read_only = site.store.read_only
        self._site = site
        self._commands = commands
        self._hub_url = hub_url
        self._agent_url = agent_url
        self._agent_token = agent_token
        self._session: aiohttp.ClientSession | None = None
        # One HttpSource per image: it caches the extent map between reads.
        self._sources: dict[str, HttpSource] = {}

    # --- what the hub asks of an edge site ------------------------------------

    async def replicate(self, image: Image, job_id: str, on_progress: ProgressFn) -> Location:
        assert image.size is not None and image.os_hash_value
        done = await self._commands.call(self.name, CopyCommand(
            task_id=job_id, image_id=image.id, size_bytes=image.size,
            os_hash_value=image.os_hash_value, source_url=self._hub_url), on_progress)
        if not done.location_url:
            raise StoreError(f"{self.name}: the agent reported a copy without a location")
        return Location(self.name, done.location_url)

    async def delete(self, image_id: str) -> None:
        self.forget(image_id)
        await self._commands.call(self.name, DeleteCommand(task_id=str(uuid.uuid4()), image_id=image_id))

    # --- reading an edge copy (edge-created images go to central) --------------

    def _source(self, image_id: str) -> HttpSource:
        if self._agent_url is None:
            raise StoreError(f"site {self.name} has no agent data endpoint configured")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if image_id not in self._sources:
            self._sources[image_id] = HttpSource(self._session, self._agent_url, image_id,
                                                 token=self._agent_token)
        return self._sources[image_id]

    def forget(self, image_id: str) -> None:
        """Drop the cached source (after a copy to central, or a delete)."""
        self._sources.pop(image_id, None)

    async def extents(self, image_id: str) -> list[Extent]:
        return await self._source(image_id).extents()

    async def read(self, image_id: str, offset: int, length: int) -> bytes:
        return await self._source(image_id).read(offset, length)

    async def size(self, image_id: str) -> int:
        return await self._source(image_id).size()

    async def allocated_bytes(self, image_id: str) -> int:
        return sum(e.length for e in await self.extents(image_id))

    async def exists(self, image_id: str) -> bool:
        try:
            await self.size(image_id)
        except TransferError as exc:
            if exc.status == 404:
                self.forget(image_id)
                return False
            raise
        return True

    # --- not done from the hub ---------------------------------------------------

    async def open_writer(self, image_id: str, size_bytes: int, *, resume: bool = False) -> ImageWriter:
        raise StoreError(f"site {self.name}'s store is written by its agent, not by the hub")

    async def discard_unpublished(self, image_id: str) -> None:
        """The agent cleans its own unpublished copies (its journal knows them)."""

    def location_url(self, image_id: str) -> str:
        raise StoreError(f"the location of a copy in {self.name} is reported by its agent")

    def properties(self) -> dict[str, Any]:
        """What the site file says of the agent's store (the hub never opens it)."""
        cfg = self._site.store
        props: dict[str, Any] = {"agent_url": self._agent_url, "thin_provisioning": True}
        if cfg.type == "file":
            props["datadir"] = str(cfg.path)
        else:
            from edgesync.stores.rbd import conf_fsid  # the hub has the rbd bindings anyway

            props.update(pool=cfg.pool, chunk_size=4, user=cfg.user)
            if cfg.ceph_conf is not None and cfg.ceph_conf.is_file():
                props["fsid"] = conf_fsid(cfg.ceph_conf)
        return props

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
