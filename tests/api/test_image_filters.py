"""Glance's list filters on core fields and properties, its comparison and
`in:` operators, its sorting syntax, and paging in SQL (by the marker's sort
values, whatever the sort keys and NULLs)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from edgesync.model import utcnow
from tests.api.conftest import Api, Caller, default_image, error_of


async def ids(caller: Caller, query: str = "") -> list[str]:
    async with caller.get(f"/v2/images{query}") as resp:
        assert resp.status == 200, await resp.text()
        return [i["id"] for i in (await resp.json())["images"]]


async def made(api: Api, **fields: Any) -> str:
    return str((await api.p1.create(**fields))["id"])


async def test_core_field_filters_are_not_properties(api: Api) -> None:
    raw = await made(api, name="r", disk_format="raw", container_format="bare")
    qcow = await made(api, name="q", disk_format="qcow2", container_format="ovf", min_ram=512)
    iso = await made(api, name="i", disk_format="iso", container_format="bare")
    assert await ids(api.p1, "?disk_format=raw") == [raw]
    assert set(await ids(api.p1, "?container_format=bare")) == {raw, iso}
    assert set(await ids(api.p1, "?disk_format=in:raw,qcow2")) == {raw, qcow}
    assert await ids(api.p1, "?disk_format=in:raw,qcow2&container_format=ovf") == [qcow]
    assert set(await ids(api.p1, f"?id=in:{raw},{iso}")) == {raw, iso}
    assert set(await ids(api.p1, '?name=in:"r",i')) == {raw, iso}
    assert await ids(api.p1, "?name=eq:q") == [qcow]
    assert await ids(api.p1, "?min_ram=512") == [qcow]
    assert await ids(api.p1, "?status=in:active,killed") == []
    assert set(await ids(api.p1, "?status=queued")) == {raw, qcow, iso}


async def test_size_range_and_digests(api: Api) -> None:
    data = default_image()
    small = await api.active_image(data[:1 << 20])
    big = await api.active_image(data)
    await made(api)  # queued: no size, never in a size range
    size = len(data)
    assert await ids(api.p1, f"?size_min={size}") == [big["id"]]
    assert await ids(api.p1, f"?size_max={size - 1}") == [small["id"]]
    assert set(await ids(api.p1, f"?size_min={1 << 20}&size_max={size}")) == {small["id"], big["id"]}
    assert await ids(api.p1, f"?checksum={big['checksum']}") == [big["id"]]
    assert await ids(api.p1, f"?os_hash_value={small['os_hash_value']}") == [small["id"]]


async def test_time_comparisons_on_created_at_and_updated_at(api: Api) -> None:
    old = await made(api, name="old")
    async with api.hub.catalog._db.transaction() as tx:
        await tx.execute("UPDATE images SET created_at = ?, updated_at = ? WHERE id = ?",
                         ("2020-01-01T00:00:00Z", "2021-06-01T12:00:00Z", old))
    new = await made(api, name="new")
    assert await ids(api.p1, "?created_at=lt:2021-01-01T00:00:00Z") == [old]
    assert await ids(api.p1, "?created_at=gte:2021-01-01T00:00:00Z") == [new]
    assert await ids(api.p1, "?created_at=gt:2019-12-31T23:00:00-02:00") == [new], "offsets normalised to UTC"
    assert await ids(api.p1, "?updated_at=eq:2021-06-01T12:00:00Z") == [old]
    assert await ids(api.p1, "?updated_at=neq:2021-06-01T12:00:00Z") == [new]
    assert set(await ids(api.p1, f"?updated_at=lte:{utcnow()}")) == {old, new}


async def test_properties_still_filter_exactly(api: Api) -> None:
    gpu = await made(api, hw_type="gpu")
    await made(api, hw_type="cpu")
    assert await ids(api.p1, "?hw_type=gpu") == [gpu]


@pytest.mark.parametrize("query, fragment", [
    ("?created_at=soon", 'Bad "created_at" query filter format'),
    ("?created_at=after:2020-01-01T00:00:00Z", "unknown operator"),
    ("?disk_format=like:raw", "Unable to filter by unknown operator 'like'"),
    ("?size_min=big", "non-numeric"),
    ("?min_disk=x", "integer"),
    ('?name=in:"a', "quote is not closed"),
    ("?changes-since=2020-01-01", "changes-since"),
    ("?sort=name:asc&sort_key=name", "cannot be combined"),
    ("?sort_key=name&sort_key=size&sort_dir=asc&sort_dir=desc&sort_dir=asc", "does not match"),
    ("?os_hidden=maybe", "os_hidden"),
])
async def test_glances_refusals(api: Api, query: str, fragment: str) -> None:
    async with api.p1.get(f"/v2/images{query}") as resp:
        await error_of(resp, 400, fragment)


async def walk(caller: Caller, query: str) -> list[str]:
    seen: list[str] = []
    url: str | None = f"/v2/images?{query}"
    for _ in range(20):
        if url is None:
            return seen
        async with caller.get(url) as resp:
            body = await resp.json()
        seen += [i["id"] for i in body["images"]]
        url = body.get("next")
    raise AssertionError("next links do not end")


@pytest.mark.parametrize("query", [
    "sort_key=name&sort_dir=asc", "sort_key=name&sort_dir=desc", "sort=size:asc,name:desc",
    "sort_key=min_disk&sort_key=name&sort_dir=desc&sort_dir=asc", "sort_key=created_at",
])
async def test_paging_walks_every_image_once_in_order_nulls_included(api: Api, query: str) -> None:
    """Names and sizes include NULLs and ties: the keyset pages must still
    return each image exactly once, in the same order as one big page."""
    for i in range(7):
        await made(api, name=None if i % 3 == 0 else f"n{i % 2}", min_disk=i % 2)
    await api.active_image(default_image()[:1 << 20], name=None)
    whole = await ids(api.p1, f"?{query}&limit=100")
    assert len(whole) == 8
    assert await walk(api.p1, f"{query}&limit=3") == whole
    assert await walk(api.p1, f"{query}&limit=1") == whole


async def test_paging_stays_put_when_images_appear_before_the_marker(api: Api) -> None:
    first = [await made(api, name=f"b{i}") for i in range(3)]
    async with api.p1.get("/v2/images?sort_key=name&sort_dir=asc&limit=2") as resp:
        page = await resp.json()
    assert [i["id"] for i in page["images"]] == first[:2]
    await made(api, name="a-before-everything")
    async with api.p1.get(page["next"]) as resp:
        assert [i["id"] for i in (await resp.json())["images"]] == first[2:]


async def test_a_marker_not_in_the_listing_is_400(api: Api) -> None:
    hidden = (await api.p2.create(visibility="private"))["id"]
    for marker in (str(uuid.uuid4()), hidden):
        async with api.p1.get(f"/v2/images?marker={marker}") as resp:
            await error_of(resp, 400, "marker")
