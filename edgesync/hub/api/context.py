"""Typed access to the hub and the caller from a request."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from edgesync.errors import BadRequest, RequestTooLarge
from edgesync.hub.api.middleware import CALLER_KEY
from edgesync.hub.auth import Caller

if TYPE_CHECKING:
    from edgesync.hub.app import Hub

HUB_KEY = web.AppKey("hub", object)


def hub_of(request: web.Request) -> Hub:
    return cast("Hub", request.app[HUB_KEY])


def caller_of(request: web.Request) -> Caller:
    return cast(Caller, request[CALLER_KEY])


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
