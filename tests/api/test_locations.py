"""Glance's location API (v2.17) on the in-hub file lab: list, add to a
queued image (POST, and PATCH add /locations/-), remove by index; a copy
written straight into a store, as Nova's direct snapshot writes one."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import (
    TOKENS,
    Api,
    Caller,
    copy,
    default_image,
    error_of,
    gate_store_writes,
    md5,
    running_api,
    sha512,
)
from tests.api.test_recovery import kill_running_tasks


@pytest.fixture
def nova(api: Api) -> Caller:
    """A member of p1 whose request carries Nova's service token (roles member + service)."""
    return Caller(api.client, TOKENS["nova"][0])


def _snapshot_in(api: Api, store: str, image_id: str, seed: int = 5) -> bytes:
    """The image's data written into a store as its maker (Nova) would, not by the hub."""
    data = default_image(seed=seed)
    (api.store_dir(store) / image_id).write_bytes(data)
    return data


def _url(api: Api, store: str, image_id: str) -> str:
    return f"file://{api.store_dir(store)}/{image_id}"


async def _add(caller: Caller, image_id: str, url: str, validation: dict[str, str] | None = None,
               status: int = 202) -> str:
    body: dict[str, Any] = {"url": url}
    if validation is not None:
        body["validation_data"] = validation
    async with caller.post(f"/v2/images/{image_id}/locations", json=body) as resp:
        text = await resp.text()
        assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
        return text


def _validation(data: bytes) -> dict[str, str]:
    return {"os_hash_algo": "sha512", "os_hash_value": sha512(data), "checksum": md5(data)}


async def test_get_locations_lists_every_copy_for_the_service_and_admins_only(api: Api, nova: Caller) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn1"))
    for who in (api.admin, nova):
        async with who.get(f"/v2/images/{image['id']}/locations") as resp:
            assert resp.status == 200, await resp.text()
            listed = await resp.json()
        assert [loc["metadata"] for loc in listed] == [{"store": "central"}, {"store": "dcn1"}]
        assert listed[0]["url"] == _url(api, "central", image["id"])
    async with api.p1.get(f"/v2/images/{image['id']}/locations") as resp:  # the owner, without the service role
        await error_of(resp, 403, "fetch_image_location")
    async with api.p2.get(f"/v2/images/{image['id']}/locations") as resp:  # can't even see it
        await error_of(resp, 404, image["id"])
    # Cinder's own service credentials (another project) see any image's locations
    async with Caller(api.client, TOKENS["cinder"][0]).get(f"/v2/images/{image['id']}/locations") as resp:
        assert resp.status == 200 and len(await resp.json()) == 2
    async with Caller(api.client, TOKENS["cinder"][0]).get(f"/v2/images/{uuid.uuid4()}/locations") as resp:
        await error_of(resp, 404, "No image")


