"""Unauthenticated version documents, the image schemas, and /v2/info/*."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from edgesync.config import CONTAINER_FORMATS
from edgesync.hub.api.context import caller_of, hub_of
from edgesync.hub.quota import MiB
from edgesync.model import ImageStatus

routes = web.RouteTableDef()

# The Glance v2 minor versions this API answers for; 2.17 is the newest we claim.
_CURRENT = "v2.17"
_SUPPORTED = [f"v2.{n}" for n in range(16, -1, -1)]


def _versions(request: web.Request) -> dict[str, Any]:
    base = hub_of(request).config.public_url
    href = [{"rel": "self", "href": f"{base}/v2/"}]
    docs = [{"id": _CURRENT, "status": "CURRENT", "links": href}]
    docs += [{"id": v, "status": "SUPPORTED", "links": href} for v in _SUPPORTED]
    return {"versions": docs}


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    # Glance answers version discovery at / with 300 Multiple Choices.
    return web.json_response(_versions(request), status=300)


@routes.get("/versions")
async def versions(request: web.Request) -> web.Response:
    return web.json_response(_versions(request))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def image_schema(disk_formats: tuple[str, ...]) -> dict[str, Any]:
    nullable_str = {"type": ["null", "string"]}
    ro = {"readOnly": True}
    props: dict[str, Any] = {
        "id": {"type": "string", "description": "An identifier for the image",
               "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
        "name": {**nullable_str, "maxLength": 255, "description": "Descriptive name for the image"},
        "status": {"type": "string", **ro, "enum": [s.value for s in ImageStatus]},
        "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"]},
        "protected": {"type": "boolean"},
        "os_hidden": {"type": "boolean"},
        "checksum": {**nullable_str, **ro, "maxLength": 32},
        "os_hash_algo": {**nullable_str, **ro, "maxLength": 64},
        "os_hash_value": {**nullable_str, **ro, "maxLength": 128},
        "owner": {**nullable_str, "maxLength": 255},
        "size": {"type": ["null", "integer"], **ro},
        "virtual_size": {"type": ["null", "integer"], **ro},
        "container_format": {**nullable_str, "enum": [None, *CONTAINER_FORMATS]},
        "disk_format": {**nullable_str, "enum": [None, *disk_formats]},
        "created_at": {"type": "string", **ro},
        "updated_at": {"type": "string", **ro},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
        "direct_url": {"type": "string", **ro},
        "min_ram": {"type": "integer"},
        "min_disk": {"type": "integer"},
        "self": {"type": "string", **ro},
        "file": {"type": "string", **ro},
        "stores": {"type": "string", **ro, "description": "Comma-separated stores holding the image"},
        "schema": {"type": "string", **ro},
        "locations": {"type": "array", "items": {
            "type": "object", "required": ["url", "metadata"],
            "properties": {"url": {"type": "string", "maxLength": 255}, "metadata": {"type": "object"}},
        }},
    }
    return {
        "name": "image",
        "properties": props,
        "additionalProperties": {"type": "string"},
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }


@routes.get("/v2/schemas/image")
async def schema_image(request: web.Request) -> web.Response:
    return web.json_response(image_schema(hub_of(request).config.imports.disk_formats))


@routes.get("/v2/schemas/images")
async def schema_images(request: web.Request) -> web.Response:
    return web.json_response({
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema(hub_of(request).config.imports.disk_formats)},
            "schema": {"type": "string"}, "first": {"type": "string"}, "next": {"type": "string"},
        },
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
    })


@routes.get("/v2/info/import")
async def info_import(request: web.Request) -> web.Response:
    return web.json_response({"import-methods": {
        "description": "Import methods available.", "type": "array",
        "value": list(hub_of(request).config.imports.enabled_methods),
    }})


@routes.get("/v2/info/stores")
async def info_stores(request: web.Request) -> web.Response:
    return web.json_response({"stores": [_store_entry(request, name) for name in hub_of(request).sites]})


@routes.get("/v2/info/stores/detail")
async def info_stores_detail(request: web.Request) -> web.Response:
    hub = hub_of(request)
    hub.policy.authorize("stores_info_detail", caller_of(request), {"project_id": caller_of(request).project})
    entries = []
    for name, site in hub.sites.items():
        entries.append({**_store_entry(request, name),
                        "type": site.store_type, "weight": 0, "properties": site.store_properties()})
    return web.json_response({"stores": entries})


@routes.get("/v2/info/usage")
async def info_usage(request: web.Request) -> web.Response:
    """The caller's project's usage, in Glance's shape and units (sizes in
    MiB); a limit of -1 is none. Only image_size_total has a limit here
    ([hub.quota]); the others are counted, not limited."""
    hub, project = hub_of(request), caller_of(request).project
    stored = await hub.images.quota.usage(project)
    counts = await hub.catalog.project_counts(project)
    staging = hub.images.staging
    staged = await asyncio.to_thread(lambda: sum(staging.staged_bytes(i) for i in counts.staging_ids))
    unlimited = -1
    return web.json_response({"usage": {
        "image_size_total": stored.as_glance(),
        "image_stage_total": {"limit": unlimited, "usage": staged // MiB},
        "image_count_total": {"limit": unlimited, "usage": counts.images},
        "image_count_uploading": {"limit": unlimited, "usage": counts.uploading},
    }})


def _store_entry(request: web.Request, name: str) -> dict[str, str]:
    hub = hub_of(request)
    site = hub.sites[name]
    entry = {"id": name, "description": site.description}
    if name == hub.central:
        entry["default"] = "true"
    if site.read_only:
        entry["read-only"] = "true"
    return entry
