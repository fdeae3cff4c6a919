"""Glance's image PATCH, in both of its dialects.

* v2.1 (`application/openstack-images-v2.1-json-patch`, JSON Schema draft 10):
  `{"op": "replace", "path": "/name", "value": …}`.
* v2.0 (`application/openstack-images-v2.0-json-patch`, draft 4):
  `{"replace": "/name", "value": …}` — the operation is the member's name.
  `add` of an attribute the image already has is a 409 here (v2.1 overwrites).

Turns a list of operations into one set of changes to an image, refusing
what Glance refuses, with Glance's messages: a malformed body, operation or
JSON pointer (400), read-only and reserved (`os_glance_*`) attributes and
removing a core attribute (403), replacing or removing a property that isn't
there, or (v2.0) adding one that is (409), values of the wrong type (400).
"""

from __future__ import annotations

import re
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


V21_MEDIA_TYPE = "application/openstack-images-v2.1-json-patch"
V20_MEDIA_TYPE = "application/openstack-images-v2.0-json-patch"
DIALECTS = {V21_MEDIA_TYPE: "v2.1", V20_MEDIA_TYPE: "v2.0"}
OPERATIONS = ("add", "remove", "replace")
RESERVED = frozenset({"location", "deleted", "deleted_at"})
# How many pointer tokens each operation takes under a root (Glance's limits):
# `/locations/-` and `/locations/0` for add and remove; one token elsewhere.
_PATH_DEPTH = {"locations": {"add": 2, "remove": 2, "replace": 1}}


@dataclass(frozen=True)
class PatchOp:
    op: str
    path: tuple[str, ...]
    value: Any = None

    @property
    def key(self) -> str:
        return self.path[0]


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


def parse_ops(body: Any, dialect: str = "v2.1") -> list[PatchOp]:
    """The operations of a PATCH body in `dialect` ("v2.1" or "v2.0")."""
    if not isinstance(body, list):
        raise BadRequest("Request body must be a JSON array of operation objects.")
    ops = []
    for raw in body:
        if not isinstance(raw, dict):
            raise BadRequest("Operations must be JSON objects.")
        name, pointer = _v21_op(raw) if dialect == "v2.1" else _v20_op(raw)
        path = decode_pointer(pointer)
        if len(path) != _PATH_DEPTH.get(path[0], {}).get(name, 1):
            raise BadRequest(f"Invalid JSON pointer for this resource: '/{'/'.join(path)}'")
        if name != "remove" and "value" not in raw:
            raise BadRequest(f'Operation "{name}" requires a member named "value".')
        ops.append(PatchOp(name, path, raw.get("value")))
    return ops


def _v21_op(raw: dict[str, Any]) -> tuple[str, Any]:
    name = raw.get("op")
    available = ", ".join(OPERATIONS)
    if name is None:
        raise BadRequest(f"Unable to find `op` in JSON Schema change. It must be one of the following: {available}.")
    if name not in OPERATIONS:
        raise BadRequest(f"Invalid operation: `{name}`. It must be one of the following: {available}.")
    if "path" not in raw:
        raise BadRequest("Unable to find 'path' in JSON Schema change")
    return name, raw["path"]


def _v20_op(raw: dict[str, Any]) -> tuple[str, Any]:
    named = [op for op in OPERATIONS if op in raw]
    if len(named) > 1:
        raise BadRequest('Operation objects must contain only one member named "add", "remove", or "replace".')
    if not named:
        raise BadRequest('Operation objects must contain exactly one member named "add", "remove", or "replace".')
    return named[0], raw[named[0]]


def decode_pointer(pointer: Any) -> tuple[str, ...]:
    """The tokens of the limited JSON pointers Glance accepts (`~1` is `/`, `~0` is `~`)."""
    if not isinstance(pointer, str):
        raise BadRequest(f"Pointer `{pointer}` must be a string starting with \"/\".")
    if not pointer.startswith("/"):
        raise BadRequest(f'Pointer `{pointer}` does not start with "/".')
    if re.search(r"/\s*?/", pointer[1:]):
        raise BadRequest(f'Pointer `{pointer}` contains adjacent "/".')
    if len(pointer) > 1 and pointer.endswith("/"):
        raise BadRequest(f'Pointer `{pointer}` end with "/".')
    if re.search("~[^01]", pointer) or pointer.endswith("~"):
        raise BadRequest(f'Pointer `{pointer}` contains "~" not part of a recognized escape sequence.')
    tokens = tuple(part.replace("~1", "/").replace("~0", "~").strip() for part in pointer[1:].split("/"))
    if not tokens[0]:
        raise BadRequest(f"Pointer `{pointer}` does not contains valid token.")
    return tokens


def plan_patch(image: Image, body: Any, *, disk_formats: tuple[str, ...],
               container_formats: tuple[str, ...], dialect: str = "v2.1") -> ImageChanges:
    changes = ImageChanges()
    props = dict(image.properties)
    for op in parse_ops(body, dialect):
        key = op.key
        if key in READ_ONLY:
            raise Forbidden(f"Attribute '{key}' is read-only.")
        if key in RESERVED or key.startswith(RESERVED_PREFIX):
            raise Forbidden(f"Attribute '{key}' is reserved.")
        if dialect == "v2.0" and op.op == "add" and (key in WRITABLE_CORE or key in props):
            raise Conflict(f"Property {key} already present.")
        if key in WRITABLE_CORE:
            _apply_core(image, changes, op.op, key, op.value, disk_formats, container_formats)
        else:
            _apply_extra(props, changes, op.op, key, op.value)
    return changes


def _apply_core(image: Image, changes: ImageChanges, name: str, key: str, value: Any,
                disk_formats: tuple[str, ...], container_formats: tuple[str, ...]) -> None:
    if name == "remove":
        raise Forbidden(f"Property {key} may not be removed.")
    if key in ("disk_format", "container_format") and image.status != ImageStatus.QUEUED:
        raise Forbidden(f"'{key}' can only be changed while the image is queued (it is {image.status.value})")
    value = check_core_value(key, value, disk_formats=disk_formats, container_formats=container_formats)
    if key == "tags":
        changes.tags = list(dict.fromkeys(value))
    else:
        changes.fields[key] = value


def _apply_extra(props: dict[str, str], changes: ImageChanges, name: str, key: str, value: Any) -> None:
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
