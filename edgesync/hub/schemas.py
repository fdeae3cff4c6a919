"""JSON schemas in the shape Glance serves them (`/v2/schemas/...`):
clients (glanceclient, Horizon, the SDKs) build and validate requests from
them, so names, property types, `required`, `additionalProperties` and the
`links` templates follow Glance's."""

from __future__ import annotations

from typing import Any

UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"


def object_schema(name: str, properties: dict[str, Any], *, required: list[str] | None = None,
                  links: list[dict[str, str]] | None = None, definitions: dict[str, Any] | None = None,
                  additional: Any = False) -> dict[str, Any]:
    """A resource's schema; `additional`: False (Glance's Schema) or a schema
    for extra keys (its PermissiveSchema, e.g. `{"type": "string"}`)."""
    raw: dict[str, Any] = {"name": name, "properties": properties, "additionalProperties": additional}
    if definitions:
        raw["definitions"] = definitions
    if required:
        raw["required"] = required
    if links:
        raw["links"] = links
    return raw


def collection_schema(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """A list of `item`s with Glance's paging members and links; the item's
    definitions move up to the collection, as Glance's CollectionSchema does."""
    item = dict(item)
    definitions = item.pop("definitions", None)
    raw: dict[str, Any] = {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
    }
    if definitions:
        raw["definitions"] = definitions
    return raw


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


TASK_PROPERTIES: dict[str, Any] = {
    "id": _string("An identifier for the task", pattern=UUID_PATTERN),
    "type": _string("The type of task represented by this content",
                    enum=["import", "api_image_import", "location_import"]),
    "status": _string("The current status of this task", enum=["pending", "processing", "success", "failure"]),
    "input": {"type": ["null", "object"], "description": "The parameters required by task, JSON blob"},
    "result": {"type": ["null", "object"], "description": "The result of current task, JSON blob"},
    "owner": _string("An identifier for the owner of this task"),
    "message": _string("Human-readable informative message only included when appropriate (usually on failure)"),
    "image_id": _string("Image associated with the task"),
    "request_id": _string("Human-readable informative request-id"),
    "user_id": _string("User associated with the task"),
    "expires_at": {"type": ["null", "string"],
                   "description": "Datetime when this resource would be subject to removal"},
    "created_at": _string("Datetime when this resource was created"),
    "updated_at": _string("Datetime when this resource was updated"),
    "self": {"readOnly": True, "type": "string"},
    "schema": {"readOnly": True, "type": "string"},
}


def task_schema() -> dict[str, Any]:
    return object_schema("task", dict(TASK_PROPERTIES))


def tasks_schema() -> dict[str, Any]:
    """The listing shows task stubs: no input, result or message."""
    stub = {k: v for k, v in TASK_PROPERTIES.items() if k not in ("input", "result", "message")}
    return collection_schema("tasks", object_schema("task", stub))
