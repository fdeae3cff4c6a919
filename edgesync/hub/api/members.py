"""`/v2/images/{id}/members[/{member}]` and `/v2/schemas/member(s)` (hub/members.py has the rules)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edgesync.hub.api.context import caller_of, hub_of, json_body
from edgesync.hub.members import MemberService, member_json, new_member_id, new_status
from edgesync.hub.schemas import UUID_PATTERN, collection_schema, object_schema

routes = web.RouteTableDef()


def _service(request: web.Request) -> MemberService:
    hub = hub_of(request)
    return MemberService(hub.catalog, hub.images, hub.policy)


@routes.get("/v2/images/{image_id}/members")
async def list_members(request: web.Request) -> web.Response:
    members = await _service(request).list(caller_of(request), request.match_info["image_id"])
    return web.json_response({"members": [member_json(m) for m in members], "schema": "/v2/schemas/members"})


@routes.post("/v2/images/{image_id}/members")
async def add_member(request: web.Request) -> web.Response:
    member_id = new_member_id(await json_body(request))
    member = await _service(request).add(caller_of(request), request.match_info["image_id"], member_id)
    return web.json_response(member_json(member))  # 200, as Glance answers


@routes.get("/v2/images/{image_id}/members/{member_id}")
async def show_member(request: web.Request) -> web.Response:
    member = await _service(request).show(caller_of(request), request.match_info["image_id"],
                                          request.match_info["member_id"])
    return web.json_response(member_json(member))


@routes.put("/v2/images/{image_id}/members/{member_id}")
async def update_member(request: web.Request) -> web.Response:
    status = new_status(await json_body(request))
    member = await _service(request).set_status(caller_of(request), request.match_info["image_id"],
                                                request.match_info["member_id"], status)
    return web.json_response(member_json(member))


@routes.delete("/v2/images/{image_id}/members/{member_id}")
async def delete_member(request: web.Request) -> web.Response:
    await _service(request).remove(caller_of(request), request.match_info["image_id"],
                                   request.match_info["member_id"])
    return web.Response(status=204)


def member_schema() -> dict[str, Any]:
    """Glance's, property for property (glanceclient builds its member model from it)."""
    return object_schema("member", {
        "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
        "image_id": {"type": "string", "description": "An identifier for the image", "pattern": UUID_PATTERN},
        "created_at": {"type": "string", "description": "Date and time of image member creation"},
        "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
        "status": {"type": "string", "description": "The status of this image member",
                   "enum": ["pending", "accepted", "rejected"]},
        "schema": {"readOnly": True, "type": "string"},
    })


@routes.get("/v2/schemas/member")
async def schema_member(request: web.Request) -> web.Response:
    return web.json_response(member_schema())


@routes.get("/v2/schemas/members")
async def schema_members(request: web.Request) -> web.Response:
    return web.json_response(collection_schema("members", member_schema()))
