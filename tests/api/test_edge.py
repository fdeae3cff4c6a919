"""edgesync's own endpoints: boot location by availability zone, and sites."""

from __future__ import annotations

from tests.api.conftest import Api, default_image, error_of


async def test_boot_location_answers_only_the_azs_own_store(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    async with api.p1.get("/edgesync/v1/boot-location",
                          params={"availability_zone": "dcn0", "image_id": image["id"]}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["store"] == "dcn0" and body["status"] == "available"
    assert body["location"]["metadata"] == {"store": "dcn0"}
    assert "/dcn0/" in body["location"]["url"]
    # dcn1 has no copy: never another site's location, a 404 that says what to do
    async with api.p1.get("/edgesync/v1/boot-location",
                          params={"availability_zone": "dcn1", "image_id": image["id"]}) as resp:
        message = await error_of(resp, 404, "dcn1", "copy=true")
    assert "dcn0" not in message.split("(")[0]


async def test_boot_location_with_copy_starts_the_copy_to_that_site_only(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central",))
    async with api.p1.get("/edgesync/v1/boot-location",
                          params={"availability_zone": "dcn1", "image_id": image["id"], "copy": "true"}) as resp:
        assert resp.status == 202
        body = await resp.json()
    assert body["status"] == "copying" and body["store"] == "dcn1"
    await api.wait_idle()
    assert sorted((await api.p1.show(image["id"]))["stores"].split(",")) == ["central", "dcn1"]
    async with api.p1.get("/edgesync/v1/boot-location",
                          params={"availability_zone": "dcn1", "image_id": image["id"]}) as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "available"


async def test_boot_location_refuses_unknown_zones_and_missing_arguments(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central",))
    async with api.p1.get("/edgesync/v1/boot-location",
                          params={"availability_zone": "nowhere", "image_id": image["id"]}) as resp:
        await error_of(resp, 404, "nowhere", "known zones")
    async with api.p1.get("/edgesync/v1/boot-location", params={"image_id": image["id"]}) as resp:
        await error_of(resp, 400, "availability_zone")


async def test_sites_lists_every_site_with_its_zone(api: Api) -> None:
    async with api.admin.get("/edgesync/v1/sites") as resp:
        assert resp.status == 200
        sites = {s["name"]: s for s in (await resp.json())["sites"]}
    assert set(sites) == {"central", "dcn0", "dcn1"}
    assert sites["central"]["role"] == "central" and sites["dcn0"]["availability_zone"] == "dcn0"
    assert sites["dcn0"]["agent"] is False  # no bus configured: copies run in the hub
