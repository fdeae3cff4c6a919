"""The pulling side of the transfer protocol: `HttpSource`, a `DataSource`
over HTTP, so `pump` copies from a remote site as from a local store.

Ranges come zstd-compressed when the server offers it, a range is worth
it and the link is slower than the compressor (`compression.LinkRate`;
`compress=False` asks for them as they are). Every range is verified
against its sha256 header; a corrupt range, a broken
connection or a 5xx/429 is fetched again after a capped, jittered backoff,
`max_attempts` times in all. What still fails is raised as a `TransferError`
that says whether retrying the whole task later may help (`retryable`):
the agent's task retry and its journal (resume by range) take it from there.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from edgesync.backoff import Backoff
from edgesync.errors import ChunkDigestMismatch, TransferError
from edgesync.observer import NO_OBSERVER, CopyObserver
from edgesync.stores.base import Extent
from edgesync.tls import is_certificate_error
from edgesync.transfer import compression
from edgesync.transfer.ratelimit import RateLimiter
from edgesync.transfer.wire import (
    ACCEPT_ENCODING_HEADER,
    AUTH_HEADER,
    CHUNK_DIGEST_HEADER,
    ENCODING_HEADER,
    data_path,
    extents_path,
    manifest_path,
    sha256_hex,
    spans_path,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# No total deadline: a rate-limited 16 MiB range may legitimately take long.
# A peer that goes silent is what must be caught, per socket read.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)
# An error body is a short JSON message; never hold more of it than this.
MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True)
class ExtentMap:
    size: int
    extents: tuple[Extent, ...]


class HttpSource:
    """A published copy on another site, read over HTTP by range.

    Counters: `bytes_fetched` (data bodies received as they came, zstd
    frames where compressed, refetches and broken bodies included; the small
    extent-map JSON is not counted), `data_bytes_fetched` (the data bytes
    of the bodies received whole, decompressed), `refetches`
    (data ranges requested again) and `digest_mismatches`; `observer` is told
    the same as it happens (the daemons' metrics).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        image_id: str,
        *,
        token: str | None,
        limiter: RateLimiter | None = None,
        max_attempts: int = 6,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        observer: CopyObserver = NO_OBSERVER,
        compress: bool = True,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.image_id = image_id
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {AUTH_HEADER: token} if token else {}
        # zstd is offered for data while the link is slower than the compressor.
        self.link = compression.LinkRate() if compress else None
        self._limiter = limiter
        self._max_attempts = max_attempts
        self._observer = observer
        # Built once here so a bad pair of delays fails now, not at the first retry.
        self._new_backoff = functools.partial(Backoff, initial_s=backoff_initial_s, max_s=backoff_max_s)
        self._new_backoff()
        self._map: ExtentMap | None = None
        self._map_lock = asyncio.Lock()
        self.bytes_fetched = 0
        self.data_bytes_fetched = 0
        self.refetches = 0
        self.digest_mismatches = 0

    # -- DataSource

    async def size(self) -> int:
        return (await self._extent_map()).size

    async def extents(self) -> list[Extent]:
        return list((await self._extent_map()).extents)

    async def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (at most `MAX_RANGE_BYTES`: pump asks for 4 MiB)."""
        if length == 0:
            return b""
        return await self._retrying(
            lambda: self._fetch_range(offset, length),
            what=f"bytes {offset}+{length} of image {self.image_id}",
            on_retry=self._count_refetch,
        )

    async def read_spans(self, spans: list[tuple[int, int]]) -> bytes:
        """The bytes of `spans` (offset, length), one after the other, in one
        request; unchecked: the caller checks them against the manifest."""
        return await self._retrying(
            lambda: self._fetch_spans(spans),
            what=f"{len(spans)} spans from {spans[0][0]} of image {self.image_id}",
            on_retry=self._count_refetch,
        )

    async def manifest(self) -> bytes | None:
        """The copy's encoded chunk manifest, None if the server has none (404)."""
        try:
            return await self._retrying(self._fetch_manifest, what=f"the manifest of image {self.image_id}")
        except TransferError as exc:
            if exc.status == 404:
                return None
            raise

    async def _fetch_manifest(self) -> bytes:
        url = self._base_url + manifest_path(self.image_id)
        try:
            async with self._session.get(url, headers=self._headers, timeout=REQUEST_TIMEOUT) as resp:
                if resp.status != 200:
                    raise await _refusal(resp)
                return await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _network_error(exc) from exc

    async def _fetch_spans(self, spans: list[tuple[int, int]]) -> bytes:
        length = sum(n for _, n in spans)
        if self._limiter is not None:
            await self._limiter.acquire(length)
        url = self._base_url + spans_path(self.image_id)
        try:
            async with self._session.post(url, json={"spans": spans}, headers=self._data_headers(),
                                          timeout=REQUEST_TIMEOUT) as resp:
                if resp.status != 200:
                    raise await _refusal(resp)
                return await self._read_data(resp, length)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _network_error(exc) from exc

    def _data_headers(self) -> dict[str, str]:
        if self.link is not None and self.link.worth_compressing:
            return {**self._headers, ACCEPT_ENCODING_HEADER: compression.NAME}
        return self._headers

    async def _read_data(self, resp: aiohttp.ClientResponse, length: int) -> bytes:
        """The `length` data bytes of a response, decompressed if it came compressed."""
        encoding = resp.headers.get(ENCODING_HEADER, "")
        if not encoding:
            if resp.content_length is not None and resp.content_length != length:
                raise TransferError(f"the server announced {resp.content_length} bytes")
            data = await self._read_body(resp, length, exact=True)
        elif encoding == compression.NAME:
            frame = await self._read_body(resp, length, exact=False)
            try:
                data = await compression.decompress(frame, length)
            except ChunkDigestMismatch:
                self.digest_mismatches += 1
                self._observer.digest_mismatch("chunk")
                raise
        else:
            raise TransferError(f"the server sent an encoding it wasn't offered: {encoding!r}", retryable=False)
        self.data_bytes_fetched += len(data)
        return data

    # -- the extent map, fetched once

    async def _extent_map(self) -> ExtentMap:
        async with self._map_lock:
            if self._map is None:
                self._map = await self._retrying(self._fetch_map, what=f"the extent map of image {self.image_id}")
            return self._map

    async def _fetch_map(self) -> ExtentMap:
        url = self._base_url + extents_path(self.image_id)
        try:
            async with self._session.get(url, headers=self._headers, timeout=REQUEST_TIMEOUT) as resp:
                if resp.status != 200:
                    raise await _refusal(resp)
                body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _network_error(exc) from exc
        return _parse_extent_map(body, self.image_id)

    # -- ranges

    async def _fetch_range(self, offset: int, length: int) -> bytes:
        if self._limiter is not None:
            await self._limiter.acquire(length)
        url = self._base_url + data_path(self.image_id)
        params = {"offset": str(offset), "length": str(length)}
        try:
            async with self._session.get(url, params=params, headers=self._data_headers(),
                                         timeout=REQUEST_TIMEOUT) as resp:
                if resp.status != 200:
                    raise await _refusal(resp)
                expected = resp.headers.get(CHUNK_DIGEST_HEADER)
                if not expected:
                    raise TransferError(f"the answer has no {CHUNK_DIGEST_HEADER} header", retryable=False)
                body = await self._read_data(resp, length)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _network_error(exc) from exc
        if await sha256_hex(body) != expected.strip().lower():
            self.digest_mismatches += 1
            self._observer.digest_mismatch("chunk")
            raise ChunkDigestMismatch("the bytes received don't match their sha256")
        return body

    async def _read_body(self, resp: aiohttp.ClientResponse, length: int, *, exact: bool) -> bytes:
        """Exactly `length` bytes (at most, unless `exact`), counted as they
        arrive; a server sending more is cut off rather than buffered."""
        pieces: list[bytes] = []
        received = 0
        started = time.monotonic()
        async for piece in resp.content.iter_any():
            received += len(piece)
            self.bytes_fetched += len(piece)
            self._observer.received(len(piece))
            if received > length:
                raise TransferError(f"the server sent more than the {length} bytes asked for")
            pieces.append(piece)
        if exact and received != length:
            raise TransferError(f"the body ended after {received} of {length} bytes")
        if self.link is not None:
            self.link.observe(received, time.monotonic() - started)
        return b"".join(pieces)

    def _count_refetch(self) -> None:
        self.refetches += 1

    # -- retries

    async def _retrying(
        self, attempt: Callable[[], Awaitable[T]], *, what: str, on_retry: Callable[[], None] | None = None
    ) -> T:
        """`attempt()` until it succeeds, fails for good, or `max_attempts` ran out."""
        backoff = self._new_backoff()
        for number in range(1, self._max_attempts + 1):
            try:
                return await attempt()
            except TransferError as exc:
                if not exc.retryable:
                    raise _about(exc, f"{self._base_url}: {what}: {exc.message}") from exc
                if number == self._max_attempts:
                    raise _about(exc, f"{self._base_url}: {what}: {exc.message} "
                                      f"(gave up after {number} attempts)") from exc
                delay = backoff.next_delay_s()
                log.warning("%s: %s: %s; attempt %d of %d in %.2fs",
                            self._base_url, what, exc.message, number + 1, self._max_attempts, delay)
                await asyncio.sleep(delay)
                if on_retry is not None:
                    on_retry()
        raise AssertionError("unreachable")


def _about(exc: TransferError, message: str) -> TransferError:
    """The same error (same class, status, retryability), saying what failed."""
    return type(exc)(message, status=exc.status, retryable=exc.retryable)


def _network_error(exc: BaseException) -> TransferError:
    if isinstance(exc, TimeoutError):
        return TransferError("the server went silent (timeout)")
    if is_certificate_error(exc):  # a wrong CA or certificate: retrying can't fix it
        return TransferError(f"the server's TLS certificate does not verify: {exc}", retryable=False)
    return TransferError(f"{type(exc).__name__}: {exc}")


async def _refusal(resp: aiohttp.ClientResponse) -> TransferError:
    """A non-200 answer as an error: the server's own message, retryable
    only for what may pass (5xx, 429 Too Many Requests)."""
    retryable = resp.status >= 500 or resp.status == 429
    message = _error_message(await _read_at_most(resp, MAX_ERROR_BODY)) or resp.reason or "no message"
    return TransferError(f"HTTP {resp.status}: {message}", status=resp.status, retryable=retryable)


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    pieces: list[bytes] = []
    received = 0
    async for piece in resp.content.iter_any():
        pieces.append(piece[:limit - received])
        received += len(pieces[-1])
        if received >= limit:
            break
    return b"".join(pieces)


def _error_message(body: bytes) -> str:
    """`error.message` of a JSON error body, else the body as text."""
    try:
        doc: Any = json.loads(body)
        return str(doc["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:500]


def _parse_extent_map(body: bytes, image_id: str) -> ExtentMap:
    """Checked, so a confused server can't make `pump` write out of bounds."""
    try:
        doc: Any = json.loads(body)
        size = doc["size"]
        extents = tuple(Extent(int(off), int(length)) for off, length in doc["extents"])
        valid = isinstance(size, int) and size >= 0 and _well_formed(extents, size)
    except (ValueError, KeyError, TypeError) as exc:
        raise TransferError(f"the extent map is not valid JSON of the expected shape: {exc}", retryable=False) from exc
    if not valid:
        raise TransferError(f"the extent map of image {image_id} is inconsistent (size {size})", retryable=False)
    return ExtentMap(size, extents)


def _well_formed(extents: tuple[Extent, ...], size: int) -> bool:
    """Sorted, non-overlapping, non-empty ranges inside [0, size)."""
    previous_end = 0
    for extent in extents:
        if extent.offset < previous_end or extent.length <= 0 or extent.end > size:
            return False
        previous_end = extent.end
    return True
