"""edgesync's own endpoints: boot location by availability zone, and sites."""

from __future__ import annotations

import json
import shutil
import uuid
from typing import Any

import pytest

from tests.api.conftest import Api, Caller, MiB, copy, default_image, error_of, gate_store_writes, md5, sha512


async def test_boot_location_answers_only_the_azs_own_store(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    async with api.admin.get("/edgesync/v1/boot-location",
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


async def test_boot_location_hides_the_stores_url_from_non_admins(api: Api) -> None:
    """As image JSON hides `locations` and `direct_url` from members, so does
    boot-location: a member learns that dcn0 has a copy, not where it lies."""
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    params = {"availability_zone": "dcn0", "image_id": image["id"]}
    async with api.p1.get("/edgesync/v1/boot-location", params=params) as resp:
        assert resp.status == 200
        text = await resp.text()
    body = json.loads(text)
    assert body["store"] == "dcn0" and body["status"] == "available"
    assert "location" not in body
    assert "/dcn0/" not in text and "file://" not in text and "rbd://" not in text
    assert "locations" not in (await api.p1.show(image["id"]))  # the rule it follows
    async with api.admin.get("/edgesync/v1/boot-location", params=params) as resp:
        assert (await resp.json())["location"]["url"].endswith(image["id"])


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
    assert sites["dcn0"]["pending_deletes"] == 0


async def test_pending_deletes_are_listed_for_admins_only(api: Api) -> None:
    async with api.admin.get("/edgesync/v1/pending-deletes", params={"site": "dcn0"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"pending_deletes": []}  # in-hub deletes never wait for a site
    async with api.admin.get("/edgesync/v1/pending-deletes", params={"site": "nowhere"}) as resp:
        await error_of(resp, 404, "nowhere", "known sites")
    async with api.p1.get("/edgesync/v1/pending-deletes") as resp:
        await error_of(resp, 403, "admin")


# --- images created at an edge go to central first -----------------------------


def _edge_snapshot(api: Api, site: str) -> tuple[str, bytes]:
    """An image written straight into an edge store, as a Nova snapshot would be."""
    image_id = str(uuid.uuid4())
    data = default_image(seed=7)
    (api.store_dir(site) / image_id).write_bytes(data)
    return image_id, data


def _registration(image_id: str, data: bytes) -> dict[str, object]:
    return {"id": image_id, "name": "nova-snapshot", "size": len(data), "checksum": md5(data),
            "os_hash_value": sha512(data)}


async def test_edge_created_image_goes_to_central_before_any_other_edge(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    image_id, data = _edge_snapshot(api, "dcn0")
    gate = gate_store_writes(monkeypatch, api.hub, "central")
    async with api.admin.post("/edgesync/v1/sites/dcn0/images", json=_registration(image_id, data)) as resp:
        assert resp.status == 201, await resp.text()
        body = await resp.json()
    assert body["image"]["stores"] == "dcn0" and body["image"]["status"] == "active"
    await gate.wait_entered()
    # while central is being written, a copy to another edge breaks hub first: 409 naming the rule
    async with api.admin.post(f"/v2/images/{image_id}/import", json=copy(["dcn1"])) as resp:
        await error_of(resp, 409, "central", "hub first")
    gate.open()
    await api.wait_idle()
    image = await api.admin.show(image_id)
    assert sorted(image["stores"].split(",")) == ["central", "dcn0"]
    assert (api.store_dir("central") / image_id).read_bytes() == data
    await api.admin.import_(image_id, copy(["dcn1"]))  # now allowed
    await api.wait_idle()
    assert sorted((await api.admin.show(image_id))["stores"].split(",")) == ["central", "dcn0", "dcn1"]


async def test_edge_registration_with_a_wrong_hash_never_reaches_central(api: Api) -> None:
    image_id, data = _edge_snapshot(api, "dcn1")
    wrong = {**_registration(image_id, data), "os_hash_value": sha512(b"something else")}
    async with api.admin.post("/edgesync/v1/sites/dcn1/images", json=wrong) as resp:
        assert resp.status == 201
    await api.wait_idle()
    image = await api.admin.show(image_id)
    assert image["stores"] == "dcn1" and image["os_glance_failed_import"] == "central"
    assert not [f for f in api.store_files("central") if f.startswith(image_id)]


async def test_edge_registration_is_refused_when_it_cannot_be_right(api: Api) -> None:
    image_id, data = _edge_snapshot(api, "dcn0")
    async with api.p1.post("/edgesync/v1/sites/dcn0/images", json=_registration(image_id, data)) as resp:
        await error_of(resp, 403, "dcn0")
    missing = _registration(str(uuid.uuid4()), data)
    async with api.admin.post("/edgesync/v1/sites/dcn0/images", json=missing) as resp:
        await error_of(resp, 404, "no published copy")
    async with api.admin.post("/edgesync/v1/sites/central/images", json=_registration(image_id, data)) as resp:
        await error_of(resp, 404, "edge site")
    async with api.admin.post("/edgesync/v1/sites/dcn0/images", json={"id": image_id}) as resp:
        await error_of(resp, 400, "size")
    for key, value in (("visibility", "everyone"), ("disk_format", "floppy"), ("name", 42)):
        bad = {**_registration(image_id, data), key: value}
        async with api.admin.post("/edgesync/v1/sites/dcn0/images", json=bad) as resp:
            await error_of(resp, 400, key)
    async with api.admin.get(f"/v2/images/{image_id}") as resp:
        assert resp.status == 404  # nothing was recorded


async def test_sites_say_up_free_space_and_copies_in_flight_where_the_hub_runs_them(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    image = await api.active_image(default_image())
    gate = gate_store_writes(monkeypatch, api.hub, "dcn0")
    await api.admin.import_(image["id"], copy(["dcn0"]))
    await gate.wait_entered()
    task_id = (await api.last_task(image["id"]))["id"]
    sites = await _sites(api)
    assert sites["dcn0"]["in_flight"] == [f"{task_id}-dcn0"] and sites["central"]["in_flight"] == []
    gate.open()
    await api.wait_idle()
    sites = await _sites(api)
    assert sites["dcn0"]["in_flight"] == []
    for name, site in sites.items():
        assert site["up"] is True and site["problem"] is None, site
        free = shutil.disk_usage(api.store_dir(name)).free
        assert abs(site["free_bytes"] - free) < 256 * MiB, (site, free)  # other tests write meanwhile
        assert site["heartbeat_age_s"] is None  # no agent: nothing heartbeats


async def test_a_store_that_cannot_answer_is_down_with_the_reason(api: Api) -> None:
    path = api.store_dir("dcn1")
    path.rename(path.with_name("dcn1.gone"))
    try:
        site = (await _sites(api))["dcn1"]
    finally:
        path.with_name("dcn1.gone").rename(path)
    assert site["up"] is False and site["free_bytes"] is None
    assert "dcn1" in site["problem"] and str(path) in site["problem"]


async def _sites(api: Api) -> dict[str, dict[str, Any]]:
    async with api.admin.get("/edgesync/v1/sites") as resp:
        assert resp.status == 200, await resp.text()
        return {s["name"]: s for s in (await resp.json())["sites"]}


# --- recent tasks ------------------------------------------------------------------


async def test_tasks_lists_the_newest_first_with_each_stores_state(api: Api) -> None:
    mine = await api.active_image(default_image(seed=1))
    theirs = await api.active_image(default_image(seed=2), caller=api.p2)
    await api.p1.import_(mine["id"], copy(["dcn0", "dcn1"]))
    await api.wait_idle()
    admin = await _tasks(api.admin, limit=3)
    assert [t["image_id"] for t in admin] == [mine["id"], theirs["id"], mine["id"]]
    newest = admin[0]
    assert newest["input"]["import_req"]["method"]["name"] == "copy-image"
    assert {s: r["state"] for s, r in newest["result"]["stores"].items()} == {"dcn0": "done", "dcn1": "done"}
    # a member sees only its project's images' tasks
    assert {t["image_id"] for t in await _tasks(api.p1, limit=200)} == {mine["id"]}
    assert {t["image_id"] for t in await _tasks(api.p2, limit=200)} == {theirs["id"]}
    assert await _tasks(api.admin, limit=200, unfinished="true") == []


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "many"}, {"limit": "201"}, {"unfinished": "maybe"}])
async def test_tasks_with_a_bad_query_is_400(api: Api, query: dict[str, str]) -> None:
    async with api.admin.get("/edgesync/v1/tasks", params=query) as resp:
        await error_of(resp, 400, next(iter(query)))


async def _tasks(caller: Caller, **params: Any) -> list[dict[str, Any]]:
    async with caller.get("/edgesync/v1/tasks", params={k: str(v) for k, v in params.items()}) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["tasks"]


async def test_registration_completes_a_queued_record_of_that_id_and_refuses_one_with_data(api: Api) -> None:
    queued = await api.p1.create(name="nova-made-this")  # as Nova does before its snapshot
    data = default_image(seed=11)
    (api.store_dir("dcn0") / queued["id"]).write_bytes(data)
    async with api.agent0.post("/edgesync/v1/sites/dcn0/images", json=_registration(queued["id"], data)) as resp:
        assert resp.status == 201, await resp.text()
        body = (await resp.json())["image"]
    assert body["status"] == "active" and body["stores"] == "dcn0"
    assert body["name"] == "nova-made-this" and body["owner"] == "p1"  # the record keeps its maker's fields
    await api.wait_idle()
    image = await api.p1.show(queued["id"])
    assert image["stores"] == "central,dcn0" and image["os_hash_value"] == sha512(data)
    # now it has data: a second registration is refused, nothing changes
    async with api.agent0.post("/edgesync/v1/sites/dcn0/images", json=_registration(queued["id"], data)) as resp:
        await error_of(resp, 409, "active")
