"""Input classes that gave 500s answer a clear 400 (issue 11, item 4)."""

from __future__ import annotations

import uuid

import pytest

from tests.api.conftest import Api, default_image, error_of


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # nested past the decoder's recursion limit
    b'{"name": "img", "min_ram": ' + b"9" * 4400 + b"}",  # an int over Python's 4,300 digits
])
async def test_json_bodies_that_cannot_be_decoded_are_a_400(api: Api, body: bytes) -> None:
    async with api.p1.post("/v2/images", data=body, headers={"Content-Type": "application/json"}) as resp:
        await error_of(resp, 400, "JSON")


@pytest.mark.parametrize("spelling", [str.upper, lambda u: u.replace("-", ""), lambda u: "{" + u + "}",
                                      lambda u: "urn:uuid:" + u])
async def test_only_canonical_uuids_name_new_images(api: Api, spelling) -> None:  # type: ignore[no-untyped-def]
    image_id = str(uuid.uuid4())
    async with api.p1.post("/v2/images", json={"id": spelling(image_id), "name": "x"}) as resp:
        await error_of(resp, 400, "canonical")


@pytest.mark.parametrize(("path", "params"), [
    ("{id}/data", {"offset": str(1 << 63), "length": "4096"}),
    ("{id}/data", {"offset": "9" * 5000, "length": "4096"}),
    ("{id}/data", {"offset": "\u0661\u0662", "length": "4096"}),
    ("{id}/data", {"offset": "0", "length": "\uff14\uff10\uff19\uff16"}),
    ("{long}/extents", {}),
    ("{upper}/extents", {}),
])
async def test_transfer_parameters_out_of_range_are_a_400(api: Api, path: str, params: dict[str, str]) -> None:
    image = await api.active_image(default_image())
    url = "/edgesync/v1/images/" + path.format(id=image["id"], long="x" * 300, upper=image["id"].upper())
    async with api.admin.get(url, params=params) as resp:
        await error_of(resp, 400)


async def test_a_lone_surrogate_is_a_400_not_a_database_error(api: Api) -> None:
    async with api.p1.post("/v2/images", data=b'{"name": "\\ud800"}',
                           headers={"Content-Type": "application/json"}) as resp:
        await error_of(resp, 400, "surrogate")


@pytest.mark.parametrize("value", [str(1 << 63), "9" * 30, "\u0661\u0662"])
async def test_list_filters_past_sqlites_integers_are_a_400(api: Api, value: str) -> None:
    async with api.p1.get("/v2/images", params={"size_min": value}) as resp:
        await error_of(resp, 400)


async def test_an_upload_longer_than_declared_is_cut_off_at_the_declared_size(api: Api) -> None:
    image = await api.p1.create()
    read = 0

    async def body():  # type: ignore[no-untyped-def]
        nonlocal read
        for _ in range(64):
            read += 1
            yield bytes(1 << 20)

    headers = {"Content-Type": "application/octet-stream", "x-openstack-image-size": str(1 << 20)}
    async with api.p1.put(f"/v2/images/{image['id']}/file", data=body(), headers=headers) as resp:
        await error_of(resp, 400, "Uploaded more than", "said")
    assert read < 64, "the whole body was read before the 400"
    assert (await api.p1.show(image["id"]))["status"] == "queued"


@pytest.mark.parametrize("value", ["\u0661\u0662", "9" * 30, str(1 << 63)])
async def test_size_headers_outside_ascii_and_2_63_are_a_400(api: Api, value: str) -> None:
    image = await api.p1.create()
    headers = {"Content-Type": "application/octet-stream", "x-openstack-image-size": value}
    async with api.p1.put(f"/v2/images/{image['id']}/stage", data=b"x", headers=headers) as resp:
        await error_of(resp, 400, "x-openstack-image-size")
