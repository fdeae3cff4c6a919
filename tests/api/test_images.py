"""Image records: create, show, list (filters, sorting, paging), PATCH,
tags, delete and delete-from-store, with Glance's status codes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from edgesync.stores.base import Location
from tests.api.conftest import Api, Caller, default_image, error_of

# --- create / show ---------------------------------------------------------------------


async def test_create_answers_201_with_glance_headers_and_fields(api: Api) -> None:
    async with api.p1.post("/v2/images", json={"name": "t1", "disk_format": "raw", "container_format": "bare",
                                               "hw_disk_bus": "scsi", "tags": ["a", "b", "a"]}) as resp:
        assert resp.status == 201
        image = await resp.json()
        assert resp.headers["Location"] == f"http://hub.test:9292/v2/images/{image['id']}"
        assert resp.headers["OpenStack-image-import-methods"] == "glance-direct,web-download,copy-image"
        assert resp.headers["OpenStack-image-store-ids"] == "central,dcn0,dcn1"
    assert image["status"] == "queued" and image["owner"] == "p1" and image["visibility"] == "shared"
    assert image["hw_disk_bus"] == "scsi" and image["tags"] == ["a", "b"]
    assert image["size"] is None and image["checksum"] is None and "stores" not in image
    assert image["self"] == f"/v2/images/{image['id']}" and image["file"].endswith("/file")


async def test_create_with_a_given_id_and_a_duplicate_id(api: Api) -> None:
    image_id = str(uuid.uuid4())
    await api.p1.create(id=image_id)
    async with api.p1.post("/v2/images", json={"id": image_id}) as resp:
        await error_of(resp, 409, image_id, "already exists")
    async with api.p1.post("/v2/images", json={"id": "not-a-uuid"}) as resp:
        await error_of(resp, 400, "UUID")


@pytest.mark.parametrize("body, status, fragment", [
    ({"os_glance_importing_to_stores": "dcn0"}, 403, "reserved"),
    ({"os_glance_anything": "x"}, 403, "os_glance_"),
    ({"status": "active"}, 403, "read-only"),
    ({"size": 5}, 403, "read-only"),
    ({"disk_format": "exe"}, 400, "allowed"),
    ({"container_format": "box"}, 400, "allowed"),
    ({"visibility": "everyone"}, 400, "visibility"),
    ({"protected": "yes"}, 400, "true or false"),
    ({"min_ram": -1}, 400, "non-negative"),
    ({"hw_cpu_cores": 4}, 400, "must be a string"),
    ({"tags": "a,b"}, 400, "list of strings"),
])
async def test_create_refuses_bad_fields(api: Api, body: dict[str, Any], status: int, fragment: str) -> None:
    async with api.p1.post("/v2/images", json=body) as resp:
        await error_of(resp, status, fragment)
    async with api.admin.get("/v2/images") as resp:
        assert (await resp.json())["images"] == []


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_create_refuses_bodies_that_are_not_a_json_object(api: Api, raw: bytes) -> None:
    async with api.p1.post("/v2/images", data=raw, headers={"Content-Type": "application/json"}) as resp:
        await error_of(resp, 400)


async def test_show_of_unknown_image_is_404(api: Api) -> None:
    missing = str(uuid.uuid4())
    async with api.p1.get(f"/v2/images/{missing}") as resp:
        await error_of(resp, 404, missing)


# --- list -------------------------------------------------------------------------------


async def ids(caller: Caller, query: str = "") -> list[str]:
    async with caller.get(f"/v2/images{query}") as resp:
        assert resp.status == 200, await resp.text()
        return [i["id"] for i in (await resp.json())["images"]]


async def test_list_filters(api: Api) -> None:
    a = await api.p1.create(name="alpha", tags=["x", "y"], protected=True, hw_type="gpu")
    b = await api.p1.create(name="beta", tags=["y"], visibility="private")
    c = await api.admin.create(name="gamma", visibility="public")
    hidden = await api.p1.create(name="alpha", os_hidden=True)
    community = await api.p1.create(name="delta", visibility="community")
    active = await api.active_image(default_image(), name="epsilon")

    assert set(await ids(api.p1)) == {a["id"], b["id"], c["id"], community["id"], active["id"]}
    assert await ids(api.p1, "?name=alpha") == [a["id"]]
    assert await ids(api.p1, "?name=alpha&os_hidden=true") == [hidden["id"]]
    assert await ids(api.p1, "?os_hidden=true") == [hidden["id"]]
    assert set(await ids(api.p1, "?os_hidden=false")) == set(await ids(api.p1))
    assert await ids(api.p1, "?status=active") == [active["id"]]
    assert set(await ids(api.p1, "?status=queued")) == {a["id"], b["id"], c["id"], community["id"]}
    assert await ids(api.p1, "?visibility=private") == [b["id"]]
    assert await ids(api.p1, "?visibility=public") == [c["id"]]
    assert await ids(api.p1, "?visibility=community") == [community["id"]]
    assert await ids(api.p1, "?owner=admin") == [c["id"]]
    assert set(await ids(api.p1, "?owner=p1")) == {a["id"], b["id"], community["id"], active["id"]}
    assert set(await ids(api.p1, "?tag=y")) == {a["id"], b["id"]}
    assert await ids(api.p1, "?tag=y&tag=x") == [a["id"]]
    assert await ids(api.p1, "?protected=true") == [a["id"]]
    assert a["id"] not in await ids(api.p1, "?protected=false")
    assert await ids(api.p1, "?hw_type=gpu") == [a["id"]]
    # p2 sees only the public image (community only on request).
    assert await ids(api.p2) == [c["id"]]


@pytest.mark.parametrize("query, fragment", [
    ("?limit=abc", "limit"), ("?limit=-1", "limit"), ("?protected=maybe", "protected"),
    ("?visibility=nobody", "visibility"), ("?sort_dir=up", "asc or desc"),
    ("?sort_key=tags", "sortable keys"), (f"?marker={uuid.uuid4()}", "marker"),
])
async def test_list_refuses_bad_queries(api: Api, query: str, fragment: str) -> None:
    await api.p1.create()
    async with api.p1.get(f"/v2/images{query}") as resp:
        await error_of(resp, 400, fragment)


async def test_list_sorting(api: Api) -> None:
    names = ["charlie", "alpha", "delta", "bravo"]
    made = {n: (await api.p1.create(name=n, min_disk=len(n) * (1 if n != "bravo" else 2)))["id"] for n in names}
    asc = [made[n] for n in sorted(names)]
    assert await ids(api.p1, "?sort_key=name&sort_dir=asc") == asc
    assert await ids(api.p1, "?sort_key=name&sort_dir=desc") == asc[::-1]
    assert await ids(api.p1, "?sort=name:asc") == asc
    # Two keys: min_disk desc (bravo 10, charlie 7, alpha and delta 5), ties by name asc.
    assert await ids(api.p1, "?sort_key=min_disk&sort_key=name&sort_dir=desc&sort_dir=asc") == [
        made["bravo"], made["charlie"], made["alpha"], made["delta"]]
    # Default: newest first; created_at has second precision (as Glance's),
    # so ties are broken by id, keeping pages stable.
    async with api.p1.get("/v2/images") as resp:
        listed = (await resp.json())["images"]
    assert [i["id"] for i in listed] == [i["id"] for i in sorted(
        listed, key=lambda i: (i["created_at"], i["id"]), reverse=True)]


async def test_paging_with_limit_marker_and_next_walks_every_image(api: Api) -> None:
    made = [(await api.p1.create(name=f"img{i:02d}"))["id"] for i in range(7)]
    seen: list[str] = []
    url = "/v2/images?limit=3&sort_key=name&sort_dir=asc"
    pages = 0
    while url:
        async with api.p1.get(url) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        pages += 1
        assert len(body["images"]) <= 3
        seen += [i["id"] for i in body["images"]]
        url = body.get("next")
        assert pages <= 5, "next links do not end"
    assert seen == made and pages == 3
    assert body["first"] == "/v2/images" and body["schema"] == "/v2/schemas/images"
    # Exactly a page's worth: no next link.
    async with api.p1.get("/v2/images?limit=7") as resp:
        assert "next" not in await resp.json()


# --- PATCH ------------------------------------------------------------------------------


async def patched(caller: Caller, image_id: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    async with caller.patch(image_id, ops) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_patch_extra_properties_add_replace_remove(api: Api) -> None:
    image = await api.p1.create()
    out = await patched(api.p1, image["id"], [{"op": "add", "path": "/hw_disk_bus", "value": "scsi"},
                                              {"op": "add", "path": "/os_distro", "value": "fedora"}])
    assert out["hw_disk_bus"] == "scsi" and out["os_distro"] == "fedora"
    out = await patched(api.p1, image["id"], [{"op": "replace", "path": "/hw_disk_bus", "value": "virtio"},
                                              {"op": "remove", "path": "/os_distro"}])
    assert out["hw_disk_bus"] == "virtio" and "os_distro" not in out
    # add of an existing property overwrites it, as in Glance
    out = await patched(api.p1, image["id"], [{"op": "add", "path": "/hw_disk_bus", "value": "ide"}])
    assert out["hw_disk_bus"] == "ide"
    # add then remove in one request: gone; remove then add: present
    out = await patched(api.p1, image["id"], [{"op": "add", "path": "/k", "value": "v"},
                                              {"op": "remove", "path": "/k"}])
    assert "k" not in out
    out = await patched(api.p1, image["id"], [{"op": "remove", "path": "/hw_disk_bus"},
                                              {"op": "add", "path": "/hw_disk_bus", "value": "sata"}])
    assert out["hw_disk_bus"] == "sata"
    assert (await api.p1.show(image["id"]))["hw_disk_bus"] == "sata"


async def test_patch_core_fields(api: Api) -> None:
    image = await api.p1.create()
    out = await patched(api.p1, image["id"], [
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "replace", "path": "/os_hidden", "value": True},
        {"op": "replace", "path": "/protected", "value": True},
        {"op": "replace", "path": "/min_ram", "value": 512},
        {"op": "replace", "path": "/disk_format", "value": "qcow2"},
    ])
    assert (out["name"], out["os_hidden"], out["protected"], out["min_ram"], out["disk_format"]) == \
        ("renamed", True, True, 512, "qcow2")


@pytest.mark.parametrize("ops, status, fragment", [
    ([{"op": "replace", "path": "/missing", "value": "x"}], 409, "does not exist"),
    ([{"op": "remove", "path": "/missing"}], 409, "does not exist"),
    ([{"op": "replace", "path": "/status", "value": "active"}], 403, "read-only"),
    ([{"op": "replace", "path": "/size", "value": 1}], 403, "read-only"),
    ([{"op": "replace", "path": "/checksum", "value": "x"}], 403, "read-only"),
    ([{"op": "add", "path": "/stores", "value": "dcn0"}], 403, "read-only"),
    ([{"op": "remove", "path": "/name"}], 403, "may not be removed"),
    ([{"op": "add", "path": "/os_glance_importing_to_stores", "value": "dcn0"}], 403, "reserved"),
    ([{"op": "replace", "path": "/os_glance_failed_import", "value": ""}], 403, "os_glance_"),
    ([{"op": "remove", "path": "/os_glance_import_task"}], 403, "reserved"),
    ([{"op": "replace", "path": "/protected", "value": "yes"}], 400, "true or false"),
    ([{"op": "add", "path": "/k", "value": 5}], 400, "must be a string"),
    ([{"op": "move", "path": "/k"}], 400, "Invalid operation: `move`"),
    ([{"op": "add", "path": "/k"}], 400, 'requires a member named "value"'),
    ([{"op": "add", "path": "k", "value": "v"}], 400, 'does not start with "/"'),
    ({"op": "add", "path": "/k", "value": "v"}, 400, "JSON array"),
])
async def test_patch_refusals(api: Api, ops: Any, status: int, fragment: str) -> None:
    image = await api.p1.create()
    async with api.p1.patch(image["id"], ops) as resp:
        await error_of(resp, status, fragment)
    assert await api.p1.show(image["id"]) == image, "a refused PATCH changed the image"


async def test_patch_is_all_or_nothing(api: Api) -> None:
    image = await api.p1.create()
    async with api.p1.patch(image["id"], [{"op": "add", "path": "/good", "value": "1"},
                                          {"op": "replace", "path": "/missing", "value": "x"}]) as resp:
        await error_of(resp, 409)
    assert "good" not in await api.p1.show(image["id"])


async def test_patch_needs_the_json_patch_media_type(api: Api) -> None:
    image = await api.p1.create()
    for content_type in ("application/json", "application/octet-stream"):
        async with api.p1.patch(image["id"], [{"op": "add", "path": "/k", "value": "v"}],
                                content_type=content_type) as resp:
            await error_of(resp, 415, "application/openstack-images-v2.1-json-patch")
            assert resp.headers["Accept-Patch"] == (
                "application/openstack-images-v2.0-json-patch, application/openstack-images-v2.1-json-patch")
    async with api.p1.patch(image["id"], [{"add": "/k", "value": "v"}],
                            content_type="application/openstack-images-v2.0-json-patch") as resp:
        assert resp.status == 200


V20 = "application/openstack-images-v2.0-json-patch"


async def test_patch_v20_dialect(api: Api) -> None:
    """A v2.0 client (`{"replace": "/name", …}`) can rename and unprotect an
    image, and so clean it up; v2.1's body under the v2.0 type is a 400."""
    image = await api.p1.create(protected=True, hw_disk_bus="scsi")
    async with api.p1.patch(image["id"], [{"replace": "/name", "value": "renamed"},
                                          {"replace": "/protected", "value": False},
                                          {"remove": "/hw_disk_bus"}, {"add": "/os_distro", "value": "cirros"}],
                            content_type=V20) as resp:
        assert resp.status == 200, await resp.text()
        out = await resp.json()
    assert (out["name"], out["protected"], out["os_distro"]) == ("renamed", False, "cirros")
    assert "hw_disk_bus" not in out
    async with api.p1.patch(image["id"], [{"add": "/os_distro", "value": "x"}], content_type=V20) as resp:
        await error_of(resp, 409, "Property os_distro already present.")
    async with api.p1.patch(image["id"], [{"op": "replace", "path": "/name", "value": "x"}],
                            content_type=V20) as resp:
        await error_of(resp, 400, 'exactly one member named "add", "remove", or "replace"')
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        assert resp.status == 204


