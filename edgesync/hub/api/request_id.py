"""`x-openstack-request-id`: one id per request, on every response and on
every log line logged while the request runs.

An incoming `X-OpenStack-Request-ID` of the form `req-<uuid>` is kept (a
client or an upstream service traces its request under that id); anything
else — missing, malformed, too long — is replaced by a fresh one, so a client
can't put arbitrary text into the hub's logs. Tasks started by the request
record it as `request_id` (the log context carries it to them).
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from edgesync.hub.api.middleware import Handler
from edgesync.logs import log_context

HEADER = "x-openstack-request-id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_WELL_FORMED = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


def request_id_for(incoming: str | None) -> str:
    if incoming is not None and _WELL_FORMED.match(incoming):
        return incoming
    return new_request_id()


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_for(request.headers.get(HEADER))
    request[REQUEST_ID_KEY] = request_id
    with log_context(request_id=request_id):
        return await handler(request)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: streamed bodies (downloads) are prepared inside
    their handler, so the header is added here, not after the handler returns."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[HEADER] = request_id