async def test_a_location_at_an_edge_makes_the_image_active_there_then_central_then_other_edges(
        api: Api, nova: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    image = await api.p1.create(name="nova-snapshot")
    data = _snapshot_in(api, "dcn0", image["id"])
    gate = gate_store_writes(monkeypatch, api.hub, "central")
    await _add(nova, image["id"], _url(api, "dcn0", image["id"]), _validation(data))
    await gate.wait_entered()  # checked at dcn0, active there, now on its way to central
    shown = await api.p1.show(image["id"])
    assert shown["status"] == "active" and shown["stores"] == "dcn0"
    assert (shown["size"], shown["checksum"], shown["os_hash_algo"], shown["os_hash_value"]) == (
        len(data), md5(data), "sha512", sha512(data))
    # hub first: no other edge until central has it
    async with api.admin.post(f"/v2/images/{image['id']}/import", json=copy(["dcn1"])) as resp:
        await error_of(resp, 409, "central", "hub first")
    gate.open()
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"
    assert (api.store_dir("central") / image["id"]).read_bytes() == data
    await api.admin.import_(image["id"], copy(["dcn1"]))
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0,dcn1"
    assert await api.p1.download(image["id"]) == data
    kinds = {t["type"]: t for t in await api.admin.tasks(image["id"])}
    assert kinds["location_import"]["status"] == "success"
    assert "dcn0" in kinds["location_import"]["message"]


async def test_a_location_in_central_is_hashed_by_the_hub_without_validation_data(
        api: Api, nova: Caller) -> None:
    image = await api.p1.create()
    data = _snapshot_in(api, "central", image["id"], seed=9)
    await _add(nova, image["id"], _url(api, "central", image["id"]))
    await api.wait_idle()
    shown = await api.p1.show(image["id"])
    assert shown["status"] == "active" and shown["stores"] == "central"
    assert shown["os_hash_value"] == sha512(data) and shown["checksum"] == md5(data)
    # the same pass made its chunk manifest, which copies to agents are checked against
    manifest = await api.hub.catalog.current_manifest(image["id"], sha512(data))
    assert manifest is not None and manifest.image_size == len(data)


@pytest.mark.parametrize("problem", ["missing", "wrong_hash", "wrong_md5"])
async def test_a_bad_location_leaves_the_image_queued_with_nothing_registered(
        api: Api, nova: Caller, problem: str) -> None:
    image = await api.p1.create()
    image_id = image["id"]
    data = default_image(seed=3)
    validation = _validation(data)
    if problem != "missing":
        _snapshot_in(api, "dcn0", image_id, seed=4)  # not the data the validation describes
        if problem == "wrong_md5":
            actual = (api.store_dir("dcn0") / image_id).read_bytes()
            validation = {"checksum": md5(data), "os_hash_algo": "sha512", "os_hash_value": sha512(actual)}
    await _add(nova, image_id, _url(api, "dcn0", image_id), validation)
    await api.wait_idle()
    shown = await api.p1.show(image_id)
    assert shown["status"] == "queued" and "stores" not in shown
    assert shown["size"] is None and shown["checksum"] is None and shown["os_hash_value"] is None
    assert "os_glance_import_task" not in shown
    task = (await api.admin.tasks(image_id))[0]
    assert task["status"] == "failure" and "queued again" in task["message"]
    expected = {"missing": "no published copy", "wrong_hash": "os_hash_value", "wrong_md5": "checksum"}[problem]
    assert expected in task["message"], task["message"]
    assert not [f for f in api.store_files("central") if f.startswith(image_id)]  # nothing went to central
    # the image takes a good location afterwards
    good = _snapshot_in(api, "dcn0", image_id, seed=6)
    await _add(nova, image_id, _url(api, "dcn0", image_id), _validation(good))
    await api.wait_idle()
    assert (await api.p1.show(image_id))["stores"] == "central,dcn0"


async def test_locations_that_name_no_store_are_refused_saying_which_stores_exist(api: Api, nova: Caller) -> None:
    image_id = (await api.p1.create())["id"]
    nowhere = f"file://{api.dir}/elsewhere/{image_id}"
    message = await _add(nova, image_id, nowhere, status=400)
    for store in ("central", "dcn0", "dcn1"):
        assert store in message
    await _add(nova, image_id, _url(api, "dcn0", str(uuid.uuid4())), status=400)  # another image's name
    await _add(nova, image_id, f"http://127.0.0.1/{image_id}", status=400)
    rbd = f"rbd://{uuid.uuid4()}/images/{image_id}/snap"
    assert "No store" in await _add(nova, image_id, rbd, status=400)
    assert "snapshot" in await _add(nova, image_id, f"rbd://{uuid.uuid4()}/images/{image_id}/other", status=400)
    assert (await api.p1.show(image_id))["status"] == "queued"


@pytest.mark.parametrize("body, fragment", [
    ({}, "url"),
    ({"url": 42}, "url"),
    ({"url": "x", "validation_data": {"os_hash_algo": "md5", "os_hash_value": "00" * 16}}, "sha512"),
    ({"url": "x", "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "abc"}}, "128 hexadecimal"),
    ({"url": "x", "validation_data": {"os_hash_value": "00" * 64}}, "go together"),
    ({"url": "x", "validation_data": {"checksum": "zz" * 16}}, "checksum"),
    ({"url": "x", "validation_data": {"size": 1}}, "size"),
    ({"url": "x", "validation_data": "sha512"}, "validation_data"),
])
async def test_malformed_add_location_bodies_are_400(api: Api, nova: Caller, body: dict[str, Any],
                                                     fragment: str) -> None:
    image_id = (await api.p1.create())["id"]
    async with nova.post(f"/v2/images/{image_id}/locations", json=body) as resp:
        await error_of(resp, 400, fragment)


async def test_adding_a_location_needs_the_service_persona_and_a_queued_free_image(
        api: Api, nova: Caller) -> None:
    image_id = (await api.p1.create())["id"]
    _snapshot_in(api, "dcn0", image_id)
    async with api.p1.post(f"/v2/images/{image_id}/locations", json={"url": _url(api, "dcn0", image_id)}) as resp:
        await error_of(resp, 403, "service")
    async with api.p2.post(f"/v2/images/{image_id}/locations", json={"url": _url(api, "dcn0", image_id)}) as resp:
        await error_of(resp, 404, image_id)
    active = await api.active_image(default_image(seed=8))
    async with nova.post(f"/v2/images/{active['id']}/locations",
                         json={"url": _url(api, "dcn0", active["id"])}) as resp:
        await error_of(resp, 409, "active")


async def test_patch_adds_a_location_as_novas_older_path_and_removes_one_by_index(api: Api, nova: Caller) -> None:
    image_id = (await api.p1.create())["id"]
    data = _snapshot_in(api, "dcn1", image_id)
    add = [{"op": "add", "path": "/locations/-", "value": {"url": _url(api, "dcn1", image_id), "metadata": {}}}]
    async with nova.patch(image_id, add) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] in ("importing", "active")
    await api.wait_idle()
    shown = await api.admin.show(image_id)
    assert shown["stores"] == "central,dcn1" and shown["os_hash_value"] == sha512(data)
    async with api.p1.patch(image_id, [{"op": "remove", "path": "/locations/1"}]) as resp:
        await error_of(resp, 403, "delete_image_location")
    async with api.admin.patch(image_id, [{"op": "remove", "path": "/locations/0"}]) as resp:
        await error_of(resp, 403, "central")  # hub first: central's copy stays
    async with api.admin.patch(image_id, [{"op": "remove", "path": "/locations/7"}]) as resp:
        await error_of(resp, 400, "position")
    async with api.admin.patch(image_id, [{"op": "replace", "path": "/locations", "value": []}]) as resp:
        await error_of(resp, 403, "Replacing")
    async with api.admin.patch(image_id, [{"op": "remove", "path": "/locations/1"},
                                          {"op": "replace", "path": "/name", "value": "kept"}]) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["stores"] == "central" and body["name"] == "kept"
    assert not (api.store_dir("dcn1") / image_id).exists()


async def test_a_check_interrupted_by_a_hub_crash_leaves_the_image_queued_and_the_copy_where_it_was(
        hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_api(hub_dir) as api:
        image_id = (await api.p1.create())["id"]
        data = _snapshot_in(api, "dcn0", image_id)
        checking = asyncio.Event()

        async def stuck_verify(image_id: str, *, job_id: str) -> None:
            checking.set()
            await asyncio.Event().wait()  # the hub dies while the site hashes

        monkeypatch.setattr(api.hub.sites["dcn0"], "verify", stuck_verify)
        await _add(Caller(api.client, TOKENS["nova"][0]), image_id, _url(api, "dcn0", image_id))
        await asyncio.wait_for(checking.wait(), 10)
        assert (await api.p1.show(image_id))["status"] == "importing"
        await kill_running_tasks(api)
    monkeypatch.undo()
    async with running_api(hub_dir) as api:
        shown = await api.p1.show(image_id)
        assert shown["status"] == "queued" and "stores" not in shown and "os_glance_import_task" not in shown
        assert await api.hub.catalog.lock_holder(image_id) is None
        task = (await api.admin.tasks(image_id))[0]
        assert task["status"] == "failure" and "restarted" in task["message"]
        # the copy is its maker's: never cleaned up by the hub, and it can be added again
        assert (api.store_dir("dcn0") / image_id).read_bytes() == data
        await _add(Caller(api.client, TOKENS["nova"][0]), image_id, _url(api, "dcn0", image_id))
        await api.wait_idle()
        assert (await api.p1.show(image_id))["stores"] == "central,dcn0"
