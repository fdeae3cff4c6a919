"""Typed access to the hub and the caller from a request."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from edgesync.errors import BadRequest, RequestTooLarge
from edgesync.hub.api.middleware import CALLER_KEY
from edgesync.hub.auth import Caller
from edgesync.hub.serialize import image_json
from edgesync.model import Image, ImageStatus

if TYPE_CHECKING:
    from edgesync.hub.app import Hub

HUB_KEY = web.AppKey("hub", object)


def hub_of(request: web.Request) -> Hub:
    return cast("Hub", request.app[HUB_KEY])


def caller_of(request: web.Request) -> Caller:
    return cast(Caller, request[CALLER_KEY])


def enforce(request: web.Request, rule: str, image: Image) -> None:
    """The hub's policy (Glance's rule names) on `image` for this request's
    caller: 403 if the caller may see the image and `rule` refuses it, 404 if
    the caller may not even see it (hub/policy.py, Policy.enforce_on_image)."""
    hub_of(request).policy.enforce_on_image(rule, caller_of(request), image)


def allows(request: web.Request, rule: str, image: Image) -> bool:
    return hub_of(request).policy.allows_on_image(rule, caller_of(request), image)


def shows_locations(request: web.Request, image: Image) -> bool:
    """`locations`/`direct_url` in the image's JSON: `show_locations` on, the
    policy's `get_image_location` allows it, and — as Glance — never for a
    deactivated image unless the caller is an admin."""
    hub, caller = hub_of(request), caller_of(request)
    if not hub.config.show_locations:
        return False
    if image.status == ImageStatus.DEACTIVATED and not caller.is_admin:
        return False
    return hub.policy.allows_on_image("get_image_location", caller, image)


def image_body(request: web.Request, image: Image) -> dict[str, Any]:
    """An image as this request's caller sees it in Glance's JSON."""
    return image_json(image, show_locations=shows_locations(request, image), central=hub_of(request).central)


async def json_body(request: web.Request) -> Any:
    limit = request.client_max_size
    if request.content_length is not None and request.content_length > limit:  # refused unread
        raise RequestTooLarge(f"The request body of {request.content_length} bytes is over the "
                              f"{limit} bytes a JSON body may have")
    raw = await request.read()
    if not raw:
        raise BadRequest("This request needs a JSON body")
    try:
        body = json.loads(raw)
        # A lone surrogate ("\ud800") is valid JSON but no text SQLite can store.
        json.dumps(body, ensure_ascii=False).encode()
        return body
    except UnicodeEncodeError as exc:
        raise BadRequest("The request body holds a lone UTF-16 surrogate (e.g. \\ud800); "
                         "send valid Unicode text") from exc
    except ValueError as exc:  # malformed, not UTF-8, or an integer over Python's 4,300 digits
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("The request body nests JSON arrays or objects too deeply; "
                         "no Glance request needs more than a few levels") from exc
