"""Glance's image PATCH planning (pure: an Image and a list of operations in,
one set of changes or a 4xx out)."""

from __future__ import annotations

from typing import Any

import pytest

from edgesync.config import CONTAINER_FORMATS, DEFAULT_DISK_FORMATS
from edgesync.errors import BadRequest, Conflict, Forbidden
from edgesync.hub.patch import READ_ONLY, ImageChanges, check_core_value, check_extra_property, plan_patch
from edgesync.model import Image, ImageStatus, Visibility


def image(**kw: Any) -> Image:
    return Image(id="8a3c1c1e-0000-4000-8000-000000000001", owner="p1", **kw)


def plan(img: Image, ops: Any, dialect: str = "v2.1") -> ImageChanges:
    return plan_patch(img, ops, disk_formats=DEFAULT_DISK_FORMATS, container_formats=CONTAINER_FORMATS,
                      dialect=dialect)


def refused(img: Image, ops: Any, error: type[Exception], dialect: str = "v2.1") -> str:
    with pytest.raises(error) as info:
        plan(img, ops, dialect)
    return info.value.message  # type: ignore[attr-defined]


def test_add_replace_remove_extra_properties() -> None:
    img = image(properties={"a": "1", "b": "2"})
    changes = plan(img, [
        {"op": "add", "path": "/c", "value": "3"},
        {"op": "replace", "path": "/a", "value": "10"},
        {"op": "remove", "path": "/b"},
    ])
    assert changes.set_properties == {"c": "3", "a": "10"}
    assert changes.remove_properties == ["b"]
    assert changes.fields == {} and changes.tags is None
    assert img.properties == {"a": "1", "b": "2"}, "planning must not change the image"


def test_operations_apply_in_order() -> None:
    img = image(properties={"a": "1"})
    # remove then add: the property ends set, and is not removed
    changes = plan(img, [{"op": "remove", "path": "/a"}, {"op": "add", "path": "/a", "value": "2"}])
    assert changes.set_properties == {"a": "2"} and changes.remove_properties == []
    # add then remove: the property ends removed, and is not set
    changes = plan(img, [{"op": "add", "path": "/n", "value": "x"}, {"op": "remove", "path": "/n"}])
    assert changes.set_properties == {} and changes.remove_properties == ["n"]
    # a property added earlier in the request can be replaced later in it
    changes = plan(img, [{"op": "add", "path": "/n", "value": "x"}, {"op": "replace", "path": "/n", "value": "y"}])
    assert changes.set_properties == {"n": "y"}


def test_replace_or_remove_of_a_missing_property_is_409() -> None:
    img = image(properties={"a": "1"})
    assert "Property missing does not exist" in refused(img, [{"op": "replace", "path": "/missing", "value": "x"}], Conflict)
    assert "does not exist" in refused(img, [{"op": "remove", "path": "/missing"}], Conflict)
    # removed earlier in the same request
    refused(img, [{"op": "remove", "path": "/a"}, {"op": "remove", "path": "/a"}], Conflict)


def test_core_fields() -> None:
    img = image()
    changes = plan(img, [
        {"op": "replace", "path": "/name", "value": "n"},
        {"op": "replace", "path": "/visibility", "value": "community"},
        {"op": "add", "path": "/protected", "value": True},
        {"op": "replace", "path": "/min_disk", "value": 10},
        {"op": "replace", "path": "/tags", "value": ["a", "b", "a"]},
        {"op": "replace", "path": "/container_format", "value": "ovf"},
    ])
    assert changes.fields == {"name": "n", "visibility": Visibility.COMMUNITY, "protected": True,
                              "min_disk": 10, "container_format": "ovf"}
    assert changes.tags == ["a", "b"]


@pytest.mark.parametrize("key", sorted(READ_ONLY))
def test_read_only_core_is_403(key: str) -> None:
    # add and remove of /locations take an index (/locations/-, /locations/0), as in Glance
    suffix = "/-" if key == "locations" else ""
    for op in ("add", "replace"):
        path = f"/{key}{suffix if op == 'add' else ''}"
        message = refused(image(), [{"op": op, "path": path, "value": "x"}], Forbidden)
        assert message == f"Attribute '{key}' is read-only."
    refused(image(), [{"op": "remove", "path": f"/{key}{'/0' if suffix else ''}"}], Forbidden)


