"""The hub's side of the bus: the outbox publisher and the event router.

* Commands are never published directly. They are written to the catalog's
  outbox in the same transaction as the task state they belong to
  (`outbox_row`), and `OutboxPublisher` drains the outbox: at-least-once
  delivery, surviving hub crashes and broker restarts. A message is stored
  whole, so a resend keeps its `message_id` and agents drop the duplicate.
* `EventRouter` takes what agents publish (status, heartbeats, progress, done,
  failed, inventory), drops duplicates by `message_id`, keeps the site
  registry current and hands task events to the orchestration.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from edgesync.aio import cancel_and_wait
from edgesync.bus import BusClient, BusError, Channel, Delivery, Message, SiteTopic, decode, run_forever, topics
from edgesync.bus.messages import Heartbeat, Inventory, SiteState, SiteStatus, encode
from edgesync.catalog import Catalog
from edgesync.hub.sites import SiteRegistry
from edgesync.logs import log_context

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 2.0
SEEN_IDS_KEPT = 10_000

TaskEventHandler = Callable[[str, Message], Awaitable[None]]
# (site, the AZ its agent announced, what is wrong): tell that agent to stop.
RefuseHandler = Callable[[str, str, str], Awaitable[None]]
HeartbeatHook = Callable[[str, float], None]  # (site, the agent's timestamp)


def outbox_row(topic: SiteTopic, message: Message) -> tuple[str, dict[str, Any]]:
    """What `Catalog.start_task(commands=…)` / `outbox_add` store for a message."""
    return str(topic), json.loads(encode(message))


class OutboxPublisher:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._wake = asyncio.Event()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def on_published(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(payload)` for each row once the broker acknowledged it."""
        self._listeners.append(listener)

    def wake(self) -> None:
        """Something was added to the outbox: publish it now rather than at the next poll."""
        self._wake.set()

    async def publish_once(self, client: BusClient) -> int:
        """Publish every pending row, oldest first; return how many went out.
        A row is marked published only after the broker acknowledged it."""
        sent = 0
        while rows := await self.catalog.outbox_pending(limit=100):
            for row in rows:
                await client.publish(SiteTopic.parse(row.topic), decode(json.dumps(row.payload)))
                await self.catalog.outbox_mark_published([row.id])
                for listener in self._listeners:
                    listener(row.payload)
                sent += 1
        return sent

    async def run(self, client: BusClient) -> None:
        while True:
            self._wake.clear()
            await self.publish_once(client)
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
            except TimeoutError:
                pass


class EventRouter:
    def __init__(self, registry: SiteRegistry, on_task_event: TaskEventHandler,
                 on_refused: RefuseHandler | None = None, on_heartbeat: HeartbeatHook | None = None) -> None:
        self.registry = registry
        self.on_task_event = on_task_event
        self.on_refused = on_refused
        self.on_heartbeat = on_heartbeat  # the metrics' event lag
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0

    def _first_time(self, message_id: str) -> bool:
        if message_id in self._seen:
            self.duplicates += 1
            return False
        self._seen[message_id] = None
        if len(self._seen) > SEEN_IDS_KEPT:
            self._seen.popitem(last=False)
        return True

    async def handle(self, delivery: Delivery) -> None:
        message, site = delivery.message, delivery.topic.site
        if not self._first_time(message.message_id):
            return
        if isinstance(message, SiteStatus):
            problem = self.registry.on_status(site, message)
            if problem:
                log.error("site %s: %s", site, problem)
                # A running agent with the wrong config is told to stop; an
                # offline one (a retained will) has nothing left to stop.
                if message.state is SiteState.ONLINE and message.availability_zone and self.on_refused:
                    await self.on_refused(site, message.availability_zone, problem)
        elif isinstance(message, Heartbeat):
            self.registry.on_heartbeat(site, message)
            if self.on_heartbeat is not None:
                self.on_heartbeat(site, message.ts)
        elif isinstance(message, Inventory):
            log.debug("site %s holds %d images", site, len(message.image_ids))
        else:
            await self.on_task_event(site, message)

    @staticmethod
    async def subscribe(client: BusClient) -> None:
        await client.subscribe(topics.every_site(Channel.STATUS))
        await client.subscribe(topics.every_site(Channel.EVENT))

    async def consume(self, client: BusClient) -> None:
        await self.subscribe(client)  # again after a reconnect: harmless
        async for delivery in client.messages():
            try:
                with log_context(site=delivery.topic.site, task_id=getattr(delivery.message, "task_id", None)):
                    await self.handle(delivery)
            except Exception:  # one bad event must not stop the consumer
                log.exception("handling %s from %s failed", type(delivery.message).__name__,
                              delivery.topic.site)


async def run_hub_bus(client: BusClient, publisher: OutboxPublisher, router: EventRouter) -> None:
    """Publish the outbox and consume events, reconnecting as needed, forever.

    The two loops are plain tasks stopped with `cancel_and_wait`, not a
    TaskGroup: a loop that swallows its cancellation inside aiomqtt's publish
    (gh-86296) would keep a TaskGroup, and with it the hub's shutdown,
    waiting forever, since a TaskGroup cancels its children only once.
    """

    async def work(connected: BusClient) -> None:
        loops = [asyncio.create_task(publisher.run(connected), name="outbox-publisher"),
                 asyncio.create_task(router.consume(connected), name="event-consumer")]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a BusError: run_forever reconnects (or gives up)
                raise BusError(f"{task.get_name()} loop ended unexpectedly")
        finally:
            await cancel_and_wait(loops)

    await run_forever(client, work)
