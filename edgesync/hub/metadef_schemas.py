"""The metadef schemas (`/v2/schemas/metadefs/*`), shaped as Glance serves
them. Request bodies are validated against the same schemas, so what a
client reads is what the hub enforces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgesync.hub.schemas import collection_schema, object_schema

_TYPES = ["array", "boolean", "integer", "number", "object", "string", None]
_READ_ONLY_TIME = {"type": "string", "readOnly": True, "format": "date-time"}
_READ_ONLY = {"readOnly": True, "type": "string"}

PROPERTY_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 80},
    "title": {"type": "string"},
    "description": {"type": "string"},
    "operators": {"type": "array", "items": {"type": "string"}},
    "type": {"type": "string", "enum": _TYPES},
    "required": {"$ref": "#/definitions/stringArray"},
    "minimum": {"type": "number"},
    "maximum": {"type": "number"},
    "maxLength": {"$ref": "#/definitions/positiveInteger"},
    "minLength": {"$ref": "#/definitions/positiveIntegerDefault0"},
    "pattern": {"type": "string", "format": "regex"},
    "enum": {"type": "array"},
    "readonly": {"type": "boolean"},
    "default": {},
    "items": {"type": "object", "properties": {"type": {"type": "string", "enum": _TYPES},
                                               "enum": {"type": "array"}}},
    "maxItems": {"$ref": "#/definitions/positiveInteger"},
    "minItems": {"$ref": "#/definitions/positiveIntegerDefault0"},
    "uniqueItems": {"type": "boolean", "default": False},
    "additionalItems": {"type": "boolean"},
}


def definitions() -> dict[str, Any]:
    return {
        "positiveInteger": {"type": "integer", "minimum": 0},
        "positiveIntegerDefault0": {"allOf": [{"$ref": "#/definitions/positiveInteger"}, {"default": 0}]},
        "stringArray": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "property": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["title", "type"], "properties": dict(PROPERTY_FIELDS)}},
    }


_ASSOCIATION_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 80,
             "description": "Resource type names should be aligned with Heat resource types whenever possible"},
    "prefix": {"type": "string", "maxLength": 80,
               "description": "Specifies the prefix to use for the given resource type; must include the separator"},
    "properties_target": {"type": "string", "maxLength": 80,
                          "description": "Some resource types allow more than one key / value pair per instance"},
    "created_at": _READ_ONLY_TIME,
    "updated_at": _READ_ONLY_TIME,
}
_OBJECT_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 80},
    "description": {"type": "string"},
    "required": {"$ref": "#/definitions/stringArray"},
    "properties": {"$ref": "#/definitions/property"},
    "schema": _READ_ONLY, "self": _READ_ONLY,
    "created_at": _READ_ONLY_TIME, "updated_at": _READ_ONLY_TIME,
}
_TAG_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 80},
    "created_at": _READ_ONLY_TIME, "updated_at": _READ_ONLY_TIME,
}
_NAMESPACE_FIELDS: dict[str, Any] = {
    "namespace": {"type": "string", "maxLength": 80, "description": "The unique namespace text."},
    "display_name": {"type": "string", "maxLength": 80,
                     "description": "The user friendly name for the namespace. Used by UI if available."},
    "description": {"type": "string", "maxLength": 500,
                    "description": "Provides a user friendly description of the namespace."},
    "visibility": {"type": "string", "enum": ["public", "private"], "description": "Scope of namespace accessibility."},
    "protected": {"type": "boolean", "description": "If true, namespace will not be deletable."},
    "owner": {"type": "string", "maxLength": 255, "description": "Owner of the namespace."},
    "created_at": _READ_ONLY_TIME, "updated_at": _READ_ONLY_TIME,
    "schema": _READ_ONLY, "self": _READ_ONLY,
    "resource_type_associations": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "prefix": {"type": "string"}, "properties_target": {"type": "string"}}}},
    "properties": {"$ref": "#/definitions/property"},
    "objects": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "required": {"$ref": "#/definitions/stringArray"}, "properties": {"$ref": "#/definitions/property"}}}},
    "tags": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
}


def namespace_schema() -> dict[str, Any]:
    return object_schema("namespace", dict(_NAMESPACE_FIELDS), required=["namespace"], definitions=definitions())


def object_item_schema() -> dict[str, Any]:
    return object_schema("object", dict(_OBJECT_FIELDS), required=["name"], definitions=definitions())


def property_schema(*, require_name: bool = True) -> dict[str, Any]:
    required = ["type", "title", "name"] if require_name else ["type", "title"]
    return object_schema("property", dict(PROPERTY_FIELDS), required=required, definitions=definitions())


def tag_schema() -> dict[str, Any]:
    return object_schema("tag", dict(_TAG_FIELDS), required=["name"], definitions=definitions())


def tags_body_schema() -> dict[str, Any]:
    """The multi-tag create's body: {"tags": [{"name": …}, …]}."""
    item = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
            "additionalProperties": False}
    return object_schema("tags", {"tags": {"type": "array", "items": item}}, definitions=definitions())


def association_schema() -> dict[str, Any]:
    return object_schema("resource_type_association", dict(_ASSOCIATION_FIELDS), required=["name"])


def properties_collection_schema() -> dict[str, Any]:
    """Glance's DictCollectionSchema: properties keyed by name."""
    item = property_schema(require_name=False)
    defs = item.pop("definitions")
    return {
        "name": "properties",
        "properties": {
            "properties": {"type": "object", "additionalProperties": item},
            "first": {"type": "string"}, "next": {"type": "string"}, "schema": {"type": "string"},
        },
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
        "definitions": defs,
    }


SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "namespace": namespace_schema,
    "namespaces": lambda: collection_schema("namespaces", namespace_schema()),
    "object": object_item_schema,
    "objects": lambda: collection_schema("objects", object_item_schema()),
    "property": property_schema,
    "properties": properties_collection_schema,
    "tag": tag_schema,
    "tags": lambda: collection_schema("tags", tag_schema()),
    "resource_type": association_schema,
    "resource_types": lambda: collection_schema("resource_type_associations", association_schema()),
}
