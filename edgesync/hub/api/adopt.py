"""`POST /edgesync/v1/adopt/images` (admins): adopt one image from another image service.

The body is the source's image JSON with its members and how to check its
copies; the answer is the image's adoption report (`edgesync.adopt.service`).
`edgesync adopt --from-glance URL` calls it once per image the source has.
"""

from __future__ import annotations

from aiohttp import web

from edgesync.hub.api.context import caller_of, hub_of, json_body

routes = web.RouteTableDef()


@routes.post("/edgesync/v1/adopt/images")
async def adopt_image(request: web.Request) -> web.Response:
    hub = hub_of(request)
    report = await hub.adopter.adopt(caller_of(request), await json_body(request))
    return web.json_response(report)
