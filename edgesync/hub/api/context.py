"""Typed access to the hub and the caller from a request."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from edgesync.errors import BadRequest
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
    raw = await request.read()
    if not raw:
        raise BadRequest("This request needs a JSON body")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc
