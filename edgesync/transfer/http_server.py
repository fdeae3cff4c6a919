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
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from edgesync.errors import BadRequest, EdgesyncError, NotFound, RangeNotSatisfiable, StoreError
from edgesync.stores.base import ImageStore
from edgesync.transfer import compression
from edgesync.transfer.counters import ServedCounters
from edgesync.transfer.serving_limits import ServingLimits
from edgesync.transfer.shared import RangeKey, ReadRange, SharedRanges
from edgesync.transfer.wire import (
    ACCEPT_ENCODING_HEADER,
    CHUNK_DIGEST_HEADER,
    CORRUPT_CHUNKS_ENV,
    ENCODING_HEADER,
    MAX_RANGE_BYTES,
    MAX_SPANS,
    MAX_SPANS_REQUEST_BYTES,
    data_path,
    extents_path,
    manifest_path,
    sha256_hex,
    spans_path,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ServedCopy:
    """A published copy to serve: its store and, if known, an id of its
    content that no other copy shares (the hub gives the image's os_hash_value)."""

    store: ImageStore
    content_id: str | None = None


Lookup = Callable[[str], Awaitable[ImageStore | ServedCopy]]
ManifestLookup = Callable[[str], Awaitable[bytes]]
# (request, image_id): raises Unauthorized/Forbidden/NotFound unless the
# caller may read that image's copy here.
Authorize = Callable[[web.Request, str], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Which site a request comes from (None: not a site's agent), for ServingLimits.
Requester = Callable[[web.Request], str | None]

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
                lookup_reuse_s: float = LOOKUP_REUSE_S,
                manifests: ManifestLookup | None = None,
                limits: ServingLimits | None = None, requester: Requester | None = None) -> web.RouteTableDef:
    """The routes. `lookup(image_id)` returns the store holding the
    published copy, or a ServedCopy (or raises NotFound/Conflict); the
    extent map always asks it, a data range may reuse an answer up to
    `lookup_reuse_s` old. `authorize(request, image_id)` runs first on every
    request and raises Unauthorized/Forbidden/NotFound.
    `manifests(image_id)` answers a copy's encoded chunk manifest (or
    raises NotFound); without it the manifest route answers 404.
    Ranges of copies with a content id are shared (SharedRanges). What was
    served is counted into `counters` (the daemon's, for its metrics).
    Data requests (ranges, spans) are served under `limits`, per site as
    `requester(request)` names it (see serving_limits)."""
    routes = web.RouteTableDef()
    corrupt = CorruptFirstChunks.from_env()
    counters = counters if counters is not None else ServedCounters()
    shared = SharedRanges(counters=counters)
    lookups = _RecentLookups(lookup, lookup_reuse_s)
    limits = limits if limits is not None else ServingLimits()
    requester = requester or (lambda _request: None)

    @routes.get(extents_path("{image_id}"))
    @_json_errors
    async def get_extents(request: web.Request) -> web.StreamResponse:
        image_id = _canonical_uuid(request.match_info["image_id"])
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
        image_id = _canonical_uuid(request.match_info["image_id"])
        await authorize(request, image_id)
        offset, length = _range_params(request.query)
        encoding = _accepted_encoding(request)
        copy = await lookups.recent(image_id)

        async def load() -> ReadRange:
            body = await _read_span(copy.store, image_id, offset, length)
            return ReadRange(body, await sha256_hex(body), *await _compressed(body, encoding))

        async with limits.slot(requester(request)):
            answer = await _shared_or_not(copy, RangeKey(copy.content_id or "", offset, length), load)
            assert answer.sha256 is not None
            return await _answer(request, image_id, answer, encoding, length, {CHUNK_DIGEST_HEADER: answer.sha256})

    @routes.get(manifest_path("{image_id}"))
    @_json_errors
    async def get_manifest(request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["image_id"]
        await authorize(request, image_id)
        if manifests is None:
            raise NotFound(f"this server keeps no chunk manifests (image {image_id})")
        return web.Response(body=await manifests(image_id), content_type="application/octet-stream")

    @routes.post(spans_path("{image_id}"))
    @_json_errors
    async def post_spans(request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["image_id"]
        await authorize(request, image_id)
        spans = await _spans_params(request)
        encoding = _accepted_encoding(request)
        copy = await lookups.recent(image_id)
        total = sum(length for _, length in spans)

        async def load() -> ReadRange:
            body = await _read_spans(copy.store, image_id, spans)
            return ReadRange(body, None, *await _compressed(body, encoding))

        key = RangeKey(copy.content_id or "", spans[0][0], total, spans)
        async with limits.slot(requester(request)):
            return await _answer(request, image_id, await _shared_or_not(copy, key, load), encoding, total, {})

    async def _shared_or_not(copy: ServedCopy, key: RangeKey, load: Callable[[], Awaitable[ReadRange]]) -> ReadRange:
        return await (load() if copy.content_id is None else shared.get(key, load))

    async def _answer(request: web.Request, image_id: str, answer: ReadRange, encoding: str, length: int,
                      headers: dict[str, str]) -> web.StreamResponse:
        """Sent here, not by aiohttp after the handler: under the request's
        slot, at the egress rate."""
        frame = None
        if encoding:  # this asker offered zstd: the shared frame, or one made now if nobody tried
            frame = answer.zstd if answer.zstd_tried else (await _compressed(answer.data, encoding))[0]
        body = answer.data if frame is None else frame
        if frame is not None:
            headers[ENCODING_HEADER] = compression.NAME
        counters.served_bytes_total += length
        counters.served_ranges_total += 1
        counters.sent_bytes_total += len(body)
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/octet-stream"})
        return await limits.send(request, response, corrupt.apply(image_id, body))

    return routes


def _accepted_encoding(request: web.Request) -> str:
    offered = request.headers.get(ACCEPT_ENCODING_HEADER, "")
    return compression.NAME if compression.NAME in (e.strip() for e in offered.split(",")) else ""


async def _compressed(body: bytes, encoding: str) -> tuple[bytes | None, bool]:
    """(the zstd frame if worth it, whether it was tried)."""
    if encoding != compression.NAME:
        return None, False
    return await compression.compress(body), True


async def _read_span(store: ImageStore, image_id: str, offset: int, length: int) -> bytes:
    """The bytes. Stores answer short past the end; only then is the size
    asked for (one store call per range, not two)."""
    body = await store.read(image_id, offset, length)
    if len(body) != length:
        size = await store.size(image_id)
        if offset + length > size:
            raise _past_the_end(offset, length, size)
        raise StoreError(f"store {store.name} returned {len(body)} of {length} bytes at {offset} of image {image_id}")
    return body


async def _read_spans(store: ImageStore, image_id: str, spans: tuple[tuple[int, int], ...]) -> bytes:
    """The spans' bytes, one after the other. Spans close together (most of
    the bytes between the first and the last wanted) are read as one range:
    a store read costs far more than the bytes it skips."""
    first, end = spans[0][0], max(o + n for o, n in spans)
    wanted = sum(n for _, n in spans)
    if len(spans) > 1 and wanted * 2 >= end - first and min(o for o, _ in spans) == first:
        whole = await _read_span(store, image_id, first, end - first)
        view = memoryview(whole)
        return b"".join(view[o - first:o - first + n] for o, n in spans)
    return b"".join([await _read_span(store, image_id, o, n) for o, n in spans])


async def _spans_params(request: web.Request) -> tuple[tuple[int, int], ...]:
    if request.content_length is not None and request.content_length > MAX_SPANS_REQUEST_BYTES:
        raise BadRequest(f"a spans request may be at most {MAX_SPANS_REQUEST_BYTES} bytes")
    try:
        doc = json.loads(await request.content.read(MAX_SPANS_REQUEST_BYTES + 1))
        spans = tuple((int(o), int(n)) for o, n in doc["spans"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise BadRequest(f'send {{"spans": [[offset, length], …]}} as JSON ({exc})') from exc
    if not 0 < len(spans) <= MAX_SPANS:
        raise BadRequest(f"give between 1 and {MAX_SPANS} spans, got {len(spans)}")
    if any(o < 0 or n <= 0 for o, n in spans):
        raise BadRequest("every span needs an offset >= 0 and a length > 0")
    if sum(n for _, n in spans) > MAX_RANGE_BYTES:
        raise BadRequest(f"the spans may hold at most {MAX_RANGE_BYTES} bytes in all")
    return spans


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _canonical_uuid(image_id: str) -> str:
    """Image ids are canonical UUIDs (lower case, hyphenated): anything
    else names no image, and never reaches a store as a file or RBD name."""
    if not _UUID.fullmatch(image_id):
        raise BadRequest(f"the image id must be a canonical UUID (8-4-4-4-12 lower-case hex), got {image_id[:64]!r}")
    return image_id


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
    # ASCII digits only (str.isdigit takes '١٢'), and no more than 2^63 can hold.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) >= 1 << 63:
        raise BadRequest(f"{name} must be a non-negative integer below 2^63, got {raw[:40]!r}")
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
