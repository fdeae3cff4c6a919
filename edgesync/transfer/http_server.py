"""The serving side of the transfer protocol: a published copy's extent map
and its bytes by range, each range with its sha256.

Mounted by the hub (agents pull from central) and by each agent (the hub
pulls edge-created images). The routes answer errors as JSON themselves, so
they behave the same with or without the hub's error middleware.

A lookup that names the copy's content (`ServedCopy.content_id`) lets
requests for the same range share one read and one sha256 (`SharedRanges`):
the hub does, so a copy to N sites reads central's copy once, not N times.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from edgesync.errors import BadRequest, EdgesyncError, RangeNotSatisfiable, StoreError
from edgesync.stores.base import ImageStore
from edgesync.transfer.counters import ServedCounters
from edgesync.transfer.shared import RangeKey, ReadRange, SharedRanges
from edgesync.transfer.wire import (
    CHUNK_DIGEST_HEADER,
    CORRUPT_CHUNKS_ENV,
    MAX_RANGE_BYTES,
    data_path,
    extents_path,
    sha256_hex,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ServedCopy:
    """A published copy to serve: its store and, if known, an id of its
    content that no other copy shares (the hub gives the image's os_hash_value)."""

    store: ImageStore
    content_id: str | None = None


Lookup = Callable[[str], Awaitable[ImageStore | ServedCopy]]
# (request, image_id): raises Unauthorized/Forbidden/NotFound unless the
# caller may read that image's copy here.
Authorize = Callable[[web.Request, str], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A copy asks for its image range after range. Looking the image up again for
# each range cost the hub five catalog queries per 4 MiB; a data request
# reuses a lookup this recent instead. An image deleted meanwhile fails at
# the store read, and the whole-image sha512 stands behind every copy anyway.
LOOKUP_REUSE_S = 1.0


class _RecentLookups:
    """`lookup`, with answers reused for `reuse_s` (failures are not kept)."""

    MAX_KEPT = 256

    def __init__(self, lookup: Lookup, reuse_s: float) -> None:
        self._lookup = lookup
        self._reuse_s = reuse_s
        self._answers: dict[str, tuple[float, ServedCopy]] = {}

    async def fresh(self, image_id: str) -> ServedCopy:
        found = await self._lookup(image_id)
        copy = found if isinstance(found, ServedCopy) else ServedCopy(found)
        now = time.monotonic()
        if len(self._answers) >= self.MAX_KEPT:
            self._answers = {k: v for k, v in self._answers.items() if now - v[0] < self._reuse_s}
        self._answers[image_id] = (now, copy)
        return copy

    async def recent(self, image_id: str) -> ServedCopy:
        kept = self._answers.get(image_id)
        if kept is not None and time.monotonic() - kept[0] < self._reuse_s:
            return kept[1]
        return await self.fresh(image_id)


def data_routes(lookup: Lookup, authorize: Authorize, *, counters: ServedCounters | None = None,
                lookup_reuse_s: float = LOOKUP_REUSE_S) -> web.RouteTableDef:
    """The two routes. `lookup(image_id)` returns the store holding the
    published copy, or a ServedCopy (or raises NotFound/Conflict); the
    extent map always asks it, a data range may reuse an answer up to
    `lookup_reuse_s` old. `authorize(request, image_id)` runs first on every
    request and raises Unauthorized/Forbidden/NotFound.
    Ranges of copies with a content id are shared (SharedRanges). What was
    served is counted into `counters` (the daemon's, for its metrics)."""
    routes = web.RouteTableDef()
    corrupt = CorruptFirstChunks.from_env()
    counters = counters if counters is not None else ServedCounters()
    shared = SharedRanges(counters=counters)
    lookups = _RecentLookups(lookup, lookup_reuse_s)

    @routes.get(extents_path("{image_id}"))
    @_json_errors
    async def get_extents(request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["image_id"]
        await authorize(request, image_id)
        store = (await lookups.fresh(image_id)).store
        size = await store.size(image_id)
        extents = await store.extents(image_id)
        return web.json_response({
            "image_id": image_id,
            "size": size,
            "extents": [[e.offset, e.length] for e in extents],
        })

    @routes.get(data_path("{image_id}"))
    @_json_errors
    async def get_data(request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["image_id"]
        await authorize(request, image_id)
        offset, length = _range_params(request.query)
        copy = await lookups.recent(image_id)
        if copy.content_id is None:
            answer = await _read_range(copy.store, image_id, offset, length)
        else:
            answer = await shared.get(RangeKey(copy.content_id, offset, length),
                                      lambda: _read_range(copy.store, image_id, offset, length))
        counters.served_bytes_total += length
        counters.served_ranges_total += 1
        return web.Response(
            body=corrupt.apply(image_id, answer.data),
            content_type="application/octet-stream",
            headers={CHUNK_DIGEST_HEADER: answer.sha256},
        )

    return routes


async def _read_range(store: ImageStore, image_id: str, offset: int, length: int) -> ReadRange:
    """The bytes and their sha256. Stores answer short past the end; only
    then is the size asked for (one store call per range, not two)."""
    body = await store.read(image_id, offset, length)
    if len(body) != length:
        size = await store.size(image_id)
        if offset + length > size:
            raise _past_the_end(offset, length, size)
        raise StoreError(f"store {store.name} returned {len(body)} of {length} bytes at {offset} of image {image_id}")
    return ReadRange(body, await sha256_hex(body))


def _range_params(query: Mapping[str, str]) -> tuple[int, int]:
    offset = _non_negative_int(query, "offset")
    length = _non_negative_int(query, "length")
    if not 0 < length <= MAX_RANGE_BYTES:
        raise BadRequest(f"length must be between 1 and {MAX_RANGE_BYTES} bytes, got {length}")
    return offset, length


def _non_negative_int(query: Mapping[str, str], name: str) -> int:
    raw = query.get(name)
    if raw is None:
        raise BadRequest(f"the query parameter {name} is required")
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


class _PastTheEnd(RangeNotSatisfiable):
    """A 416 that also tells the image's size, as RFC 9110 asks."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def _past_the_end(offset: int, length: int, size: int) -> _PastTheEnd:
    return _PastTheEnd(f"bytes {offset}..{offset + length} are past the end of the image ({size} bytes)", size)


def _json_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except EdgesyncError as exc:
            if exc.http_status >= 500:
                log.error("%s %s: %s", request.method, request.path, exc.message)
            response = error_response(exc.http_status, exc.title, exc.message)
            if isinstance(exc, _PastTheEnd):
                response.headers["Content-Range"] = f"bytes */{exc.size}"
            return response
        except web.HTTPException:
            raise
        except Exception as exc:
            # A JSON 500 the client can retry, rather than aiohttp's bare text.
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "Internal Server Error", f"serving {request.path} failed: {exc}")

    return wrapped


def error_response(status: int, title: str, message: str) -> web.Response:
    """The hub's error body (see edgesync.hub.api.middleware), repeated here
    so an agent serving data doesn't import the hub."""
    return web.json_response({"error": {"code": status, "title": title, "message": message}}, status=status)


class CorruptFirstChunks:
    """TEST-ONLY fault hook: flips one byte in each of the first N data
    responses, after their digest was computed, so the receiver must catch it.

    Armed only when `EDGESYNC_TEST_CORRUPT_CHUNKS` holds `N` (any image) or
    `N:IMAGE_ID` (only that image's responses count) with an integer N > 0
    when `data_routes()` runs; unset, empty or anything else leaves it inert.
    The image form lets a whole lab run with the hook armed while only the
    one test that asks for it sees corrupt ranges.
    """

    def __init__(self, count: int, image_id: str | None = None) -> None:
        self.remaining = count
        self.image_id = image_id

    @classmethod
    def from_env(cls) -> CorruptFirstChunks:
        raw = os.environ.get(CORRUPT_CHUNKS_ENV, "").strip()
        count_s, _, image_id = raw.partition(":")
        count = int(count_s) if count_s.isdigit() else 0
        if count > 0:
            log.warning("TEST-ONLY fault hook %s=%s: the next %d data responses%s will be corrupted",
                        CORRUPT_CHUNKS_ENV, raw, count, f" of image {image_id}" if image_id else "")
        return cls(count, image_id or None)

    def apply(self, image_id: str, body: bytes) -> bytes:
        if self.remaining <= 0 or not body or self.image_id not in (None, image_id):
            return body
        self.remaining -= 1
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0xFF
        return bytes(flipped)
