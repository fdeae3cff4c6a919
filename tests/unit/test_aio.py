"""Stopping tasks that swallow a cancellation (Python 3.11's wait_for, gh-86296),
in the shared helper and in the hub's bus loops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edgesync.aio import cancel_and_wait
from edgesync.catalog import Catalog
from edgesync.hub.bus_bridge import EventRouter, OutboxPublisher, run_hub_bus
from edgesync.hub.sites import SiteRegistry


async def stubborn(swallow: int, started: asyncio.Event) -> None:
    """Loops on, ignoring its first `swallow` cancellations, as a loop
    cancelled inside 3.11's wait_for may."""
    started.set()
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1


async def test_cancel_and_wait_cancels_until_the_task_stops() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(stubborn(2, started))
    await started.wait()
    async with asyncio.timeout(5):
        await cancel_and_wait([task])
    assert task.cancelled()


async def test_a_cancelled_caller_still_waits_for_its_tasks_then_is_cancelled() -> None:
    started = asyncio.Event()
    inner = asyncio.create_task(stubborn(3, started))
    await started.wait()
    outer = asyncio.create_task(cancel_and_wait([inner]))
    await asyncio.sleep(0)  # outer is waiting for inner now
    outer.cancel()
    async with asyncio.timeout(5):
        await asyncio.gather(outer, return_exceptions=True)
    assert outer.cancelled()
    assert inner.cancelled(), "the helper returned while its task still ran"


class SwallowingBus:
    """A connected bus whose publish swallows the first cancellation it sees
    (what aiomqtt's publish can do on 3.11) and whose event stream is silent."""

    def __init__(self) -> None:
        self.publishing = asyncio.Event()
        self.swallowed = 0

    async def __aenter__(self) -> SwallowingBus:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def subscribe(self, topic_filter: Any) -> None:
        return None

    async def publish(self, topic: Any, message: Any, **kw: Any) -> None:
        self.publishing.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1

    async def messages(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield  # pragma: no cover


@pytest.mark.timeout(30)  # the old TaskGroup version hung here for good
async def test_run_hub_bus_stops_even_if_a_publish_swallows_the_cancel(tmp_path: Any) -> None:
    catalog = await Catalog.open(tmp_path / "catalog.sqlite3")
    try:
        await catalog.outbox_add("edgesync/v1/sites/dcn0/cmd", {"x": 1})
        publisher = OutboxPublisher(catalog)
        publisher.publish_once = _publish_one_forever  # type: ignore[method-assign]
        bus = SwallowingBus()
        bridge = asyncio.create_task(run_hub_bus(bus, publisher, EventRouter(SiteRegistry(()), _ignore)))  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            await bus.publishing.wait()
            await cancel_and_wait([bridge])
        assert bridge.cancelled() and bus.swallowed == 1
    finally:
        await catalog.close()


async def _publish_one_forever(client: Any) -> int:
    await client.publish(None, None)
    return 1


async def _ignore(site: str, message: Any) -> None:
    return None
