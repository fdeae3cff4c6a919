"""zstd for ranges on the wire: the only module importing `zstandard`.

Level 1: on the machine this project runs on it compresses filesystem data
(/usr/share) at about 670 MB/s on one core to 17 %, and gives up on random
data at about 9 GB/s, while decompression runs at 2.5 GB/s. Either is far
above what a WAN link of a few hundred Mbit/s carries, so on a link the
copy only gets faster; on loopback, where the copy is CPU-bound, the hub
compresses each range once for every site pulling it (shared reads) and
incompressible ranges cost almost nothing. Higher levels buy a few percent
of ratio for half the speed; negative ones lose ratio and are no faster here.

A range is sent compressed only when that saves at least 1/16 of it, and
only to a client that offers it; a client offers it only while the link
delivers less than `OFFER_BELOW_BYTES_PER_S` (`LinkRate`): compression pays
only on a link slower than the compressor, so on loopback or a fast LAN the
ranges go raw and compression never makes a copy slower than sending raw.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import deque

import zstandard

from edgesync.errors import ChunkDigestMismatch

NAME = "zstd"
LEVEL = 1
# Below this a range is sent as it is: the frame and the thread hop cost more than they save.
MIN_BYTES = 4096
_THREAD_BYTES = 64 * 1024
# 2 Gbit/s: well under what level 1 compresses on one core (~670 MB/s of
# filesystem data), since the hub's cores are shared by every site pulling.
OFFER_BELOW_BYTES_PER_S = 250_000_000
# A body shorter than this says more about latency than about the link.
_MEASURED_BYTES = 256 * 1024
# Bodies the rate is the median of: a few outliers among them don't move it.
_RECENT = 5


class LinkRate:
    """The rate at which response bodies arrive (bytes on the wire per second
    from the first to the last): the median of the last `_RECENT` bodies; a
    client offers zstd while it is unknown or below `OFFER_BELOW_BYTES_PER_S`.
    Measured on whatever comes, raw or compressed, so a link that slows down
    gets compression back.

    A median, not a moving average: a body that was already in the socket's
    buffer when it was read (the agent busy elsewhere meanwhile) measures the
    reader, not the link — on a 200 Mbit/s WAN link a 260 KiB frame "arrived"
    at 1.4 GB/s — and one such reading in a moving average turned compression
    off for the next several 4 MiB ranges, sent raw across the slow link."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=_RECENT)

    def observe(self, wire_bytes: int, seconds: float) -> None:
        if wire_bytes < _MEASURED_BYTES or seconds <= 0:
            return
        self._recent.append(wire_bytes / seconds)

    @property
    def bytes_per_s(self) -> float | None:
        return statistics.median(self._recent) if self._recent else None

    @property
    def worth_compressing(self) -> bool:
        rate = self.bytes_per_s
        return rate is None or rate < OFFER_BELOW_BYTES_PER_S


def _compress(data: bytes) -> bytes | None:
    out: bytes = zstandard.ZstdCompressor(level=LEVEL).compress(data)
    return out if len(out) <= len(data) - len(data) // 16 else None


def _decompress(frame: bytes, length: int) -> bytes:
    try:
        # A frame that states its size is decompressed to that size whatever
        # max_output_size says: check the statement first.
        stated = zstandard.frame_content_size(frame)
        if stated not in (-1, length):
            raise ChunkDigestMismatch(f"the zstd frame says it holds {stated} bytes, not {length}")
        out: bytes = zstandard.ZstdDecompressor().decompress(frame, max_output_size=length)
    except zstandard.ZstdError as exc:
        raise ChunkDigestMismatch(f"the zstd frame does not decompress: {exc}") from exc
    if len(out) != length:
        raise ChunkDigestMismatch(f"the zstd frame holds {len(out)} bytes, not {length}")
    return out


async def compress(data: bytes) -> bytes | None:
    """`data` as one zstd frame, or None when it doesn't compress enough to be worth it."""
    if len(data) < MIN_BYTES:
        return None
    if len(data) < _THREAD_BYTES:
        return _compress(data)
    return await asyncio.to_thread(_compress, data)


async def decompress(frame: bytes, length: int) -> bytes:
    """The `length` bytes in `frame` (never more are produced: a hostile
    frame can't blow up memory). ChunkDigestMismatch if it isn't that."""
    if length < _THREAD_BYTES:
        return _decompress(frame, length)
    return await asyncio.to_thread(_decompress, frame, length)
