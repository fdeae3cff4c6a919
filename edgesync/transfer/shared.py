"""Ranges read once for several requests: the hub copying one image to many sites.

A copy to several edges starts every agent at once, and each asks the hub for
the same ranges at about the same time. Without sharing, the hub reads every
range from central's store and hashes it (sha256) once per site; with it, a
request finds the range in flight or just read, and waits for that read
instead: one store read and one hash per range, however many sites pull.

Entries are keyed by the copy's content id (the hub uses the image's
os_hash_value), so bytes of one image can never answer for another that later
got the same image id. Memory is bounded: ranges up to `max_bytes` (in flight
included), each dropped at the latest `ttl_s` after its read, so an idle hub
holds nothing. Ranges already answered more than once (two sites have had
them: likely every site that wants them) are kept only while they and the
rest take less than `keep_answered_bytes`; the room up to `max_bytes` goes to
ranges only one site has had, which a site that fell behind will still ask
for, so sites may drift apart by that much and still share.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edgesync.transfer.counters import ServedCounters

DEFAULT_MAX_BYTES = 128 << 20  # 32 ranges of 4 MiB: two busy agents drifted up to 25 apart
DEFAULT_KEEP_ANSWERED_BYTES = 32 << 20  # for a third site close behind the second
DEFAULT_TTL_S = 10.0


@dataclass(frozen=True)
class RangeKey:
    """A range (`offset`, `length` bytes), or the `spans` of a spans request
    (then `offset` is the first one's and `length` their sum). Not the
    encoding: sites that offer zstd and sites that don't (each decides by
    its own link) share one read."""

    content_id: str
    offset: int
    length: int
    spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class ReadRange:
    """A range's bytes, their sha256 (hex; None where the client checks a
    manifest instead) and their zstd frame: None if it was not tried
    (`zstd_tried` false: the first asker offered none) or not worth it."""

    data: bytes
    sha256: str | None
    zstd: bytes | None = None
    zstd_tried: bool = False


Loader = Callable[[], Awaitable[ReadRange]]


@dataclass(eq=False)
class _Entry:
    read: asyncio.Task[ReadRange]
    answers: int = 1
    expiry: asyncio.TimerHandle | None = None  # cancelled when dropped: it must not keep the bytes alive


class SharedRanges:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, ttl_s: float = DEFAULT_TTL_S,
                 counters: ServedCounters | None = None,
                 keep_answered_bytes: int = DEFAULT_KEEP_ANSWERED_BYTES) -> None:
        self.max_bytes = max_bytes
        self.keep_answered_bytes = keep_answered_bytes
        self.ttl_s = ttl_s
        self.counters = counters if counters is not None else ServedCounters()
        self._entries: OrderedDict[RangeKey, _Entry] = OrderedDict()
        self._bytes = 0

    async def get(self, key: RangeKey, load: Loader) -> ReadRange:
        """The range: from a read in flight or kept, else `load()`ed now.

        The read runs in its own task and each request awaits it shielded:
        a client that goes away doesn't cancel a read others wait for."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._start(key, load)
        else:
            self._entries.move_to_end(key)
            entry.answers += 1
            self.counters.shared_ranges_total += 1
            read = entry.read  # the entry may go now; this request still waits for its read
            self._evict()
            return await asyncio.shield(read)
        return await asyncio.shield(entry.read)

    def _start(self, key: RangeKey, load: Loader) -> _Entry:
        entry = _Entry(asyncio.ensure_future(load()))
        self._entries[key] = entry
        self._bytes += key.length
        entry.read.add_done_callback(lambda _: self._settled(key, entry))
        self._evict()
        return entry

    def _settled(self, key: RangeKey, entry: _Entry) -> None:
        read = entry.read
        if read.cancelled() or read.exception() is not None:
            self._drop(key, entry)  # a failed read is not kept: the next request tries again
        elif self._entries.get(key) is entry:
            entry.expiry = asyncio.get_running_loop().call_later(self.ttl_s, self._drop, key, entry)

    def _drop(self, key: RangeKey, entry: _Entry) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
            self._bytes -= key.length
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None

    def _evict(self) -> None:
        """Make room (see the module's docstring). Waiters of a dropped entry
        keep their reference to its read; later requests read again."""
        while self._bytes > self.keep_answered_bytes and (answered := self._answered()) is not None:
            self._drop(*answered)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._drop(*(self._answered() or next(iter(self._entries.items()))))

    def _answered(self) -> tuple[RangeKey, _Entry] | None:
        """The least recently used range answered more than once, if any.
        (A few dozen entries at most: a scan is cheap.)"""
        return next(((k, e) for k, e in self._entries.items() if e.answers > 1), None)

    @property
    def bytes_held(self) -> int:
        return self._bytes
