"""SharedRanges: one read for every request of the same range, bounded and short-lived."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from edgesync.transfer.shared import RangeKey, ReadRange, SharedRanges

MiB = 1 << 20


class CountingLoader:
    """A range read that counts its calls and can be held open or made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next = False

    def loader(self, key: RangeKey):  # type: ignore[no-untyped-def]
        async def load() -> ReadRange:
            self.calls += 1
            await self.release.wait()
            if self.fail_next:
                self.fail_next = False
                raise OSError("the store failed")
            return ReadRange(bytes([key.offset % 251]) * 16, f"sha-{key.offset}")
        return load


def key(offset: int, length: int = 4 * MiB, content: str = "c1") -> RangeKey:
    return RangeKey(content, offset, length)


async def test_concurrent_and_later_requests_share_one_read() -> None:
    shared = SharedRanges()
    reads = CountingLoader()
    reads.release.clear()
    k = key(0)
    waiting = [asyncio.create_task(shared.get(k, reads.loader(k))) for _ in range(3)]
    await asyncio.sleep(0)
    reads.release.set()
    answers = await asyncio.gather(*waiting)
    later = await shared.get(k, reads.loader(k))
    assert reads.calls == 1
    assert answers == [later] * 3
    assert shared.counters.shared_ranges_total == 3


async def test_another_content_or_range_is_read_on_its_own() -> None:
    shared = SharedRanges()
    reads = CountingLoader()
    for k in (key(0), key(0, content="c2"), key(4 * MiB), key(0, length=MiB)):
        await shared.get(k, reads.loader(k))
    assert reads.calls == 4
    assert shared.counters.shared_ranges_total == 0


async def test_a_failed_read_is_not_kept() -> None:
    shared = SharedRanges()
    reads = CountingLoader()
    reads.fail_next = True
    k = key(0)
    with pytest.raises(OSError, match="the store failed"):
        await shared.get(k, reads.loader(k))
    assert (await shared.get(k, reads.loader(k))).sha256 == "sha-0"
    assert reads.calls == 2
    assert shared.bytes_held == k.length


async def test_a_request_that_goes_away_does_not_cancel_the_read_others_wait_for() -> None:
    shared = SharedRanges()
    reads = CountingLoader()
    reads.release.clear()
    k = key(0)
    leaving = asyncio.create_task(shared.get(k, reads.loader(k)))
    staying = asyncio.create_task(shared.get(k, reads.loader(k)))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    reads.release.set()
    assert (await staying).sha256 == "sha-0"
    assert leaving.cancelled()
    assert reads.calls == 1


async def test_memory_is_bounded_by_bytes_oldest_first() -> None:
    shared = SharedRanges(max_bytes=8 * MiB)
    reads = CountingLoader()
    for offset in (0, 4 * MiB, 8 * MiB):
        await shared.get(key(offset), reads.loader(key(offset)))
    assert shared.bytes_held == 8 * MiB
    await shared.get(key(8 * MiB), reads.loader(key(8 * MiB)))  # kept
    await shared.get(key(0), reads.loader(key(0)))  # evicted: read again
    assert reads.calls == 4


async def test_ranges_answered_twice_make_room_first() -> None:
    """Two sites drifting apart: what both had goes before what one still needs."""
    shared = SharedRanges(max_bytes=8 * MiB)
    reads = CountingLoader()
    for offset in (0, 4 * MiB):  # the leading site
        await shared.get(key(offset), reads.loader(key(offset)))
    await shared.get(key(4 * MiB), reads.loader(key(4 * MiB)))  # the other site, on the newest
    await shared.get(key(8 * MiB), reads.loader(key(8 * MiB)))  # the leader goes on: 4 MiB goes
    await shared.get(key(0), reads.loader(key(0)))  # the laggard still finds 0
    assert reads.calls == 3


async def test_ranges_answered_twice_are_kept_only_while_there_is_little_else() -> None:
    """Two sites in step: what both had goes at once beyond `keep_answered_bytes`."""
    shared = SharedRanges(max_bytes=64 * MiB, keep_answered_bytes=8 * MiB)
    reads = CountingLoader()
    for offset in range(0, 32 * MiB, 4 * MiB):
        for _site in range(2):
            await shared.get(key(offset), reads.loader(key(offset)))
    assert reads.calls == 8
    assert shared.bytes_held == 8 * MiB


async def test_an_evicted_range_is_freed_at_once() -> None:
    """Not held until its expiry timer fires: a copy of a whole image would
    otherwise keep every range it read for `ttl_s`."""
    shared = SharedRanges(max_bytes=4 * MiB, ttl_s=3600)
    reads = CountingLoader()
    first = weakref.ref(await shared.get(key(0), reads.loader(key(0))))
    await shared.get(key(4 * MiB), reads.loader(key(4 * MiB)))
    gc.collect()
    assert first() is None
    assert shared.bytes_held == 4 * MiB


async def test_ranges_are_dropped_after_their_time() -> None:
    shared = SharedRanges(ttl_s=0.01)
    reads = CountingLoader()
    await shared.get(key(0), reads.loader(key(0)))
    await asyncio.sleep(0.2)  # well past the ttl: the timer has run
    assert shared.bytes_held == 0
    await shared.get(key(0), reads.loader(key(0)))
    assert reads.calls == 2