@pytest.mark.parametrize("op", ["add", "replace", "remove"])
def test_os_glance_properties_are_reserved(op: str) -> None:
    img = image(properties={"os_glance_importing_to_stores": ""})
    ops = [{"op": op, "path": "/os_glance_importing_to_stores", "value": "x"}]
    assert "reserved" in refused(img, ops, Forbidden)
    assert "reserved" in refused(img, [{"op": op, "path": "/os_glance_new", "value": "x"}], Forbidden)


def test_removing_a_core_field_is_403() -> None:
    assert refused(image(), [{"op": "remove", "path": "/name"}], Forbidden) == "Property name may not be removed."


def test_formats_only_change_while_queued() -> None:
    for status in (ImageStatus.ACTIVE, ImageStatus.UPLOADING, ImageStatus.IMPORTING):
        message = refused(image(status=status), [{"op": "replace", "path": "/disk_format", "value": "qcow2"}], Forbidden)
        assert status.value in message
    assert plan(image(), [{"op": "replace", "path": "/disk_format", "value": "qcow2"}]).fields == {"disk_format": "qcow2"}


@pytest.mark.parametrize("ops", [
    {"op": "add", "path": "/a", "value": "1"},           # not a list
    [{"op": "copy", "path": "/a", "from": "/b"}],         # unsupported op
    ["add"],                                              # not an object
    [{"path": "/a", "value": "1"}],                       # no op
    [{"op": "add", "path": "/a"}],                        # no value
    [{"op": "add", "path": "a", "value": "1"}],           # not a pointer
    [{"op": "add", "path": "/", "value": "1"}],           # empty name
    [{"op": "add", "path": "/a/b", "value": "1"}],        # nested
    [{"op": "add", "path": 5, "value": "1"}],
    [{"op": "add", "path": "/a", "value": 1}],            # extra properties are strings
    [{"op": "add", "path": "/" + "k" * 256, "value": "1"}],
    [{"op": "replace", "path": "/protected", "value": "true"}],
    [{"op": "replace", "path": "/min_ram", "value": -5}],
    [{"op": "replace", "path": "/min_ram", "value": True}],
    [{"op": "replace", "path": "/visibility", "value": "hidden"}],
    [{"op": "replace", "path": "/tags", "value": "a"}],
    [{"op": "replace", "path": "/tags", "value": ["x" * 256]}],
    [{"op": "replace", "path": "/name", "value": "n" * 256}],
    [{"op": "replace", "path": "/disk_format", "value": "exe"}],
    [{"op": "replace", "path": "/container_format", "value": "zip"}],
])
def test_malformed_operations_are_400(ops: Any) -> None:
    refused(image(properties={"a": "0"}), ops, BadRequest)


def test_json_pointer_escapes_in_the_path() -> None:
    changes = plan(image(), [{"op": "add", "path": "/a~1b~0c", "value": "v"}])
    assert changes.set_properties == {"a/b~c": "v"}


def test_empty_patch_changes_nothing() -> None:
    changes = plan(image(), [])
    assert changes == ImageChanges()


def test_value_checks_are_shared_with_create() -> None:
    assert check_core_value("visibility", "public", disk_formats=(), container_formats=()) == Visibility.PUBLIC
    assert check_core_value("name", None, disk_formats=(), container_formats=()) is None
    assert check_extra_property("k", "v") == "v"
    with pytest.raises(Forbidden):
        check_extra_property("os_glance_x", "v")
    with pytest.raises(BadRequest, match="must be a string"):
        check_extra_property("k", ["v"])


# --- Glance's messages for malformed operations and pointers (v2.1) -----------------------