async def test_formats_cannot_change_once_the_image_has_data(api: Api) -> None:
    image = await api.active_image(default_image())
    async with api.p1.patch(image["id"], [{"op": "replace", "path": "/disk_format", "value": "qcow2"}]) as resp:
        await error_of(resp, 403, "queued")


async def test_tags_via_patch_and_tag_endpoints(api: Api) -> None:
    image = await api.p1.create(tags=["a"])
    out = await patched(api.p1, image["id"], [{"op": "replace", "path": "/tags", "value": ["b", "c", "b"]}])
    assert out["tags"] == ["b", "c"]
    async with api.p1.put(f"/v2/images/{image['id']}/tags/d") as resp:
        assert resp.status == 204
    async with api.p1.put(f"/v2/images/{image['id']}/tags/d") as resp:
        assert resp.status == 204  # idempotent
    async with api.p1.delete(f"/v2/images/{image['id']}/tags/b") as resp:
        assert resp.status == 204
    assert sorted((await api.p1.show(image["id"]))["tags"]) == ["c", "d"]
    async with api.p1.delete(f"/v2/images/{image['id']}/tags/nope") as resp:
        await error_of(resp, 404, "nope")
    assert await ids(api.p1, "?tag=d") == [image["id"]]


# --- delete ----------------------------------------------------------------------------


