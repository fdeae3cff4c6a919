"""A site's bandwidth limit: one token bucket shared by all its transfers."""

from __future__ import annotations

import asyncio
import time

# Default burst: this many seconds of the rate, so the credit a site builds
# up while idle can't turn into a long spike over its link.
DEFAULT_BURST_S = 0.25


class RateLimiter:
    """Token bucket in bytes. `acquire(n)` waits until `n` bytes may go.

    The bucket starts empty (the rate holds from the first byte) and fills at
    `bytes_per_s` up to `burst_bytes`. A request larger than what is in the
    bucket takes it into debt and sleeps until the debt is paid; callers that
    come later wait behind that debt, so concurrent transfers are served in
    arrival order and together never exceed the rate. `bytes_per_s <= 0`
    means unlimited.
    """

    def __init__(self, bytes_per_s: float, burst_bytes: int | None = None) -> None:
        self.bytes_per_s = bytes_per_s
        self.burst_bytes = burst_bytes if burst_bytes is not None else int(bytes_per_s * DEFAULT_BURST_S)
        self._tokens = 0.0
        self._stamp = time.monotonic()

    @property
    def unlimited(self) -> bool:
        return self.bytes_per_s <= 0

    async def acquire(self, n: int) -> None:
        if self.unlimited or n <= 0:
            return
        self._refill()
        self._tokens -= n
        if self._tokens >= 0:
            return
        try:
            await asyncio.sleep(-self._tokens / self.bytes_per_s)
        except asyncio.CancelledError:
            # The bytes won't be sent: give them back, or the site would
            # lose bandwidth to every cancelled transfer.
            self._tokens += n
            raise

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst_bytes), self._tokens + (now - self._stamp) * self.bytes_per_s)
        self._stamp = now
