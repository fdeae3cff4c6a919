"""`/v2/metadefs/...` and `/v2/schemas/metadefs/*`: thin HTTP over
edgesync/hub/metadefs.py (policies, protection, validation, JSON)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from edgesync.catalog.metadefs import Item, Metadefs, NamespaceQuery
from edgesync.errors import BadRequest
from edgesync.hub import metadef_schemas as schemas
from edgesync.hub.api.context import caller_of, hub_of, json_body
from edgesync.hub.metadefs import (
    MetadefService,
    association_json,
    association_of,
    object_item,
    object_json,
    property_json,
    tag_json,
    validate,
)

routes = web.RouteTableDef()

NS = "/v2/metadefs/namespaces/{namespace}"
DEFAULT_LIMIT = 25
MAX_LIMIT = 1000


def service(request: web.Request) -> MetadefService:
    hub = hub_of(request)
    return MetadefService(Metadefs(hub.catalog), hub.policy)


def _ns(request: web.Request) -> str:
    return request.match_info["namespace"]


def _created(body: dict[str, Any], location: str) -> web.Response:
    return web.json_response(body, status=201, headers={"Location": location})


# --- namespaces -------------------------------------------------------------------


@routes.get("/v2/metadefs/namespaces")
async def list_namespaces(request: web.Request) -> web.Response:
    svc, caller, q = service(request), caller_of(request), request.query
    query = NamespaceQuery(visibility=q.get("visibility"), sort_key=q.get("sort_key", "created_at"),
                           sort_dir=q.get("sort_dir", "desc"), marker=q.get("marker"), limit=_limit(q.get("limit")),
                           resource_types=[r for r in q.get("resource_types", "").split(",") if r])
    if query.visibility not in (None, "public", "private"):
        raise BadRequest(f"Invalid visibility value: {query.visibility}")
    if query.sort_dir not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort direction: {query.sort_dir}")
    found = await svc.list_namespaces(caller, query)
    page = found[:query.limit]
    params = [(k, v) for k, v in q.items() if k != "marker"]
    body: dict[str, Any] = {
        "namespaces": [await svc.namespace_json(ns, detail=False) for ns in page],
        "first": "/v2/metadefs/namespaces" + (f"?{urlencode(params)}" if params else ""),
        "schema": "/v2/schemas/metadefs/namespaces",
    }
    if len(found) > query.limit and page:
        body["next"] = "/v2/metadefs/namespaces?" + urlencode([*params, ("marker", page[-1].namespace)])
    return web.json_response(body)


def _limit(raw: str | None) -> int:
    try:
        limit = DEFAULT_LIMIT if raw is None else int(raw)
    except ValueError as exc:
        raise BadRequest("limit param must be an integer") from exc
    if limit < 0:
        raise BadRequest("limit param must be positive")
    return min(limit, MAX_LIMIT)


@routes.post("/v2/metadefs/namespaces")
async def create_namespace(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.create_namespace(caller_of(request), await json_body(request))
    return _created(await svc.namespace_json(ns, detail=True), f"/v2/metadefs/namespaces/{ns.namespace}")


@routes.get(NS)
async def show_namespace(request: web.Request) -> web.Response:
    svc, caller = service(request), caller_of(request)
    ns = await svc.visible(caller, _ns(request))
    return web.json_response(await svc.namespace_json(ns, detail=True,
                                                      resource_type=request.query.get("resource_type")))


@routes.put(NS)
async def update_namespace(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.update_namespace(caller_of(request), _ns(request), await json_body(request))
    return web.json_response(await svc.namespace_json(ns, detail=False))


@routes.delete(NS)
async def delete_namespace(request: web.Request) -> web.Response:
    await service(request).delete_namespace(caller_of(request), _ns(request))
    return web.Response(status=204)


# --- objects ----------------------------------------------------------------------


@routes.get(NS + "/objects")
async def list_objects(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.visible(caller_of(request), _ns(request), "get_metadef_objects")
    objects = [object_json(ns, o) for o in await svc.db.items(ns, "object")]
    return web.json_response({"objects": objects, "schema": "v2/schemas/metadefs/objects"})


@routes.post(NS + "/objects")
async def create_object(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "add_metadef_object")
    body = validate(await json_body(request), schemas.object_item_schema(), "object")
    item = object_item(body)
    await svc.db.add_items(ns, [item])
    return _created(object_json(ns, await svc.db.item(ns, "object", item.name)),
                    f"/v2/metadefs/namespaces/{ns.namespace}/objects/{item.name}")


@routes.get(NS + "/objects/{name}")
async def show_object(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.visible(caller_of(request), _ns(request), "get_metadef_object")
    return web.json_response(object_json(ns, await svc.db.item(ns, "object", request.match_info["name"])))


@routes.put(NS + "/objects/{name}")
async def update_object(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "modify_metadef_object")
    body = validate(await json_body(request), schemas.object_item_schema(), "object")
    item = await svc.db.update_item(ns, "object", request.match_info["name"], object_item(body))
    return web.json_response(object_json(ns, item))


@routes.delete(NS + "/objects/{name}")
async def delete_object(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "delete_metadef_object", deleting=True)
    await svc.db.delete_items(ns, "object", request.match_info["name"])
    return web.Response(status=204)


# --- properties ---------------------------------------------------------------------


@routes.get(NS + "/properties")
async def list_properties(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.visible(caller_of(request), _ns(request), "get_metadef_properties")
    return web.json_response({"properties": {p.name: p.body for p in await svc.db.items(ns, "property")}})


def _property_item(body: dict[str, Any]) -> Item:
    return Item("property", body["name"], {k: v for k, v in body.items() if k != "name"})


@routes.post(NS + "/properties")
async def create_property(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "add_metadef_property")
    item = _property_item(validate(await json_body(request), schemas.property_schema(), "property"))
    await svc.db.add_items(ns, [item])
    return _created(property_json(item), f"/v2/metadefs/namespaces/{ns.namespace}/properties/{item.name}")


@routes.get(NS + "/properties/{name}")
async def show_property(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.visible(caller_of(request), _ns(request), "get_metadef_property")
    name = request.match_info["name"]
    prefix = request.query.get("resource_type") and next(
        (a.prefix for a in await svc.db.associations(ns) if a.resource_type == request.query["resource_type"]), None)
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    return web.json_response(property_json(await svc.db.item(ns, "property", name)))


@routes.put(NS + "/properties/{name}")
async def update_property(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "modify_metadef_property")
    item = _property_item(validate(await json_body(request), schemas.property_schema(), "property"))
    return web.json_response(property_json(await svc.db.update_item(ns, "property", request.match_info["name"],
                                                                    item)))


@routes.delete(NS + "/properties/{name}")
async def delete_property(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "remove_metadef_property", deleting=True)
    await svc.db.delete_items(ns, "property", request.match_info["name"])
    return web.Response(status=204)


# --- tags ---------------------------------------------------------------------------


@routes.get(NS + "/tags")
async def list_tags(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.visible(caller_of(request), _ns(request), "get_metadef_tags")
    return web.json_response({"tags": [tag_json(t) for t in await svc.db.items(ns, "tag")]})


@routes.post(NS + "/tags")
async def create_tags(request: web.Request) -> web.Response:
    """Several tags at once; they replace the namespace's tags unless
    `X-Openstack-Append: true` asks to add them (as Glance)."""
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "add_metadef_tags")
    body = validate(await json_body(request), schemas.tags_body_schema(), "tags")
    names = [t["name"] for t in body.get("tags", [])]
    if len(set(names)) != len(names):
        raise BadRequest("Duplicate tag names in the request: each tag is created once")
    append = request.headers.get("X-Openstack-Append", "").lower() == "true"
    await svc.db.add_items(ns, [Item("tag", n, {}) for n in names], replace_kind=None if append else "tag")
    return web.json_response({"tags": [{"name": n} for n in names]}, status=201)


@routes.delete(NS + "/tags")
async def delete_tags(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "delete_metadef_tags", deleting=True)
    await svc.db.delete_items(ns, "tag")
    return web.Response(status=204)


@routes.post(NS + "/tags/{name}")
async def create_tag(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "add_metadef_tag")
    name = request.match_info["name"]
    validate({"name": name}, schemas.tag_schema(), "tag")
    await svc.db.add_items(ns, [Item("tag", name, {})])
    return _created(tag_json(await svc.db.item(ns, "tag", name)),
                    f"/v2/metadefs/namespaces/{ns.namespace}/tags/{name}")


@routes.get(NS + "/tags/{name}")
async def show_tag(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.visible(caller_of(request), _ns(request), "get_metadef_tag")
    return web.json_response(tag_json(await svc.db.item(ns, "tag", request.match_info["name"])))


@routes.put(NS + "/tags/{name}")
async def update_tag(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "modify_metadef_tag")
    body = validate(await json_body(request), schemas.tag_schema(), "tag")
    item = await svc.db.update_item(ns, "tag", request.match_info["name"], Item("tag", body["name"], {}))
    return web.json_response(tag_json(item))


@routes.delete(NS + "/tags/{name}")
async def delete_tag(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "delete_metadef_tag", deleting=True)
    await svc.db.delete_items(ns, "tag", request.match_info["name"])
    return web.Response(status=204)


# --- resource types -------------------------------------------------------------------


@routes.get("/v2/metadefs/resource_types")
async def list_resource_types(request: web.Request) -> web.Response:
    svc, caller = service(request), caller_of(request)
    svc.policy.authorize("list_metadef_resource_types", caller, {"project_id": caller.project,
                                                                 "visibility": "public"})
    rows = await svc.db.resource_types()
    return web.json_response({"resource_types": [
        {"name": r["name"], "created_at": r["created_at"], "updated_at": r["updated_at"]} for r in rows]})


@routes.get(NS + "/resource_types")
async def list_associations(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.visible(caller_of(request), _ns(request), "get_metadef_resource_type")
    return web.json_response({"resource_type_associations": [
        association_json(a) for a in await svc.db.associations(ns)]})


@routes.post(NS + "/resource_types")
async def create_association(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "add_metadef_resource_type_association")
    association = association_of(validate(await json_body(request), schemas.association_schema(),
                                          "resource type association"))
    await svc.db.associate(ns, association)
    created = next(a for a in await svc.db.associations(ns) if a.resource_type == association.resource_type)
    return _created(association_json(created), f"/v2/metadefs/namespaces/{ns.namespace}/resource_types")


@routes.delete(NS + "/resource_types/{name}")
async def delete_association(request: web.Request) -> web.Response:
    svc = service(request)
    ns = await svc.writable(caller_of(request), _ns(request), "remove_metadef_resource_type_association",
                            deleting=True)
    await svc.db.dissociate(ns, request.match_info["name"])
    return web.Response(status=204)


# --- schemas -------------------------------------------------------------------------


@routes.get("/v2/schemas/metadefs/{name}")
async def metadef_schema(request: web.Request) -> web.Response:
    make = schemas.SCHEMAS.get(request.match_info["name"])
    if make is None:
        raise web.HTTPNotFound()
    return web.json_response(make())
