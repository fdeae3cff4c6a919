"""`/v2/images/{id}/locations`: Glance's location API (hub/locations.py does the work)."""

from __future__ import annotations

from aiohttp import web

from edgesync.errors import BadRequest
from edgesync.hub.api.context import caller_of, hub_of, json_body
from edgesync.hub.locations import LocationService

routes = web.RouteTableDef()


@routes.get("/v2/images/{image_id}/locations")
async def list_locations(request: web.Request) -> web.Response:
    service = LocationService(hub_of(request))
    return web.json_response(await service.locations(caller_of(request), request.match_info["image_id"]))


@routes.post("/v2/images/{image_id}/locations")
async def add_location(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body, dict) or "url" not in body:
        raise BadRequest('The body must be {"url": "rbd://<fsid>/<pool>/<image id>/snap", '
                         '"validation_data": {…}} (validation_data optional)')
    service = LocationService(hub_of(request))
    await service.add(caller_of(request), request.match_info["image_id"], body["url"], body.get("validation_data"))
    return web.Response(status=202)
