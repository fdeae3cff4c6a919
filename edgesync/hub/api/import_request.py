"""The body of `POST /v2/images/{id}/import`, checked as Glance checks it
(400 for a malformed body, 409 for a store the hub doesn't know), with its
older single-store form: an `x-image-meta-store` header (glanceclient's
`image-import --store`) where the body names no stores."""

from __future__ import annotations

from typing import Any

from edgesync.errors import BadRequest, Conflict
from edgesync.hub.imports import ImportRequest


def parse_import_request(body: Any, known_stores: list[str], enabled: tuple[str, ...],
                         header_store: str | None = None) -> ImportRequest:
    if not isinstance(body, dict) or not isinstance(body.get("method"), dict):
        raise BadRequest('The import body needs "method": {"name": …}')
    method = body["method"].get("name")
    if method not in enabled:
        raise BadRequest(f"Import method {method!r} is not available; use one of {', '.join(enabled)}")
    uri = body["method"].get("uri")
    if method == "web-download" and not isinstance(uri, str):
        raise BadRequest('web-download needs "method": {"name": "web-download", "uri": "http://…"}')
    stores, all_stores = body.get("stores"), body.get("all_stores", False)
    must_succeed = body.get("all_stores_must_succeed", True)
    if not isinstance(all_stores, bool) or not isinstance(must_succeed, bool):
        raise BadRequest("all_stores and all_stores_must_succeed must be true or false")
    if stores is not None and all_stores:
        raise BadRequest("Give either stores or all_stores, not both")
    if header_store is not None:
        if all_stores or stores is not None:
            raise BadRequest("The x-image-meta-store header can't be given with stores or all_stores in the body; "
                             "name the stores in one place")
        stores = [header_store]
    if stores is not None:
        stores = _store_names(stores, known_stores)
    return ImportRequest(method, uri, stores, all_stores, must_succeed)


def _store_names(stores: Any, known_stores: list[str]) -> list[str]:
    if not isinstance(stores, list) or not stores or not all(isinstance(s, str) for s in stores):
        raise BadRequest("stores must be a non-empty list of store names")
    for name in stores:
        if name not in known_stores:
            raise Conflict(f"Unknown store '{name}'; known stores: {', '.join(known_stores)}")
    return list(dict.fromkeys(stores))