async def test_delete_removes_every_copy(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0", "dcn1"))
    for store in ("central", "dcn0", "dcn1"):
        assert api.store_files(store) == [image["id"]]
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        assert resp.status == 204
    async with api.p1.get(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 404)
    api.assert_nothing_left(image["id"])
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 404)


async def test_delete_of_an_image_located_in_a_site_no_longer_configured_drops_that_location(api: Api) -> None:
    """A site removed from the config can't be reached: its location goes with the image."""
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    await api.hub.catalog.add_location(image["id"], Location("retired", f"file:///retired/{image['id']}"))
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        assert resp.status == 204, await resp.text()
    api.assert_nothing_left(image["id"])


async def test_delete_from_a_store_no_longer_configured_drops_only_its_location(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    await api.hub.catalog.add_location(image["id"], Location("retired", f"file:///retired/{image['id']}"))
    async with api.admin.delete(f"/v2/stores/retired/{image['id']}") as resp:
        assert resp.status == 204, await resp.text()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"
    assert api.store_files("dcn0") == [image["id"]]


async def test_delete_of_a_staged_image_removes_its_staging_file(api: Api) -> None:
    image = await api.p1.create()
    await api.p1.stage(image["id"], default_image())
    assert api.staging_files() == [image["id"]]
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        assert resp.status == 204
    assert api.staging_files() == []


async def test_delete_of_a_protected_image_is_403(api: Api) -> None:
    image = await api.active_image(default_image(), protected=True)
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 403, "protected", "protected=false")
    async with api.admin.delete(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 403, "protected")
    assert api.store_files("central") == [image["id"]]
    await patched(api.p1, image["id"], [{"op": "replace", "path": "/protected", "value": False}])
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        assert resp.status == 204
    api.assert_nothing_left(image["id"])


