"""Discovery without a token, token auth on /v2/*, the opt-in no-auth mode,
and who may see and change which image."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import (
    Api,
    Source,
    copy,
    default_image,
    error_of,
    running_api,
    write_hub_files,
)

# --- discovery ----------------------------------------------------------------------


async def test_root_answers_300_with_versions_without_a_token(api: Api) -> None:
    async with api.anon.get("/") as resp:
        assert resp.status == 300
        body = await resp.json()
    ids = [v["id"] for v in body["versions"]]
    assert ids[0] == "v2.17" and body["versions"][0]["status"] == "CURRENT"
    assert "v2.0" in ids
    assert body["versions"][0]["links"][0]["href"] == "http://hub.test:9292/v2/"


async def test_versions_and_healthz_answer_without_a_token(api: Api) -> None:
    async with api.anon.get("/versions") as resp:
        assert resp.status == 200
        assert (await resp.json())["versions"][0]["id"] == "v2.17"
    async with api.anon.get("/healthz") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("path", ["/v2/images", "/v2/schemas/image", "/v2/info/stores", "/v2/info/import"])
async def test_v2_without_a_token_is_401(api: Api, path: str) -> None:
    async with api.anon.get(path) as resp:
        await error_of(resp, 401, "X-Auth-Token")


async def test_v2_with_a_bad_token_is_401(api: Api) -> None:
    async with api.anon.get("/v2/images", headers={"X-Auth-Token": "tok-adminX"}) as resp:
        await error_of(resp, 401, "not valid")
    async with api.anon.post("/v2/images", json={"name": "x"}, headers={"X-Auth-Token": "notused"}) as resp:
        await error_of(resp, 401)


async def test_unknown_path_is_json_404_and_wrong_method_is_json_405(api: Api) -> None:
    async with api.admin.get("/v2/nothing-here") as resp:
        await error_of(resp, 404, "/v2/nothing-here")
    async with api.admin.request("PUT", "/v2/images") as resp:
        await error_of(resp, 405, "PUT")


async def test_info_endpoints(api: Api) -> None:
    async with api.p1.get("/v2/info/stores") as resp:
        stores = (await resp.json())["stores"]
    assert [s["id"] for s in stores] == ["central", "dcn0", "dcn1"]
    assert stores[0]["default"] == "true" and "default" not in stores[1]
    async with api.p1.get("/v2/info/import") as resp:
        assert (await resp.json())["import-methods"]["value"] == ["glance-direct", "web-download", "copy-image"]
    async with api.p1.get("/v2/info/stores/detail") as resp:
        await error_of(resp, 403, "admin")
    async with api.admin.get("/v2/info/stores/detail") as resp:
        detail = (await resp.json())["stores"]
    assert {s["type"] for s in detail} == {"file"}


async def test_glanceclient_headers_on_get_and_delete_are_accepted(api: Api) -> None:
    """glanceclient sends Content-Type: application/octet-stream on GET and
    DELETE, and Content-Length: 0 on DELETE."""
    image = await api.p1.create()
    headers = {"Content-Type": "application/octet-stream"}
    async with api.p1.get(f"/v2/images/{image['id']}", headers=headers) as resp:
        assert resp.status == 200
    async with api.p1.delete(f"/v2/images/{image['id']}", headers={**headers, "Content-Length": "0"}) as resp:
        assert resp.status == 204


# --- no-auth mode -------------------------------------------------------------------


async def test_noauth_mode_is_opt_in_and_runs_everyone_as_admin(tmp_path: Path, source: Source) -> None:
    write_hub_files(tmp_path, source_port=source.port, auth="noauth")
    async with running_api(tmp_path) as api:
        async with api.anon.post("/v2/images", json={"name": "n", "visibility": "public"}) as resp:
            assert resp.status == 201, await resp.text()
            image = await resp.json()
        assert image["owner"] == "admin"
        async with api.anon.get("/v2/images", headers={"X-Auth-Token": "notused"}) as resp:
            assert [i["id"] for i in (await resp.json())["images"]] == [image["id"]]


# --- visibility and ownership --------------------------------------------------------


async def listed(caller, query: str = "") -> set[str]:  # type: ignore[no-untyped-def]
    async with caller.get(f"/v2/images{query}") as resp:
        assert resp.status == 200, await resp.text()
        return {i["id"] for i in (await resp.json())["images"]}


async def test_other_projects_private_and_shared_images_are_invisible(api: Api) -> None:
    private = await api.p1.create(visibility="private")
    shared = await api.p1.create()  # Glance's default visibility: shared
    assert shared["visibility"] == "shared"
    for image in (private, shared):
        async with api.p2.get(f"/v2/images/{image['id']}") as resp:
            await error_of(resp, 404, image["id"])
        async with api.p2.patch(image["id"], [{"op": "replace", "path": "/name", "value": "x"}]) as resp:
            await error_of(resp, 404)
        async with api.p2.delete(f"/v2/images/{image['id']}") as resp:
            await error_of(resp, 404)
        async with api.p2.get(f"/v2/images/{image['id']}/tasks") as resp:
            await error_of(resp, 404)
    assert await listed(api.p2) == set()
    assert await listed(api.p1) == {private["id"], shared["id"]}
    assert await listed(api.admin) == {private["id"], shared["id"]}


async def test_shared_image_is_visible_to_an_accepted_member(api: Api) -> None:
    shared = await api.p1.create()
    await api.hub.catalog.set_member(shared["id"], "p2", "pending")
    assert await listed(api.p2) == set()
    await api.hub.catalog.set_member(shared["id"], "p2", "accepted")
    assert await listed(api.p2) == {shared["id"]}
    assert (await api.p2.show(shared["id"]))["id"] == shared["id"]


async def test_public_and_community_are_visible_community_listed_only_on_request(api: Api) -> None:
    public = await api.admin.create(visibility="public", owner="p1")
    community = await api.p1.create(visibility="community")
    assert (await api.p2.show(public["id"]))["owner"] == "p1"
    assert (await api.p2.show(community["id"]))["visibility"] == "community"
    assert await listed(api.p2) == {public["id"]}
    assert await listed(api.p2, "?visibility=community") == {community["id"]}
    assert await listed(api.p2, "?visibility=all") == {public["id"], community["id"]}
    # The owner sees their own community image in the default listing.
    assert await listed(api.p1) == {public["id"], community["id"]}


async def test_visible_but_not_owned_images_cannot_be_changed(api: Api) -> None:
    public = await api.admin.create(visibility="public", owner="p1")
    community = await api.p1.create(visibility="community")
    for image in (public, community):
        async with api.p2.patch(image["id"], [{"op": "replace", "path": "/name", "value": "x"}]) as resp:
            await error_of(resp, 403, "owner")
        async with api.p2.delete(f"/v2/images/{image['id']}") as resp:
            await error_of(resp, 403, "owner")
        async with api.p2.put(f"/v2/images/{image['id']}/tags/t") as resp:
            await error_of(resp, 403, "owner")
    assert (await api.p1.show(public["id"]))["name"] == "img"


async def test_another_project_may_copy_a_visible_image_but_not_store_delete_or_stage_it(api: Api) -> None:
    """The DCN policy: copy_image is allowed on images the caller may see (a
    boot at an edge copies the image there with the user's token); Glance's
    default is admin only. Store deletes stay Glance's: admin only."""
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    private = await api.active_image(default_image(seed=1), visibility="private")
    async with api.p2.post(f"/v2/images/{private['id']}/import", json=copy(["dcn1"])) as resp:
        await error_of(resp, 404, private["id"])  # not visible: not even told it exists
    async with api.p2.post(f"/v2/images/{image['id']}/import", json=copy(["dcn1"])) as resp:
        await error_of(resp, 404)  # shared, p2 not a member yet
    async with api.admin.patch(image["id"], [{"op": "replace", "path": "/visibility", "value": "public"}]) as resp:
        assert resp.status == 200
    for who in (api.p2, api.p1):
        async with who.delete(f"/v2/stores/dcn0/{image['id']}") as resp:
            await error_of(resp, 403, "only an admin", "delete_image_location")
    async with api.p2.put(f"/v2/images/{image['id']}/stage", data=b"x") as resp:
        await error_of(resp, 403, "owner", "modify_image")
    await api.p2.import_(image["id"], copy(["dcn1"]))
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0,dcn1"
    assert (await api.last_task(image["id"]))["status"] == "success"


async def test_only_admin_may_make_an_image_public(api: Api) -> None:
    async with api.p1.post("/v2/images", json={"name": "x", "visibility": "public"}) as resp:
        await error_of(resp, 403, "Only an admin may make an image public")
    image = await api.p1.create()
    async with api.p1.patch(image["id"], [{"op": "replace", "path": "/visibility", "value": "public"}]) as resp:
        await error_of(resp, 403, "Only an admin")
    async with api.p1.patch(image["id"], [{"op": "replace", "path": "/visibility", "value": "community"}]) as resp:
        assert (await resp.json())["visibility"] == "community"
    async with api.admin.patch(image["id"], [{"op": "replace", "path": "/visibility", "value": "public"}]) as resp:
        assert (await resp.json())["visibility"] == "public"


async def test_only_admin_may_set_another_owner(api: Api) -> None:
    async with api.p1.post("/v2/images", json={"name": "x", "owner": "p2"}) as resp:
        await error_of(resp, 403, "another project")
    image = await api.p1.create()
    async with api.p1.patch(image["id"], [{"op": "replace", "path": "/owner", "value": "p2"}]) as resp:
        await error_of(resp, 403, "owner")
    async with api.admin.patch(image["id"], [{"op": "replace", "path": "/owner", "value": "p2"}]) as resp:
        assert (await resp.json())["owner"] == "p2"
    async with api.p1.get(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 404)


# --- auth = "keystone" with Keystone unreachable ----------------------------------------


async def test_keystone_unreachable_is_a_503_saying_so_not_a_401(tmp_path: Path, source: Source) -> None:
    """The real keystoneauth1 path against a loopback port nobody listens on
    (the e2e suite runs a real Keystone, stops it, and sees the same)."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago, now closed: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hub_toml = write_hub_files(tmp_path, source_port=source.port, auth="keystone")
    (tmp_path / "hub.password").write_text("pw\n")
    with hub_toml.open("a") as fh:
        fh.write(f'\n[keystone]\nauth_url = "http://127.0.0.1:{port}/v3"\nusername = "edgesync-hub"\n'
                 'password_file = "hub.password"\ntimeout_s = 2\n')
    async with running_api(tmp_path) as api:
        async with api.p1.get("/v2/images") as resp:
            await error_of(resp, 503, "Keystone at http://127.0.0.1:", "can't be reached")
        async with api.anon.get("/v2/images") as resp:
            assert resp.status == 401  # no token at all: no need to ask Keystone
        async with api.anon.get("/versions") as resp:
            assert resp.status == 200
