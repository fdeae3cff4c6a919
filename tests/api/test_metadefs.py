"""Metadefs as Glance has them: namespaces (visibility, protection) with
objects, properties, tags and resource-type associations; admin-only writes
by default, the seed's metadef_default overrides; bodies checked against the
schemas served, and answers that validate against them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.api.conftest import Api, Caller, Source, error_of, running_api, write_hub_files
from tests.unit.test_policy import SEED_METADEF_RULES

NS = "/v2/metadefs/namespaces"
WATCHDOG = {
    "namespace": "OS::Compute::Watchdog", "display_name": "Watchdog Behavior", "description": "watchdogs",
    "visibility": "public", "protected": True,
    "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "hw_"},
                                   {"name": "OS::Cinder::Volume", "prefix": "hw_", "properties_target": "image"}],
    "properties": {"watchdog_action": {"title": "Watchdog Action", "type": "string",
                                       "enum": ["disabled", "reset", "poweroff", "pause", "none"]}},
    "objects": [{"name": "Watchdog", "description": "w", "required": ["model"],
                 "properties": {"model": {"title": "Model", "type": "string"}}}],
    "tags": [{"name": "hardware"}, {"name": "safety"}],
}


async def schema(api: Api, name: str) -> dict[str, Any]:
    async with api.anon.get(f"/v2/schemas/metadefs/{name}", headers={"X-Auth-Token": "tok-p1"}) as resp:
        assert resp.status == 200
        return await resp.json()


async def created(caller: Caller, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    async with caller.post(path, json=body) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def fetched(caller: Caller, path: str) -> dict[str, Any]:
    async with caller.get(path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_namespace_with_everything_in_it(api: Api) -> None:
    out = await created(api.admin, NS, WATCHDOG)
    assert out["namespace"] == "OS::Compute::Watchdog" and out["owner"] == "admin" and out["protected"] is True
    assert out["self"] == f"{NS}/OS::Compute::Watchdog" and out["schema"] == "/v2/schemas/metadefs/namespace"
    shown = await fetched(api.p1, f"{NS}/OS::Compute::Watchdog")
    jsonschema.validate(shown, await schema(api, "namespace"))
    assert shown["properties"] == WATCHDOG["properties"]
    assert [o["name"] for o in shown["objects"]] == ["Watchdog"] and shown["objects"][0]["required"] == ["model"]
    assert [t["name"] for t in shown["tags"]] == ["hardware", "safety"]
    assert [(a["name"], a.get("prefix")) for a in shown["resource_type_associations"]] == \
        [("OS::Glance::Image", "hw_"), ("OS::Cinder::Volume", "hw_")]
    prefixed = await fetched(api.p1, f"{NS}/OS::Compute::Watchdog?resource_type=OS::Glance::Image")
    assert list(prefixed["properties"]) == ["hw_watchdog_action"]
    assert prefixed["objects"][0]["required"] == ["hw_model"]
    listed = await fetched(api.p1, NS)
    jsonschema.validate(listed, await schema(api, "namespaces"))
    assert [n["namespace"] for n in listed["namespaces"]] == ["OS::Compute::Watchdog"]
    assert "properties" not in listed["namespaces"][0]
    types = await fetched(api.p1, "/v2/metadefs/resource_types")
    assert [t["name"] for t in types["resource_types"]] == ["OS::Cinder::Volume", "OS::Glance::Image"]


async def test_writes_are_admin_only_by_default_and_leave_nothing(api: Api) -> None:
    async with api.p1.post(NS, json={"namespace": "mine"}) as resp:
        await error_of(resp, 403, "add_metadef_namespace")
    await created(api.admin, NS, {"namespace": "shared-defs", "visibility": "public"})
    for method, path, body in [
        ("PUT", f"{NS}/shared-defs", {"namespace": "shared-defs", "description": "x"}),
        ("DELETE", f"{NS}/shared-defs", None),
        ("POST", f"{NS}/shared-defs/objects", {"name": "o"}),
        ("POST", f"{NS}/shared-defs/properties", {"name": "p", "title": "P", "type": "string"}),
        ("POST", f"{NS}/shared-defs/tags/t", None),
        ("POST", f"{NS}/shared-defs/tags", {"tags": [{"name": "t"}]}),
        ("DELETE", f"{NS}/shared-defs/tags", None),
        ("POST", f"{NS}/shared-defs/resource_types", {"name": "OS::Nova::Flavor"}),
    ]:
        async with api.p1.request(method, path, json=body) as resp:
            await error_of(resp, 403, "metadef")
    shown = await fetched(api.admin, f"{NS}/shared-defs")
    assert not {"objects", "properties", "tags", "resource_type_associations"} & set(shown)


async def test_private_namespaces_are_404_to_other_projects(api: Api) -> None:
    await created(api.admin, NS, {"namespace": "p2-only", "visibility": "private", "owner": "p2",
                                  "tags": [{"name": "t"}]})
    await created(api.admin, NS, {"namespace": "public-one", "visibility": "public"})
    for path in (f"{NS}/p2-only", f"{NS}/p2-only/tags", f"{NS}/p2-only/objects", f"{NS}/p2-only/tags/t"):
        async with api.p1.get(path) as resp:
            await error_of(resp, 404, "p2-only")
    assert (await fetched(api.p2, f"{NS}/p2-only/tags"))["tags"][0]["name"] == "t"
    assert [n["namespace"] for n in (await fetched(api.p1, NS))["namespaces"]] == ["public-one"]
    assert sorted(n["namespace"] for n in (await fetched(api.p2, NS))["namespaces"]) == ["p2-only", "public-one"]
    assert [n["namespace"] for n in (await fetched(api.p2, f"{NS}?visibility=private"))["namespaces"]] == ["p2-only"]


async def test_protection_refuses_deletes_until_lifted(api: Api) -> None:
    await created(api.admin, NS, {**WATCHDOG})
    for path in (f"{NS}/OS::Compute::Watchdog", f"{NS}/OS::Compute::Watchdog/tags/hardware",
                 f"{NS}/OS::Compute::Watchdog/objects/Watchdog", f"{NS}/OS::Compute::Watchdog/tags",
                 f"{NS}/OS::Compute::Watchdog/properties/watchdog_action",
                 f"{NS}/OS::Compute::Watchdog/resource_types/OS::Glance::Image"):
        async with api.admin.delete(path) as resp:
            await error_of(resp, 403, "protected")
    async with api.admin.put(f"{NS}/OS::Compute::Watchdog",
                             json={"namespace": "OS::Compute::Watchdog", "protected": False}) as resp:
        assert resp.status == 200 and (await resp.json())["protected"] is False
    async with api.admin.delete(f"{NS}/OS::Compute::Watchdog") as resp:
        assert resp.status == 204
    async with api.admin.get(f"{NS}/OS::Compute::Watchdog") as resp:
        await error_of(resp, 404)


async def test_objects_properties_and_resource_types_crud(api: Api) -> None:
    await created(api.admin, NS, {"namespace": "n"})
    obj = await created(api.admin, f"{NS}/n/objects", {"name": "CPU", "properties": {
        "cores": {"title": "Cores", "type": "integer", "minimum": 1}}})
    jsonschema.validate(obj, await schema(api, "object"))
    assert obj["self"] == f"{NS}/n/objects/CPU"
    async with api.admin.put(f"{NS}/n/objects/CPU", json={"name": "Processor", "description": "d"}) as resp:
        assert (await resp.json())["name"] == "Processor"
    objects = await fetched(api.admin, f"{NS}/n/objects")
    jsonschema.validate(objects, await schema(api, "objects"))
    assert [o["name"] for o in objects["objects"]] == ["Processor"]
    async with api.admin.delete(f"{NS}/n/objects/Processor") as resp:
        assert resp.status == 204
    prop = await created(api.admin, f"{NS}/n/properties", {"name": "os_distro", "title": "Distro", "type": "string"})
    jsonschema.validate(prop, await schema(api, "property"))
    async with api.admin.post(f"{NS}/n/properties", json={"name": "os_distro", "title": "D", "type": "string"}) as resp:
        await error_of(resp, 409, "os_distro")
    async with api.admin.put(f"{NS}/n/properties/os_distro",
                             json={"name": "os_distro", "title": "OS", "type": "string", "enum": ["a"]}) as resp:
        assert (await resp.json())["enum"] == ["a"]
    properties = await fetched(api.admin, f"{NS}/n/properties")
    jsonschema.validate(properties, await schema(api, "properties"))
    assert properties["properties"]["os_distro"]["title"] == "OS"
    assoc = await created(api.admin, f"{NS}/n/resource_types", {"name": "OS::Nova::Flavor", "prefix": "x:"})
    jsonschema.validate(assoc, await schema(api, "resource_type"))
    associations = await fetched(api.admin, f"{NS}/n/resource_types")
    jsonschema.validate(associations, await schema(api, "resource_types"))
    async with api.admin.post(f"{NS}/n/resource_types", json={"name": "OS::Nova::Flavor"}) as resp:
        await error_of(resp, 409)
    assert (await fetched(api.admin, f"{NS}?resource_types=OS::Nova::Flavor"))["namespaces"][0]["namespace"] == "n"
    async with api.admin.delete(f"{NS}/n/resource_types/OS::Nova::Flavor") as resp:
        assert resp.status == 204
    async with api.admin.delete(f"{NS}/n/resource_types/OS::Nova::Flavor") as resp:
        await error_of(resp, 404)


async def test_tags_single_multiple_replace_append_rename(api: Api) -> None:
    await created(api.admin, NS, {"namespace": "n"})
    tag = await created(api.admin, f"{NS}/n/tags/one", {})
    jsonschema.validate(tag, await schema(api, "tag"))
    async with api.admin.post(f"{NS}/n/tags/one") as resp:
        await error_of(resp, 409, "one")
    await created(api.admin, f"{NS}/n/tags", {"tags": [{"name": "a"}, {"name": "b"}]})
    assert [t["name"] for t in (await fetched(api.admin, f"{NS}/n/tags"))["tags"]] == ["a", "b"]  # replaced
    async with api.admin.post(f"{NS}/n/tags", json={"tags": [{"name": "c"}]},
                              headers={"X-Openstack-Append": "true"}) as resp:
        assert resp.status == 201
    tags = await fetched(api.admin, f"{NS}/n/tags")
    jsonschema.validate(tags, await schema(api, "tags"))
    assert [t["name"] for t in tags["tags"]] == ["a", "b", "c"]
    async with api.admin.post(f"{NS}/n/tags", json={"tags": [{"name": "d"}, {"name": "d"}]}) as resp:
        await error_of(resp, 400, "Duplicate")
    async with api.admin.post(f"{NS}/n/tags", json={"tags": [{"name": "a"}]},
                              headers={"X-Openstack-Append": "true"}) as resp:
        await error_of(resp, 409)
    assert len((await fetched(api.admin, f"{NS}/n/tags"))["tags"]) == 3, "a refused multi-create changed nothing"
    async with api.admin.put(f"{NS}/n/tags/a", json={"name": "z"}) as resp:
        assert (await resp.json())["name"] == "z"
    async with api.admin.delete(f"{NS}/n/tags") as resp:
        assert resp.status == 204
    assert (await fetched(api.admin, f"{NS}/n/tags"))["tags"] == []


@pytest.mark.parametrize("body, status, fragment", [
    ({}, 400, "namespace"),
    ({"namespace": "x" * 81}, 400, "namespace"),
    ({"namespace": "n", "visibility": "shared"}, 400, "visibility"),
    ({"namespace": "n", "protected": "yes"}, 400, "protected"),
    ({"namespace": "n", "bogus": 1}, 400, "bogus"),
    ({"namespace": "n", "properties": {"p": {"type": "string"}}}, 400, "title"),
    ({"namespace": "n", "properties": {"p": {"title": "P", "type": "thing"}}}, 400, "thing"),
    ({"namespace": "n", "objects": [{"description": "no name"}]}, 400, "name"),
    ({"namespace": "n", "created_at": "now"}, 403, "read-only"),
    ({"namespace": "n", "tags": [{"name": "a"}, {"name": "a"}]}, 409, "a"),
])
async def test_bad_namespaces_are_refused_and_leave_nothing(api: Api, body: dict[str, Any], status: int,
                                                            fragment: str) -> None:
    async with api.admin.post(NS, json=body) as resp:
        await error_of(resp, status, fragment)
    assert (await fetched(api.admin, NS))["namespaces"] == []


async def test_namespace_listing_pages_and_sorts(api: Api) -> None:
    for name in ("c", "a", "b"):
        await created(api.admin, NS, {"namespace": name, "visibility": "public"})
    seen, path = [], f"{NS}?limit=2&sort_key=namespace&sort_dir=asc"
    while path:
        page = await fetched(api.p1, path)
        seen += [n["namespace"] for n in page["namespaces"]]
        path = page.get("next")
    assert seen == ["a", "b", "c"]
    async with api.p1.get(f"{NS}?sort_dir=sideways") as resp:
        await error_of(resp, 400, "sort direction")
    async with api.p1.get(f"{NS}?visibility=shared") as resp:
        await error_of(resp, 400, "visibility")


async def test_a_duplicate_namespace_and_a_rename_onto_one_are_409(api: Api) -> None:
    await created(api.admin, NS, {"namespace": "a"})
    await created(api.admin, NS, {"namespace": "b"})
    async with api.admin.post(NS, json={"namespace": "a"}) as resp:
        await error_of(resp, 409, "a")
    async with api.admin.put(f"{NS}/b", json={"namespace": "a"}) as resp:
        await error_of(resp, 409, "a")
    async with api.admin.put(f"{NS}/b", json={"namespace": "c"}) as resp:
        assert (await resp.json())["namespace"] == "c"


@pytest.mark.parametrize("name", ["namespace", "namespaces", "object", "objects", "property", "properties",
                                  "tag", "tags", "resource_type", "resource_types"])
async def test_every_metadef_schema_is_a_valid_json_schema_with_glances_name(api: Api, name: str) -> None:
    doc = await schema(api, name)
    jsonschema.Draft4Validator.check_schema(doc)
    expected = {"resource_type": "resource_type_association", "resource_types": "resource_type_associations"}
    assert doc["name"] == expected.get(name, name)
    if name.endswith("s"):
        assert [link["rel"] for link in doc["links"]] == ["first", "next", "describedby"]


@pytest.fixture
async def open_metadefs(tmp_path: Path, source: Source) -> AsyncIterator[Api]:
    """The seed's chapter 1.9 policy: every metadef rule is rule:metadef_default, which is ''."""
    hub_toml = write_hub_files(tmp_path, source_port=source.port)
    lines = ['"metadef_default": ""'] + [f'"{rule}": "rule:metadef_default"' for rule in SEED_METADEF_RULES]
    (tmp_path / "policy.yaml").write_text("\n".join(lines) + "\n")
    hub_toml.write_text(hub_toml.read_text().replace("[hub]\n", f'[hub]\npolicy_file = "{tmp_path / "policy.yaml"}"\n', 1))
    async with running_api(tmp_path) as running:
        yield running


async def test_the_seeds_overrides_open_metadef_writes_to_every_user(open_metadefs: Api) -> None:
    api = open_metadefs
    out = await created(api.p1, NS, {"namespace": "team", "tags": [{"name": "x"}]})
    assert out["owner"] == "p1"
    await created(api.p1, f"{NS}/team/tags/y", {})
    await created(api.p1, f"{NS}/team/objects", {"name": "o"})
    async with api.p1.delete(f"{NS}/team") as resp:
        assert resp.status == 204
