"""Every error as JSON, and token auth.

Errors are `{"error": {"code": N, "title": "...", "message": "..."}}`: the
code/title/message triple nested one level, as OpenStack services do, because
python-glanceclient reads an error by calling `.get("message")` on every
top-level value of the body, and crashes on a flat body's integer `code`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from edgesync.errors import EdgesyncError, Unauthorized
from edgesync.hub.auth import NOAUTH_CALLER, Authenticator
from edgesync.logs import log_context

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# /metrics too: Prometheus can't send X-Auth-Token, and it tells counts, not images.
UNAUTHENTICATED_PATHS = frozenset({"/", "/versions", "/healthz", "/metrics"})
CALLER_KEY = web.RequestKey("caller", object)


def error_response(status: int, title: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "title": title, "message": message}}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        with log_context(image_id=request.match_info.get("image_id")):
            return await handler(request)
    except EdgesyncError as exc:
        if exc.http_status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        return error_response(exc.http_status, exc.title, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"No such resource: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return error_response(exc.status, exc.reason, message)
    except json.JSONDecodeError as exc:
        return error_response(400, "Bad Request", f"The request body is not valid JSON: {exc}")


def auth_middleware(tokens: Authenticator | None) -> Middleware:
    """`tokens` None means the opt-in no-auth mode: everyone is an admin.
    Errors other than Unauthorized (Keystone unreachable: 503) go to json_errors."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNAUTHENTICATED_PATHS:
            return await handler(request)
        if tokens is None:
            request[CALLER_KEY] = NOAUTH_CALLER
        else:
            try:
                request[CALLER_KEY] = await tokens.authenticate(request.headers.get("X-Auth-Token"),
                                                                request.headers.get("X-Service-Token"))
            except Unauthorized as exc:
                return error_response(401, exc.title, exc.message)
        return await handler(request)

    return authenticate