async def test_delete_from_one_store(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0", "dcn1"))
    async with api.admin.delete(f"/v2/stores/dcn0/{image['id']}", headers={"Content-Length": "0"}) as resp:
        assert resp.status == 204, await resp.text()
    after = await api.p1.show(image["id"])
    assert after["stores"] == "central,dcn1" and after["status"] == "active"
    assert "locations" not in after  # only admins see locations
    located = await api.admin.show(image["id"])
    assert [loc["metadata"]["store"] for loc in located["locations"]] == ["central", "dcn1"]
    assert api.store_files("dcn0") == [] and api.store_files("dcn1") == [image["id"]]


async def test_delete_from_a_store_without_a_copy_is_404(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    async with api.admin.delete(f"/v2/stores/dcn1/{image['id']}") as resp:
        await error_of(resp, 404, "no copy in store 'dcn1'")
    async with api.admin.delete(f"/v2/stores/nowhere/{image['id']}") as resp:
        await error_of(resp, 404, "Unknown store 'nowhere'", "central, dcn0, dcn1")
    missing = str(uuid.uuid4())
    async with api.admin.delete(f"/v2/stores/dcn0/{missing}") as resp:
        await error_of(resp, 404, missing)
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"


async def test_delete_of_the_last_location_is_403(api: Api) -> None:
    image = await api.active_image(default_image())
    async with api.admin.delete(f"/v2/stores/central/{image['id']}") as resp:
        await error_of(resp, 403, "last copy", "delete the image instead")
    assert (await api.p1.show(image["id"]))["stores"] == "central"
    assert api.store_files("central") == [image["id"]]


async def test_delete_of_the_central_copy_is_403_while_edges_hold_it(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    async with api.admin.delete(f"/v2/stores/central/{image['id']}") as resp:
        await error_of(resp, 403, "central", "hub first")
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"


async def test_delete_of_the_last_edge_location_of_an_edge_only_image_is_403(api: Api) -> None:
    """An image whose only copy is at an edge (e.g. created there): the store
    delete of that copy is the last location, whatever store it is."""
    image = await api.active_image(default_image(), stores=("central", "dcn1"))
    # Make it edge-only in the catalog (as an edge-created image would be).
    await api.hub.catalog.remove_location(image["id"], "central")
    async with api.admin.delete(f"/v2/stores/dcn1/{image['id']}") as resp:
        await error_of(resp, 403, "last copy")
