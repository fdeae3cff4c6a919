"""edgesync's own endpoints beside the Glance API.

* `GET /edgesync/v1/boot-location?availability_zone=AZ&image_id=ID[&copy=true]`:
  the location a compute node in AZ boots the image from — only ever the
  location in the store paired with that AZ (one AZ, one site, one store).
  If that store lacks the image and `copy=true`, a copy to it is started
  (the seeds' "copied automatically at instance launch") and the answer is
  202 with the copy's progress to poll; without `copy`, 404.
* `POST /edgesync/v1/sites/{site}/images`: register an image created at an
  edge site (its agent or an admin); it is copied to central at once, and a
  copy to any other edge is refused (409, hub first) until that lands. An
  id whose record is queued with no data (Nova's, made before its snapshot)
  is completed with the copy; any other existing id is a 409.
* `GET /edgesync/v1/sites`: each site, its AZ, role, store, whether it is up,
  work in flight and free space: what its agent last said (heartbeat age
  included), or for a store the hub operates itself, what the store says now;
  and how many deletes wait for the site's agent.
* `GET /edgesync/v1/tasks[?limit=N][&unfinished=true]`: the newest import
  and copy tasks of every image (an admin) or of the caller's project's
  images, with each store's state and bytes.
* `GET /edgesync/v1/pending-deletes[?site=S]` (admins): deletes sent to a
  site's agent and not confirmed yet — image id, site, since when, and the
  agent's reason if it refused one.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from edgesync.errors import BadRequest, NotFound
from edgesync.hub.api.context import caller_of, hub_of, image_body, json_body, shows_locations
from edgesync.hub.api.import_request import parse_import_request
from edgesync.hub.auth import require_admin
from edgesync.hub.serialize import task_json

routes = web.RouteTableDef()

DEFAULT_TASKS = 20
MAX_TASKS = 200


@routes.get("/edgesync/v1/boot-location")
async def boot_location(request: web.Request) -> web.Response:
    hub, caller = hub_of(request), caller_of(request)
    az = request.query.get("availability_zone")
    image_id = request.query.get("image_id")
    if not az or not image_id:
        raise BadRequest("Give availability_zone and image_id, e.g. ?availability_zone=dcn0&image_id=UUID")
    site = next((s for s in hub.config.sites if s.availability_zone == az), None)
    if site is None:
        zones = ", ".join(s.availability_zone for s in hub.config.sites)
        raise NotFound(f"No site is paired with availability zone {az!r}; known zones: {zones}")
    image = await hub.images.get(caller, image_id)
    location = image.location_in(site.name)
    if location is not None:
        body: dict[str, Any] = {"image_id": image.id, "availability_zone": az, "store": site.name,
                                "status": "available"}
        # As image JSON: a store's paths and URLs only with show_locations, for
        # whom the policy's get_image_location allows (admins, the service persona).
        if shows_locations(request, image):
            body["location"] = location.as_glance()
        return web.json_response(body)
    if request.query.get("copy", "false").lower() not in ("true", "1", "yes"):
        raise NotFound(
            f"Image {image.id} has no copy in store '{site.name}' (availability zone {az}); "
            "ask with copy=true to start one, or copy it with image-import --import-method copy-image"
        )
    holder = await hub.catalog.lock_holder(image.id)
    if holder is None:
        copy = {"method": {"name": "copy-image"}, "stores": [site.name], "all_stores_must_succeed": True}
        req = parse_import_request(copy, list(hub.sites), hub.config.imports.enabled_methods)
        await hub.importer.request_import(image, caller, req)
    return web.json_response({"image_id": image.id, "availability_zone": az, "store": site.name,
                              "status": "copying", "task_id": await hub.catalog.lock_holder(image.id)},
                             status=202)


@routes.post("/edgesync/v1/sites/{site}/images")
async def register_edge_image(request: web.Request) -> web.Response:
    """An image created at an edge site: recorded there, then copied to central."""
    hub, caller = hub_of(request), caller_of(request)
    site = request.match_info["site"]
    image = await hub.images.register_edge_image(caller, site, await json_body(request))
    task = await hub.importer.copy_to_central(image, caller, site)
    body = image_body(request, await hub.catalog.require_image(image.id))
    return web.json_response({"image": body, "task_id": task.id}, status=201)


@routes.get("/edgesync/v1/sites")
async def sites(request: web.Request) -> web.Response:
    hub = hub_of(request)
    # Copies the hub makes itself: the same job ids an agent reports in flight.
    open_tasks = await hub.catalog.tasks(unfinished_only=True, limit=MAX_TASKS)
    waiting = Counter(p.site for p in await hub.catalog.pending_deletes())
    body = []
    for site in hub.config.sites:
        entry: dict[str, Any] = {
            "name": site.name, "role": site.role, "availability_zone": site.availability_zone,
            "store_type": site.store.type,
        }
        hub_jobs = [f"{t.id}-{site.name}" for t in open_tasks if site.name in t.unfinished_stores]
        entry.update(await hub.sites[site.name].status(hub_jobs))
        entry["pending_deletes"] = waiting[site.name]
        body.append(entry)
    return web.json_response({"sites": body})


@routes.get("/edgesync/v1/tasks")
async def tasks(request: web.Request) -> web.Response:
    hub, caller = hub_of(request), caller_of(request)
    raw_limit = request.query.get("limit", str(DEFAULT_TASKS))
    # isascii: int() takes other scripts' digits; the length: int() refuses over 4,300 digits.
    plain = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4
    if not plain or not 1 <= int(raw_limit) <= MAX_TASKS:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_TASKS}, got {raw_limit!r}")
    unfinished = request.query.get("unfinished", "false").lower()
    if unfinished not in ("true", "false"):
        raise BadRequest(f"unfinished must be true or false, got {unfinished!r}")
    found = await hub.catalog.tasks(unfinished_only=unfinished == "true", limit=int(raw_limit),
                                    owner=None if caller.is_admin else caller.project)
    return web.json_response({"tasks": [task_json(t) for t in found]})


@routes.get("/edgesync/v1/pending-deletes")
async def pending_deletes(request: web.Request) -> web.Response:
    hub = hub_of(request)
    require_admin(caller_of(request), "list pending deletes")
    site = request.query.get("site")
    if site is not None and hub.config.site(site) is None:
        raise NotFound(f"No site named {site!r}; known sites: {', '.join(s.name for s in hub.config.sites)}")
    return web.json_response({"pending_deletes": [
        {"image_id": p.image_id, "site": p.site, "task_id": p.task_id,
         "since": datetime.fromtimestamp(p.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
         "last_error": p.last_error}
        for p in await hub.catalog.pending_deletes(site)]})
