"""Deactivate/reactivate (Glance's image_actions.py), x-image-meta-store on
upload (Cinder's upload-to-image), and GET /v2/info/usage."""

from __future__ import annotations

from tests.api.conftest import TOKENS, Api, Caller, chunks, default_image, error_of, md5


async def act(who: Caller, image_id: str, action: str, status: int = 204) -> None:
    async with who.post(f"/v2/images/{image_id}/actions/{action}") as resp:
        if status == 204:
            assert resp.status == 204, await resp.text()
            assert await resp.read() == b""
        else:
            await error_of(resp, status)


async def test_deactivate_refuses_downloads_and_reactivate_gives_them_back(api: Api) -> None:
    data = default_image()
    image = await api.active_image(data, stores=("central", "dcn0"))
    await act(api.p1, image["id"], "deactivate")
    shown = await api.p1.show(image["id"])
    assert shown["status"] == "deactivated"
    async with api.p1.get(f"/v2/images/{image['id']}/file") as resp:
        await error_of(resp, 403, "deactivated", "download is forbidden")
    assert await api.admin.download(image["id"]) == data  # admins still may, as in Glance
    # locations are hidden from non-admins while deactivated, even the service persona
    async with api.p2.get(f"/v2/images/{image['id']}", headers={"X-Service-Token": TOKENS["service"][0]}) as resp:
        assert resp.status == 404  # shared, p2 no member: not visible at all
    admin_view = await api.admin.show(image["id"])
    assert len(admin_view["locations"]) == 2
    await act(api.p1, image["id"], "deactivate")  # again: nothing to do, 204
    await act(api.p1, image["id"], "reactivate")
    assert (await api.p1.show(image["id"]))["status"] == "active"
    await act(api.p1, image["id"], "reactivate")  # already active: 204
    assert md5(await api.p1.download(image["id"])) == image["checksum"]


async def test_deactivate_needs_an_active_image_and_the_owner_or_an_admin(api: Api) -> None:
    queued = await api.p1.create()
    async with api.p1.post(f"/v2/images/{queued['id']}/actions/deactivate") as resp:
        await error_of(resp, 403, "Not allowed to deactivate image in status 'queued'")
    async with api.p1.post(f"/v2/images/{queued['id']}/actions/reactivate") as resp:
        await error_of(resp, 403, "Not allowed to reactivate image in status 'queued'")
    public = await api.active_image(default_image(seed=1), caller=api.admin, visibility="public")
    async with api.p2.post(f"/v2/images/{public['id']}/actions/deactivate") as resp:
        await error_of(resp, 403, "deactivate", "owner")
    reader = Caller(api.client, TOKENS["reader"][0])
    mine = await api.active_image(default_image(seed=2))
    async with reader.post(f"/v2/images/{mine['id']}/actions/deactivate") as resp:
        await error_of(resp, 403, "deactivate")
    private = await api.active_image(default_image(seed=3), caller=api.admin, visibility="private")
    async with api.p1.post(f"/v2/images/{private['id']}/actions/deactivate") as resp:
        await error_of(resp, 404, private["id"])
    await act(api.admin, public["id"], "deactivate")
    async with api.p2.get(f"/v2/images/{public['id']}/file") as resp:
        await error_of(resp, 403, "deactivated")
    # a deactivated image is not copied anywhere
    async with api.admin.post(f"/v2/images/{public['id']}/import",
                              json={"method": {"name": "copy-image"}, "stores": ["dcn1"]}) as resp:
        await error_of(resp, 409, "deactivated")
    async with api.p1.post(f"/v2/images/{mine['id']}/actions/nothing") as resp:
        assert resp.status == 404


async def test_upload_with_x_image_meta_store_writes_that_store_after_central(api: Api) -> None:
    data = default_image()
    image = await api.p1.create()
    headers = {"Content-Type": "application/octet-stream", "X-Image-Meta-Store": "dcn1"}
    async with api.p1.put(f"/v2/images/{image['id']}/file", data=chunks(data), headers=headers) as resp:
        assert resp.status == 204, await resp.text()
    shown = await api.p1.show(image["id"])
    assert shown["status"] == "active" and shown["stores"] == "central,dcn1"
    assert api.store_files("dcn1") == [image["id"]] and api.store_files("dcn0") == []
    assert md5(await api.p1.download(image["id"])) == shown["checksum"] == md5(data)


async def test_upload_to_a_store_the_hub_does_not_have_is_400_and_changes_nothing(api: Api) -> None:
    image = await api.p1.create()
    headers = {"Content-Type": "application/octet-stream", "X-Image-Meta-Store": "nowhere"}
    async with api.p1.put(f"/v2/images/{image['id']}/file", data=b"x" * 1024, headers=headers) as resp:
        await error_of(resp, 400, "nowhere", "central, dcn0, dcn1")
    shown = await api.p1.show(image["id"])
    assert shown["status"] == "queued" and "stores" not in shown
    assert api.staging_files() == []


async def test_info_usage_has_glances_four_resources(api: Api) -> None:
    async with api.p1.get("/v2/info/usage") as resp:
        assert resp.status == 200, await resp.text()
        empty = (await resp.json())["usage"]
    assert set(empty) == {"image_size_total", "image_stage_total", "image_count_total", "image_count_uploading"}
    assert all(v == {"limit": -1, "usage": 0} for v in empty.values()), empty
    size = 8 << 20
    await api.active_image(default_image(), stores=("central", "dcn0"))
    staged = await api.p1.create()
    await api.p1.stage(staged["id"], bytes(3 << 20))
    await api.p1.create()
    await api.active_image(default_image(seed=1), caller=api.p2)
    async with api.p1.get("/v2/info/usage") as resp:
        usage = (await resp.json())["usage"]
    assert usage["image_count_total"] == {"limit": -1, "usage": 3}
    assert usage["image_count_uploading"] == {"limit": -1, "usage": 1}  # the staged one
    assert usage["image_stage_total"] == {"limit": -1, "usage": 3}  # MiB, as Glance counts
    assert usage["image_size_total"] == {"limit": -1, "usage": 2 * size >> 20}  # once per copy
    async with api.anon.get("/v2/info/usage") as resp:
        assert resp.status == 401
