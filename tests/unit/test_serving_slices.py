"""ServingLimits.send writes a body a slice at a time and lets the event
loop run between slices even with no egress limit: one whole 4 MiB write
per response (TLS encrypts it in the loop, in one go) to hundreds of sites
made loop turns of seconds that API requests waited out."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from edgesync.transfer.serving_limits import SLICE_BYTES, ServingLimits


class RecordingResponse:
    """What send() uses of a web.StreamResponse; keeps each write's size and
    how many turns the other task had taken by then."""

    def __init__(self, turns: list[int]) -> None:
        self.content_length: int | None = None
        self.writes: list[tuple[int, int]] = []
        self.body = bytearray()
        self.ended = False
        self._turns = turns

    async def prepare(self, request: Any) -> None:
        pass

    async def write(self, data: memoryview) -> None:
        self.writes.append((len(data), self._turns[0]))
        self.body += data

    async def write_eof(self) -> None:
        self.ended = True


async def ticker(turns: list[int]) -> None:
    while True:
        await asyncio.sleep(0)
        turns[0] += 1


async def send_alongside_a_ticker(limits: ServingLimits, body: bytes) -> RecordingResponse:
    turns = [0]
    response = RecordingResponse(turns)
    ticking = asyncio.create_task(ticker(turns))
    await asyncio.sleep(0)
    try:
        await limits.send(None, response, body)  # type: ignore[arg-type]
    finally:
        ticking.cancel()
    return response


async def test_an_unlimited_body_is_sent_in_slices_with_the_loop_free_between_them() -> None:
    body = bytes(range(256)) * (4 * SLICE_BYTES // 256 + 3)  # 4 slices and a short fifth
    response = await send_alongside_a_ticker(ServingLimits(), body)
    assert bytes(response.body) == body and response.ended and response.content_length == len(body)
    sizes = [size for size, _ in response.writes]
    assert sizes == [SLICE_BYTES] * 4 + [len(body) - 4 * SLICE_BYTES]
    turns_at_write = [turn for _, turn in response.writes]
    assert all(later > earlier for earlier, later in itertools.pairwise(turns_at_write)), turns_at_write


async def test_a_limited_body_is_sent_in_the_same_slices() -> None:
    body = b"x" * (2 * SLICE_BYTES + 1)
    limits = ServingLimits(egress_bytes_per_s=1e12)
    response = await send_alongside_a_ticker(limits, body)
    assert [size for size, _ in response.writes] == [SLICE_BYTES, SLICE_BYTES, 1]
    assert limits.sent_bytes == len(body)