@pytest.mark.parametrize("ops, message", [
    ({"op": "add"}, "Request body must be a JSON array of operation objects."),
    (["add"], "Operations must be JSON objects."),
    ([{"path": "/a", "value": "1"}],
     "Unable to find `op` in JSON Schema change. It must be one of the following: add, remove, replace."),
    ([{"op": "move", "path": "/a"}],
     "Invalid operation: `move`. It must be one of the following: add, remove, replace."),
    ([{"op": "add", "value": "1"}], "Unable to find 'path' in JSON Schema change"),
    ([{"op": "add", "path": "/a"}], 'Operation "add" requires a member named "value".'),
    ([{"op": "add", "path": "a", "value": "1"}], 'Pointer `a` does not start with "/".'),
    ([{"op": "add", "path": "/a//b", "value": "1"}], 'Pointer `/a//b` contains adjacent "/".'),
    ([{"op": "add", "path": "/a/", "value": "1"}], 'Pointer `/a/` end with "/".'),
    ([{"op": "add", "path": "/a~2", "value": "1"}], 'Pointer `/a~2` contains "~" not part of a recognized escape sequence.'),
    ([{"op": "add", "path": "/a/b", "value": "1"}], "Invalid JSON pointer for this resource: '/a/b'"),
    ([{"op": "replace", "path": "/locations/0", "value": []}], "Invalid JSON pointer for this resource: '/locations/0'"),
])
def test_v21_malformed_messages_are_glances(ops: Any, message: str) -> None:
    assert refused(image(properties={"a": "0"}), ops, BadRequest) == message


@pytest.mark.parametrize("key", ["location", "deleted", "deleted_at", "os_glance_x"])
def test_reserved_attributes_are_403(key: str) -> None:
    assert refused(image(), [{"op": "add", "path": f"/{key}", "value": "x"}], Forbidden) == \
        f"Attribute '{key}' is reserved."


# --- the v2.0 dialect (draft 4): the operation is the member's name ------------------------


def test_v20_add_replace_remove() -> None:
    img = image(properties={"a": "1", "b": "2"})
    changes = plan(img, [{"add": "/c", "value": "3"}, {"replace": "/a", "value": "10"}, {"remove": "/b"},
                         {"replace": "/name", "value": "n"}, {"replace": "/protected", "value": False}], "v2.0")
    assert changes.set_properties == {"c": "3", "a": "10"} and changes.remove_properties == ["b"]
    assert changes.fields == {"name": "n", "protected": False}


def test_v20_unprotect_then_the_image_can_be_cleaned_up() -> None:
    changes = plan(image(protected=True), [{"replace": "/protected", "value": False}], "v2.0")
    assert changes.fields == {"protected": False}


def test_v20_add_of_an_existing_attribute_is_409_where_v21_overwrites() -> None:
    img = image(properties={"a": "1"})
    assert refused(img, [{"add": "/a", "value": "2"}], Conflict, "v2.0") == "Property a already present."
    assert refused(img, [{"add": "/name", "value": "n"}], Conflict, "v2.0") == "Property name already present."
    assert refused(img, [{"add": "/n", "value": "1"}, {"add": "/n", "value": "2"}], Conflict, "v2.0")
    assert plan(img, [{"op": "add", "path": "/a", "value": "2"}]).set_properties == {"a": "2"}


@pytest.mark.parametrize("ops, error, message", [
    ([{"op": "add", "path": "/a", "value": "1"}], BadRequest,
     'Operation objects must contain exactly one member named "add", "remove", or "replace".'),
    ([{"add": "/a", "replace": "/a", "value": "1"}], BadRequest,
     'Operation objects must contain only one member named "add", "remove", or "replace".'),
    ([{"add": "/a"}], BadRequest, 'Operation "add" requires a member named "value".'),
    ([{"replace": "a", "value": "1"}], BadRequest, 'Pointer `a` does not start with "/".'),
    ([{"replace": "/x/y", "value": "1"}], BadRequest, "Invalid JSON pointer for this resource: '/x/y'"),
    ([{"replace": "/missing", "value": "1"}], Conflict, "Property missing does not exist."),
    ([{"remove": "/missing"}], Conflict, "Property missing does not exist."),
    ([{"remove": "/name"}], Forbidden, "Property name may not be removed."),
    ([{"replace": "/status", "value": "active"}], Forbidden, "Attribute 'status' is read-only."),
    ([{"add": "/os_glance_import_task", "value": "x"}], Forbidden, "Attribute 'os_glance_import_task' is reserved."),
])
def test_v20_refusals_are_glances(ops: Any, error: type[Exception], message: str) -> None:
    assert refused(image(), ops, error, "v2.0") == message
