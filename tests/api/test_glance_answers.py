"""Where the hub used to answer differently from Glance for no reason:
`stores` (and `locations`) come in one stable order, central first, then by
name, whatever order the copies finished in."""

from __future__ import annotations

from edgesync.stores.base import Location
from tests.api.conftest import Api, copy, default_image


async def test_stores_are_central_first_then_by_name_whatever_order_copies_finished(api: Api) -> None:
    image = await api.active_image(default_image())
    for store in ("dcn1", "dcn0"):  # dcn1's copy finishes first
        await api.admin.import_(image["id"], copy([store]))
        await api.wait_idle()
    shown = await api.admin.show(image["id"])
    assert shown["stores"] == "central,dcn0,dcn1"
    assert [loc["metadata"]["store"] for loc in shown["locations"]] == ["central", "dcn0", "dcn1"]
    assert shown["direct_url"] == shown["locations"][0]["url"]
    async with api.admin.get("/v2/images") as resp:
        listed = (await resp.json())["images"]
    assert [i["stores"] for i in listed] == ["central,dcn0,dcn1"]


async def test_an_edge_first_image_still_lists_central_first(api: Api) -> None:
    """An edge-created image gets its central copy last: it is shown first anyway."""
    image = await api.p1.create()
    for store in ("dcn1", "central", "dcn0"):
        await api.hub.catalog.add_location(image["id"], Location(store, f"file:///{store}/{image['id']}"))
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0,dcn1"
