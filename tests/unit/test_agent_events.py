"""The agent's event outbox against a real journal and a fake bus that can fail:
results are owed until acknowledged, progress is throttled and never follows
its Done, the inventory is a snapshot sent when due."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgesync.agent.events import EventOutbox
from edgesync.agent.journal import Journal
from edgesync.bus import (
    BusError,
    CopyCommand,
    DoneEvent,
    FailedEvent,
    Inventory,
    Message,
    ProgressEvent,
    SiteTopic,
    topics,
)


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[tuple[SiteTopic, Message]] = []
        self.fail_next = 0

    async def publish(self, topic: SiteTopic, message: Message, *, retain: bool = False) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise BusError("lost the connection to the broker")
        self.sent.append((topic, message))

    def messages(self, kind: type[Message]) -> list[Message]:
        return [m for _, m in self.sent if isinstance(m, kind)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "journal.sqlite3")
    for n in (1, 2):
        await j.record(CopyCommand(task_id=f"t{n}", image_id=f"img-{n}", size_bytes=1, os_hash_value="ab",
                                   source_url="http://hub"))
    try:
        yield j
    finally:
        await j.close()


def outbox(journal: Journal, clock: Clock | None = None, images: tuple[str, ...] = ("img-1",)) -> EventOutbox:
    async def image_ids() -> list[str]:
        return list(images)

    return EventOutbox("dcn0", journal, image_ids, clock=clock or Clock())


async def test_a_result_is_owed_until_the_broker_took_it(journal: Journal) -> None:
    events, bus = outbox(journal), FakeBus()
    done = DoneEvent(task_id="t1", image_id="img-1", location_url="file:///s/img-1")
    await events.finish("t1", done)
    bus.fail_next = 2  # two connections drop before the broker acknowledges it
    with pytest.raises(BusError):
        await events.publish_once(bus)
    assert events.owed_results == 1 and await journal.unreported() == [done]
    with pytest.raises(BusError):
        await events.publish_once(bus)
    assert await events.publish_once(bus) == 2  # the result and the inventory, on the next connection
    assert bus.messages(DoneEvent) == [done] and events.owed_results == 0
    assert await journal.unreported() == []
    assert all(topic == topics.event("dcn0") for topic, _ in bus.sent)


async def test_a_restarted_agent_sends_what_it_still_owes(journal: Journal) -> None:
    failed = FailedEvent(task_id="t2", reason="store full", retryable=False, code="store_full")
    await outbox(journal).finish("t2", failed)  # then the process dies before sending it
    events, bus = outbox(journal), FakeBus()
    await events.load()
    await events.publish_once(bus)
    assert bus.messages(FailedEvent) == [failed]  # the same message id: the hub drops a duplicate


async def test_progress_is_throttled_and_sent_before_the_result(journal: Journal) -> None:
    clock = Clock()
    events, bus = outbox(journal, clock), FakeBus()
    events.progress("t1", 1, 10)
    events.progress("t1", 2, 10)  # within a second of the last: dropped
    events.progress("t2", 5, 10)  # another task has its own budget
    clock.now += 1.0
    events.progress("t1", 3, 10)
    await events.finish("t1", DoneEvent(task_id="t1", image_id="img-1"))
    await events.publish_once(bus)
    kinds = [type(m).__name__ for _, m in bus.sent]
    assert kinds == ["ProgressEvent", "ProgressEvent", "DoneEvent", "Inventory"]
    assert [(p.task_id, p.bytes_done) for p in bus.messages(ProgressEvent)] == [("t1", 3), ("t2", 5)]  # type: ignore[attr-defined]


async def test_the_inventory_is_sent_at_start_after_changes_and_after_each_connect(journal: Journal) -> None:
    images = ("img-1", "img-2")
    events, bus = outbox(journal, images=images), FakeBus()
    await events.publish_once(bus)
    assert await events.publish_once(bus) == 0  # nothing new
    events.inventory_changed()
    events.connected()
    await events.publish_once(bus)
    assert bus.messages(Inventory) == [Inventory(site="dcn0", image_ids=images, message_id=m.message_id)
                                       for m in bus.messages(Inventory)]
    assert len(bus.messages(Inventory)) == 2
