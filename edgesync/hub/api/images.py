"""`/v2/images…` and `/v2/stores/{store}/{id}`: thin HTTP over the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from edgesync.errors import BadRequest, NotFound, RangeNotSatisfiable
from edgesync.hub.api.context import allows, caller_of, hub_of, image_body, json_body
from edgesync.hub.api.image_filters import query_from
from edgesync.hub.api.import_request import parse_import_request
from edgesync.hub.api.middleware import error_response
from edgesync.hub.locations import LocationService, split_location_ops
from edgesync.hub.patch import DIALECTS
from edgesync.hub.serialize import task_json
from edgesync.hub.staging import refuse_declared_overrun

routes = web.RouteTableDef()

DEFAULT_LIMIT = 25
MAX_LIMIT = 1000


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    refuse_declared_overrun(request.content_length, _size_header(request, "x-openstack-image-size"),
                            hub_of(request).config.imports.max_image_size_bytes)
    async for chunk in request.content.iter_chunked(1024 * 1024):
        yield chunk


def _size_header(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    # ASCII digits only (str.isdigit takes '١٢'), below 2^63.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) >= 1 << 63:
        raise BadRequest(f"{name} must be a non-negative integer below 2^63, got {raw[:40]!r}")
    return int(raw)


# --- collection -----------------------------------------------------------------


@routes.post("/v2/images")
async def create_image(request: web.Request) -> web.Response:
    hub = hub_of(request)
    image = await hub.images.create(caller_of(request), await json_body(request))
    return web.json_response(image_body(request, image), status=201, headers={
        "Location": f"{hub.config.public_url}/v2/images/{image.id}",
        "OpenStack-image-import-methods": ",".join(hub.config.imports.enabled_methods),
        "OpenStack-image-store-ids": ",".join(hub.sites),
    })


@routes.get("/v2/images")
async def list_images(request: web.Request) -> web.Response:
    hub = hub_of(request)
    query = query_from(request)
    limit = _limit(request.query.get("limit"))
    query.marker, query.limit = request.query.get("marker"), limit + 1  # one more: is there a next page?
    try:
        images = await hub.images.list(caller_of(request), query)
    except NotFound as exc:  # the marker, as Glance answers it
        raise BadRequest(exc.message) from exc
    page = images[:limit]
    body: dict[str, Any] = {
        # Glance filters each image by get_image after paging; `next` follows the page as read.
        "images": [image_body(request, i) for i in page if allows(request, "get_image", i)],
        "first": "/v2/images", "schema": "/v2/schemas/images",
    }
    if len(images) > limit and page:
        params = [(k, v) for k, v in request.query.items() if k != "marker"]
        body["next"] = "/v2/images?" + urlencode([*params, ("marker", page[-1].id)])
    return web.json_response(body)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequest(f"limit must be an integer, got {raw!r}") from exc
    if limit < 0:
        raise BadRequest("limit must not be negative")
    return min(limit, MAX_LIMIT)


# --- one image --------------------------------------------------------------------


@routes.get("/v2/images/{image_id}")
async def show_image(request: web.Request) -> web.Response:
    image = await hub_of(request).images.get(caller_of(request), request.match_info["image_id"])
    return web.json_response(image_body(request, image))


@routes.patch("/v2/images/{image_id}")
async def update_image(request: web.Request) -> web.Response:
    dialect = DIALECTS.get(request.content_type)
    if dialect is None:
        allowed = ", ".join(sorted(DIALECTS))
        response = error_response(415, "Unsupported Media Type",
                                  f"Image PATCH expects Content-Type one of: {allowed} (got {request.content_type!r})")
        response.headers["Accept-Patch"] = allowed
        return response
    hub, caller, image_id = hub_of(request), caller_of(request), request.match_info["image_id"]
    rest, location_ops = split_location_ops(await json_body(request), dialect)
    image = await hub.images.update(caller, image_id, rest, dialect=dialect) if rest or not location_ops else None
    if location_ops:  # Nova's older way to add a snapshot's location
        await LocationService(hub).patch(caller, image_id, location_ops)
        image = await hub.images.get(caller, image_id)
    assert image is not None
    return web.json_response(image_body(request, image))


@routes.delete("/v2/images/{image_id}")
async def delete_image(request: web.Request) -> web.Response:
    await hub_of(request).images.delete(caller_of(request), request.match_info["image_id"])
    return web.Response(status=204)


@routes.put("/v2/images/{image_id}/tags/{tag}")
async def add_tag(request: web.Request) -> web.Response:
    hub, caller = hub_of(request), caller_of(request)
    image = await hub.images.get(caller, request.match_info["image_id"])
    tag = request.match_info["tag"]
    if tag not in image.tags:
        await hub.images.update(caller, image.id, [{"op": "replace", "path": "/tags", "value": [*image.tags, tag]}])
    return web.Response(status=204)


@routes.delete("/v2/images/{image_id}/tags/{tag}")
async def remove_tag(request: web.Request) -> web.Response:
    hub, caller = hub_of(request), caller_of(request)
    image = await hub.images.get(caller, request.match_info["image_id"])
    tag = request.match_info["tag"]
    if tag not in image.tags:
        raise web.HTTPNotFound(text=f"Image {image.id} has no tag {tag!r}")
    await hub.images.update(caller, image.id,
                            [{"op": "replace", "path": "/tags", "value": [t for t in image.tags if t != tag]}])
    return web.Response(status=204)


# --- data ---------------------------------------------------------------------------


@routes.put("/v2/images/{image_id}/stage")
async def stage(request: web.Request) -> web.Response:
    hub = hub_of(request)
    await hub.images.stage(caller_of(request), request.match_info["image_id"], _body_chunks(request),
                           _size_header(request, "x-openstack-image-size"))
    return web.Response(status=204)


@routes.put("/v2/images/{image_id}/file")
async def upload(request: web.Request) -> web.Response:
    hub, caller = hub_of(request), caller_of(request)
    image = await hub.images.get(caller, request.match_info["image_id"])
    await hub.importer.upload(image, caller, _body_chunks(request),
                              store=request.headers.get("X-Image-Meta-Store"),
                              expected_size=_size_header(request, "x-openstack-image-size"))
    return web.Response(status=204)


@routes.post("/v2/images/{image_id}/actions/deactivate")
async def deactivate(request: web.Request) -> web.Response:
    await hub_of(request).images.deactivate(caller_of(request), request.match_info["image_id"])
    return web.Response(status=204)


@routes.post("/v2/images/{image_id}/actions/reactivate")
async def reactivate(request: web.Request) -> web.Response:
    await hub_of(request).images.reactivate(caller_of(request), request.match_info["image_id"])
    return web.Response(status=204)


@routes.get("/v2/images/{image_id}/file")
async def download(request: web.Request) -> web.StreamResponse:
    hub = hub_of(request)
    image, site = await hub.images.open_data(caller_of(request), request.match_info["image_id"])
    if site is None:
        return web.Response(status=204)  # no data yet, as Glance answers
    size = image.size or 0
    start, end, partial = _byte_range(request.headers.get("Range"), size)
    response = web.StreamResponse(status=206 if partial else 200, headers={
        "Content-Type": "application/octet-stream",
        "Content-Length": str(end - start),
        "Accept-Ranges": "bytes",
    })
    if image.checksum and not partial:
        response.headers["Content-MD5"] = image.checksum
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    async for chunk in hub.images.read_range(site, image.id, start, end):
        await response.write(chunk)
    await response.write_eof()
    return response


def _byte_range(header: str | None, size: int) -> tuple[int, int, bool]:
    """One `bytes=a-b` / `bytes=a-` / `bytes=-n` range → [start, end)."""
    if not header:
        return 0, size, False
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise RangeNotSatisfiable(f"Only a single bytes range is supported, got {header!r}")
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
    except ValueError as exc:
        raise RangeNotSatisfiable(f"Malformed Range header {header!r}") from exc
    if start >= size or start >= end:
        raise RangeNotSatisfiable(f"Range {header!r} is outside the image's {size} bytes")
    return start, end, True


# --- import, tasks, stores ----------------------------------------------------------------


@routes.post("/v2/images/{image_id}/import")
async def import_image(request: web.Request) -> web.Response:
    hub, caller = hub_of(request), caller_of(request)
    image = await hub.images.get(caller, request.match_info["image_id"])
    req = parse_import_request(await json_body(request), list(hub.sites), hub.config.imports.enabled_methods,
                               header_store=request.headers.get("X-Image-Meta-Store"))
    await hub.importer.request_import(image, caller, req)
    return web.Response(status=202)


@routes.get("/v2/images/{image_id}/tasks")
async def image_tasks(request: web.Request) -> web.Response:
    hub, caller = hub_of(request), caller_of(request)
    image = await hub.images.get(caller, request.match_info["image_id"])
    tasks = await hub.catalog.tasks_for_image(image.id)
    return web.json_response({"tasks": [task_json(t) for t in tasks]})


@routes.delete("/v2/stores/{store}/{image_id}")
async def delete_from_store(request: web.Request) -> web.Response:
    await hub_of(request).images.delete_from_store(
        caller_of(request), request.match_info["store"], request.match_info["image_id"])
    return web.Response(status=204)
