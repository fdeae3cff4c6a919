"""Glance's image PATCH (`application/openstack-images-v2.1-json-patch`).

Turns a list of add/replace/remove operations into one set of changes to an
image, refusing what Glance refuses: read-only and reserved (`os_glance_*`)
attributes (403), replacing or removing a property that isn't there (409),
values of the wrong type (400).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgesync.errors import BadRequest, Conflict, Forbidden
from edgesync.model import RESERVED_PREFIX, Image, ImageStatus, Visibility

READ_ONLY = frozenset({
    "id", "status", "size", "virtual_size", "checksum", "os_hash_algo",
    "os_hash_value", "created_at", "updated_at", "self", "file", "schema",
    "stores", "direct_url", "locations",
})
WRITABLE_CORE = frozenset({
    "name", "visibility", "protected", "os_hidden", "owner", "min_ram",
    "min_disk", "tags", "disk_format", "container_format",
})


@dataclass
class ImageChanges:
    fields: dict[str, Any] = field(default_factory=dict)
    set_properties: dict[str, str] = field(default_factory=dict)
    remove_properties: list[str] = field(default_factory=list)
    tags: list[str] | None = None


def check_core_value(key: str, value: Any, *, disk_formats: tuple[str, ...],
                     container_formats: tuple[str, ...]) -> Any:
    """Validate a writable core attribute's value; return it normalised."""
    if key in ("name", "owner"):
        if value is not None and (not isinstance(value, str) or len(value) > 255):
            raise BadRequest(f"'{key}' must be a string of at most 255 characters or null")
    elif key in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise BadRequest(f"'{key}' must be true or false, got {value!r}")
    elif key in ("min_ram", "min_disk"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"'{key}' must be a non-negative integer, got {value!r}")
    elif key == "visibility":
        if value not in {v.value for v in Visibility}:
            raise BadRequest(f"'visibility' must be one of public, private, shared, community; got {value!r}")
        return Visibility(value)
    elif key == "tags":
        if not isinstance(value, list) or not all(isinstance(t, str) and len(t) <= 255 for t in value):
            raise BadRequest("'tags' must be a list of strings of at most 255 characters")
    elif key == "disk_format":
        if value is not None and value not in disk_formats:
            raise BadRequest(f"disk_format {value!r} is not allowed here; allowed: {', '.join(disk_formats)}")
    elif key == "container_format":
        if value is not None and value not in container_formats:
            raise BadRequest(
                f"container_format {value!r} is not allowed; allowed: {', '.join(container_formats)}"
            )
    return value


def check_extra_property(key: str, value: Any) -> str:
    if key.startswith(RESERVED_PREFIX):
        raise Forbidden(f"Attribute '{key}' is reserved: os_glance_* properties are set by the service only")
    if not isinstance(value, str):
        raise BadRequest(f"Extra property '{key}' must be a string, got {type(value).__name__}")
    if len(key) > 255:
        raise BadRequest(f"Extra property names must be at most 255 characters ('{key[:20]}…')")
    return value


def plan_patch(image: Image, ops: Any, *, disk_formats: tuple[str, ...],
               container_formats: tuple[str, ...]) -> ImageChanges:
    if not isinstance(ops, list):
        raise BadRequest("A PATCH body must be a JSON list of operations (add, replace, remove)")
    changes = ImageChanges()
    props = dict(image.properties)
    for op in ops:
        name, key, value = _parse_op(op)
        if key in READ_ONLY:
            raise Forbidden(f"Attribute '{key}' is read-only.")
        if key in WRITABLE_CORE:
            _apply_core(image, changes, name, key, value, disk_formats, container_formats)
        else:
            _apply_extra(props, changes, name, key, value)
    return changes


def _parse_op(op: Any) -> tuple[str, str, Any]:
    if not isinstance(op, dict) or op.get("op") not in ("add", "replace", "remove"):
        raise BadRequest("Each PATCH operation needs 'op' = add, replace or remove")
    path = op.get("path")
    if not isinstance(path, str) or not path.startswith("/") or path.count("/") != 1 or len(path) < 2:
        raise BadRequest(f"PATCH path must look like '/property', got {path!r}")
    if op["op"] != "remove" and "value" not in op:
        raise BadRequest(f"PATCH '{op['op']}' of {path} needs a 'value'")
    key = path[1:].replace("~1", "/").replace("~0", "~")
    return op["op"], key, op.get("value")


def _apply_core(image: Image, changes: ImageChanges, name: str, key: str, value: Any,
                disk_formats: tuple[str, ...], container_formats: tuple[str, ...]) -> None:
    if name == "remove":
        raise Forbidden(f"Attribute '{key}' is a core attribute and can't be removed")
    if key in ("disk_format", "container_format") and image.status != ImageStatus.QUEUED:
        raise Forbidden(f"'{key}' can only be changed while the image is queued (it is {image.status.value})")
    value = check_core_value(key, value, disk_formats=disk_formats, container_formats=container_formats)
    if key == "tags":
        changes.tags = list(dict.fromkeys(value))
    else:
        changes.fields[key] = value


def _apply_extra(props: dict[str, str], changes: ImageChanges, name: str, key: str, value: Any) -> None:
    if key.startswith(RESERVED_PREFIX):
        raise Forbidden(f"Attribute '{key}' is reserved: os_glance_* properties are set by the service only")
    if name == "remove":
        if key not in props:
            raise Conflict(f"Property {key} does not exist.")
        props.pop(key)
        changes.set_properties.pop(key, None)
        changes.remove_properties.append(key)
        return
    if name == "replace" and key not in props:
        raise Conflict(f"Property {key} does not exist.")
    props[key] = check_extra_property(key, value)
    changes.set_properties[key] = props[key]
    if key in changes.remove_properties:
        changes.remove_properties.remove(key)
