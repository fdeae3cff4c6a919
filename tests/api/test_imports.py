"""POST /v2/images/{id}/import: glance-direct, web-download and copy-image,
the DCN rules (hub first, allow-failure, one task per image) and Glance's
status codes, against real file stores that really fail."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edgesync.model import Task, TaskStatus
from tests.api.conftest import (
    Api,
    MiB,
    Source,
    break_store,
    copy,
    data_bytes,
    default_image,
    direct,
    error_of,
    gate_store_writes,
    md5,
    qcow2_of,
    repair_store,
    running_api,
    sha512,
    sparse_bytes,
    until,
    write_hub_files,
)


def web(uri: str, stores: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"method": {"name": "web-download", "uri": uri}, **extra}
    if stores is not None:
        body["stores"] = stores
    return body


def job_states(task: dict[str, Any]) -> dict[str, str]:
    return {store: r["state"] for store, r in task["result"]["stores"].items()}


async def assert_reset_to_queued(api: Api, image_id: str) -> dict[str, Any]:
    """A failed new import: queued, no stores, no data fields, nothing on disk, no lock."""
    image = await api.admin.show(image_id)
    assert image["status"] == "queued", image
    assert "stores" not in image and image.get("locations") == []
    assert image["size"] is None and image["checksum"] is None and image["os_hash_value"] is None
    assert image["os_glance_importing_to_stores"] == ""
    assert "os_glance_import_task" not in image
    assert await api.hub.catalog.lock_holder(image_id) is None
    api.assert_nothing_left(image_id)
    return image


# --- glance-direct ------------------------------------------------------------------------


async def test_glance_direct_to_three_stores_writes_central_first(api: Api) -> None:
    data = default_image(seed=1)
    image = await api.p1.create()
    await api.p1.stage(image["id"], data)
    await api.p1.import_(image["id"], direct(["central", "dcn0", "dcn1"], must_succeed=False))
    await api.wait_idle()
    image = await api.admin.show(image["id"])
    assert image["status"] == "active"
    assert image["stores"].split(",")[0] == "central"
    assert sorted(image["stores"].split(",")) == ["central", "dcn0", "dcn1"]
    assert image["locations"][0]["metadata"] == {"store": "central"}
    assert image["direct_url"] == image["locations"][0]["url"]
    assert image["os_glance_importing_to_stores"] == "" and image["os_glance_failed_import"] == ""
    assert "os_glance_import_task" not in image
    assert image["checksum"] == md5(data) and image["os_hash_value"] == sha512(data)
    for store in ("central", "dcn0", "dcn1"):
        assert (api.store_dir(store) / image["id"]).read_bytes() == data
    assert api.staging_files() == []
    task = await api.last_task(image["id"])
    assert task["status"] == "success" and job_states(task) == {"central": "done", "dcn0": "done", "dcn1": "done"}
    assert task["input"]["import_req"]["stores"] == ["central", "dcn0", "dcn1"]
    assert task["user_id"] == "alice" and task["owner"] == "p1"


async def test_glance_direct_to_edges_only_still_goes_to_central_first(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("dcn1",))
    assert image["stores"] == "central,dcn1"
    task = await api.last_task(image["id"])
    assert task["input"]["import_req"]["stores"] == ["central", "dcn1"]


async def test_glance_direct_without_stores_goes_to_central(api: Api) -> None:
    image = await api.p1.create()
    await api.p1.stage(image["id"], default_image())
    await api.p1.import_(image["id"], {"method": {"name": "glance-direct"}})
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central"


async def test_the_store_header_names_the_store_when_the_body_names_none(api: Api) -> None:
    """glanceclient's `image-import --store S` sends x-image-meta-store, as
    Glance's single-store form; hub first still holds."""
    image = await api.active_image(default_image(seed=11))
    async with api.p1.post(f"/v2/images/{image['id']}/import", json={"method": {"name": "copy-image"}},
                           headers={"X-Image-Meta-Store": "dcn0"}) as resp:
        assert resp.status == 202, await resp.text()
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"
    fresh = await api.p1.create()
    await api.p1.stage(fresh["id"], default_image(seed=12))
    async with api.p1.post(f"/v2/images/{fresh['id']}/import", json={"method": {"name": "glance-direct"}},
                           headers={"X-Image-Meta-Store": "dcn1"}) as resp:
        assert resp.status == 202, await resp.text()
    await api.wait_idle()
    assert (await api.p1.show(fresh["id"]))["stores"] == "central,dcn1"


@pytest.mark.parametrize(("body", "header", "status", "fragment"), [
    ({"stores": ["dcn1"]}, "dcn0", 400, "x-image-meta-store header can't be given with stores"),
    ({"all_stores": True}, "dcn0", 400, "x-image-meta-store header can't be given with stores or all_stores"),
    ({}, "dcn7", 409, "Unknown store 'dcn7'"),
    ({}, "", 409, "Unknown store ''"),
])
async def test_the_store_header_with_stores_in_the_body_or_unknown_is_refused(
        api: Api, body: dict[str, Any], header: str, status: int, fragment: str) -> None:
    image = await api.active_image(default_image(seed=13))
    before = await api.p1.tasks(image["id"])
    async with api.p1.post(f"/v2/images/{image['id']}/import", json={"method": {"name": "copy-image"}, **body},
                           headers={"X-Image-Meta-Store": header}) as resp:
        await error_of(resp, status, fragment)
    await api.wait_idle()
    assert await api.p1.tasks(image["id"]) == before  # nothing started
    assert (await api.p1.show(image["id"]))["stores"] == "central"


async def test_glance_direct_with_all_stores(api: Api) -> None:
    image = await api.p1.create()
    await api.p1.stage(image["id"], default_image())
    await api.p1.import_(image["id"], {"method": {"name": "glance-direct"}, "all_stores": True})
    await api.wait_idle()
    assert sorted((await api.p1.show(image["id"]))["stores"].split(",")) == ["central", "dcn0", "dcn1"]


async def test_glance_direct_needs_staged_data(api: Api) -> None:
    image = await api.p1.create()
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=direct(["central"])) as resp:
        await error_of(resp, 409, "queued", "stage data first")
    active = await api.active_image(default_image())
    async with api.p1.post(f"/v2/images/{active['id']}/import", json=direct(["central"])) as resp:
        await error_of(resp, 409, "active")
    assert len(await api.admin.tasks(image["id"])) == 0


async def test_glance_direct_needs_formats(api: Api) -> None:
    image = await api.p1.create(disk_format=None, container_format=None)
    await api.p1.stage(image["id"], default_image())
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=direct(["central"])) as resp:
        await error_of(resp, 400, "disk_format and container_format")


async def test_import_progress_is_visible_while_it_runs(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = gate_store_writes(monkeypatch, api.hub, "central")
    image = await api.p1.create()
    await api.p1.stage(image["id"], default_image())
    await api.p1.import_(image["id"], direct(["central", "dcn0"]))
    await gate.wait_entered()
    during = await api.p1.show(image["id"])
    assert during["status"] == "importing"
    assert during["os_glance_importing_to_stores"] == "central,dcn0"
    assert during["os_glance_failed_import"] == ""
    task = await api.last_task(image["id"])
    assert during["os_glance_import_task"] == task["id"] and task["status"] == "processing"
    gate.open()
    await api.wait_idle()
    after = await api.p1.show(image["id"])
    assert after["status"] == "active" and after["os_glance_importing_to_stores"] == ""


async def test_glance_direct_of_qcow2_is_converted_to_raw(api: Api, tmp_path: Path) -> None:
    raw = default_image(seed=5)
    image = await api.p1.create(disk_format="qcow2")
    await api.p1.stage(image["id"], qcow2_of(raw, tmp_path / "q"))
    await api.p1.import_(image["id"], direct(["central", "dcn0"]))
    await api.wait_idle()
    image = await api.p1.show(image["id"])
    assert image["status"] == "active" and image["disk_format"] == "raw"
    assert image["size"] == image["virtual_size"] == len(raw)
    assert image["checksum"] == md5(raw) and image["os_hash_value"] == sha512(raw)
    assert await api.p1.download(image["id"]) == raw
    assert api.staging_files() == []


async def test_glance_direct_of_qcow2_with_backing_file_fails_and_leaves_nothing(api: Api, tmp_path: Path) -> None:
    image = await api.p1.create(disk_format="qcow2")
    await api.p1.stage(image["id"], qcow2_of(default_image(), tmp_path / "q", backing=True))
    # The import POST can't know yet (the task inspects the data): 202, then the task fails.
    await api.p1.import_(image["id"], direct(["central", "dcn0"]))
    await api.wait_idle()
    after = await assert_reset_to_queued(api, image["id"])
    assert after["disk_format"] == "qcow2"
    task = await api.last_task(image["id"])
    assert task["status"] == "failure" and "backing file" in task["message"]


# --- allow-failure with a store that really fails ------------------------------------------


async def test_must_succeed_failure_resets_the_image_and_is_retryable(api: Api) -> None:
    data = default_image(seed=2)
    image = await api.p1.create()
    await api.p1.stage(image["id"], data)
    break_store(api, "dcn1")
    # glanceclient --allow-failure False omits the key: the default is must-succeed.
    await api.p1.import_(image["id"], direct(["central", "dcn0", "dcn1"]))
    await api.wait_idle()
    repair_store(api, "dcn1")

    after = await assert_reset_to_queued(api, image["id"])
    assert after["os_glance_failed_import"] == "dcn1"
    task = await api.last_task(image["id"])
    assert task["status"] == "failure"
    assert task["input"]["import_req"]["all_stores_must_succeed"] is True
    assert job_states(task) == {"central": "rolled_back", "dcn0": "rolled_back", "dcn1": "failed"}
    assert "dcn1" in task["message"] and "Not a directory" in task["message"]
    assert "all_stores_must_succeed" in task["message"]

    # Retry from scratch: stage again and import again.
    await api.p1.stage(image["id"], data)
    await api.p1.import_(image["id"], direct(["central", "dcn0", "dcn1"]))
    await api.wait_idle()
    image = await api.p1.show(image["id"])
    assert image["status"] == "active" and image["os_glance_failed_import"] == ""
    assert sorted(image["stores"].split(",")) == ["central", "dcn0", "dcn1"]
    assert image["checksum"] == md5(data)
    assert [t["status"] for t in await api.admin.tasks(image["id"])] == ["success", "failure"]


async def test_allow_failure_goes_active_and_lists_the_failed_store(api: Api) -> None:
    data = default_image(seed=3)
    image = await api.p1.create()
    await api.p1.stage(image["id"], data)
    break_store(api, "dcn1")
    await api.p1.import_(image["id"], direct(["central", "dcn0", "dcn1"], must_succeed=False))
    await api.wait_idle()
    image = await api.p1.show(image["id"])
    assert image["status"] == "active"
    assert image["stores"].split(",")[0] == "central" and sorted(image["stores"].split(",")) == ["central", "dcn0"]
    assert image["os_glance_failed_import"] == "dcn1" and image["os_glance_importing_to_stores"] == ""
    task = await api.last_task(image["id"])
    assert task["status"] == "success" and "dcn1" in task["message"]
    assert task["result"]["stores"]["dcn1"]["state"] == "failed"
    assert "Not a directory" in task["result"]["stores"]["dcn1"]["reason"]
    assert api.staging_files() == []
    # The failed store can be filled later with copy-image.
    repair_store(api, "dcn1")
    await api.p1.import_(image["id"], copy(["dcn1"]))
    await api.wait_idle()
    image = await api.p1.show(image["id"])
    assert sorted(image["stores"].split(",")) == ["central", "dcn0", "dcn1"]
    assert image["os_glance_failed_import"] == ""


@pytest.mark.parametrize("must_succeed", [True, False])
async def test_central_failing_fails_the_import_whatever_allow_failure_says(api: Api, must_succeed: bool) -> None:
    data = default_image()
    image = await api.p1.create()
    await api.p1.stage(image["id"], data)
    break_store(api, "central")
    await api.p1.import_(image["id"], direct(["central", "dcn0"], must_succeed=must_succeed))
    await api.wait_idle()
    repair_store(api, "central")
    await assert_reset_to_queued(api, image["id"])
    task = await api.last_task(image["id"])
    assert task["status"] == "failure" and "central store 'central' failed" in task["message"]
    assert "Not a directory" in task["message"]
    # No edge received a copy either (edges copy from central).
    assert job_states(task) == {"central": "failed", "dcn0": "failed"}


# --- copy-image ---------------------------------------------------------------------------------


async def test_copy_image_to_two_edges(api: Api) -> None:
    data = default_image(seed=4)
    image = await api.active_image(data)
    await api.p1.import_(image["id"], copy(["dcn0", "dcn1"], must_succeed=False))
    await api.wait_idle()
    after = await api.p1.show(image["id"])
    assert after["status"] == "active"
    assert after["stores"].split(",")[0] == "central" and sorted(after["stores"].split(",")) == ["central", "dcn0", "dcn1"]
    assert after["checksum"] == image["checksum"] and after["updated_at"] >= image["updated_at"]
    for store in ("dcn0", "dcn1"):
        assert (api.store_dir(store) / image["id"]).read_bytes() == data
    task = await api.last_task(image["id"])
    assert task["status"] == "success" and task["input"]["import_req"]["method"]["name"] == "copy-image"


async def test_progress_counts_the_data_a_copy_moves_not_the_holes(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    data = default_image(seed=5)  # 8 MiB, 1216 KiB of it data
    moved = data_bytes(data)
    image = await api.active_image(data)
    gate = gate_store_writes(monkeypatch, api.hub, "dcn0")
    await api.p1.import_(image["id"], copy(["dcn0"]))
    await gate.wait_entered()

    async def dcn0_job() -> dict[str, Any]:
        return (await api.last_task(image["id"]))["result"]["stores"]["dcn0"]

    async def total_known() -> bool:
        return (await dcn0_job())["bytes_total"] > 0

    await until(total_known)
    running = await dcn0_job()
    assert running["state"] == "running" and running["bytes_total"] == moved < len(data)
    assert 0 < running["bytes_done"] <= moved
    gate.open()
    await api.wait_idle()
    copied, imported = await api.admin.tasks(image["id"])
    for job in (copied["result"]["stores"]["dcn0"], imported["result"]["stores"]["central"]):
        assert (job["state"], job["bytes_done"], job["bytes_total"]) == ("done", moved, moved)


async def test_copy_to_a_store_that_has_it_is_400(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(["dcn1", "dcn0"])) as resp:
        message = await error_of(resp, 400)
    assert message == "Image is already present at store 'dcn0'"
    assert len(await api.admin.tasks(image["id"])) == 1  # the import only: no copy task
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"


async def test_copy_via_all_stores_skips_stores_that_have_it(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    await api.p1.import_(image["id"], copy(all_stores=True))
    await api.wait_idle()
    task = await api.last_task(image["id"])
    assert task["input"]["import_req"]["stores"] == ["dcn1"] and task["status"] == "success"
    assert sorted((await api.p1.show(image["id"]))["stores"].split(",")) == ["central", "dcn0", "dcn1"]


async def test_copy_via_all_stores_with_nothing_left_is_202_and_no_task(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0", "dcn1"))
    before = await api.p1.show(image["id"])
    resp = await api.p1.import_(image["id"], copy(all_stores=True))
    assert resp.status == 202
    assert len(await api.admin.tasks(image["id"])) == 1
    after = await api.p1.show(image["id"])
    assert after["os_glance_importing_to_stores"] == "" and "os_glance_import_task" not in after
    assert after["stores"] == before["stores"]
    assert await api.hub.catalog.lock_holder(image["id"]) is None


async def test_copy_to_an_unknown_store_is_409(api: Api) -> None:
    image = await api.active_image(default_image())
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(["dcn0", "dcn7"])) as resp:
        await error_of(resp, 409, "Unknown store 'dcn7'", "known stores: central, dcn0, dcn1")
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=direct(["dcn7"])) as resp:
        await error_of(resp, 409, "Unknown store 'dcn7'")
    assert len(await api.admin.tasks(image["id"])) == 1


async def test_copy_of_a_non_active_image_is_409(api: Api) -> None:
    queued = await api.p1.create()
    async with api.p1.post(f"/v2/images/{queued['id']}/import", json=copy(["dcn0"])) as resp:
        await error_of(resp, 409, "queued", "only active images can be copied")
    staged = await api.p1.create()
    await api.p1.stage(staged["id"], b"data")
    async with api.p1.post(f"/v2/images/{staged['id']}/import", json=copy(["dcn0"])) as resp:
        await error_of(resp, 409, "uploading")
    assert await api.admin.tasks(queued["id"]) == [] and await api.admin.tasks(staged["id"]) == []


async def test_copy_of_an_image_without_a_central_copy_is_409(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))
    await api.hub.catalog.remove_location(image["id"], "central")  # as an edge-created image
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(["dcn1"])) as resp:
        await error_of(resp, 409, "central", "hub first")


async def test_copy_must_succeed_failure_rolls_back_what_it_wrote_but_keeps_central(api: Api) -> None:
    data = default_image(seed=6)
    image = await api.active_image(data)
    break_store(api, "dcn1")
    await api.p1.import_(image["id"], copy(["dcn0", "dcn1"], must_succeed=True))
    await api.wait_idle()
    repair_store(api, "dcn1")
    after = await api.p1.show(image["id"])
    assert after["status"] == "active" and after["stores"] == "central"
    assert after["os_glance_failed_import"] == "dcn1" and after["os_glance_importing_to_stores"] == ""
    assert "os_glance_import_task" not in after
    assert api.store_files("dcn0") == [] and api.store_files("dcn1") == []
    assert api.store_files("central") == [image["id"]]
    assert await api.p1.download(image["id"]) == data
    task = await api.last_task(image["id"])
    assert task["status"] == "failure" and job_states(task) == {"dcn0": "rolled_back", "dcn1": "failed"}
    assert await api.hub.catalog.lock_holder(image["id"]) is None


async def test_copy_allow_failure_keeps_what_succeeded(api: Api) -> None:
    image = await api.active_image(default_image())
    break_store(api, "dcn1")
    await api.p1.import_(image["id"], copy(["dcn0", "dcn1"], must_succeed=False))
    await api.wait_idle()
    repair_store(api, "dcn1")
    after = await api.p1.show(image["id"])
    assert after["stores"] == "central,dcn0" and after["os_glance_failed_import"] == "dcn1"
    task = await api.last_task(image["id"])
    assert task["status"] == "success" and job_states(task) == {"dcn0": "done", "dcn1": "failed"}


async def test_copy_where_every_store_fails_is_a_failed_task_and_the_image_stays_active(api: Api) -> None:
    image = await api.active_image(default_image())
    break_store(api, "dcn0")
    await api.p1.import_(image["id"], copy(["dcn0"], must_succeed=False))
    await api.wait_idle()
    repair_store(api, "dcn0")
    after = await api.p1.show(image["id"])
    assert after["status"] == "active" and after["stores"] == "central"
    assert after["os_glance_failed_import"] == "dcn0"
    assert (await api.last_task(image["id"]))["status"] == "failure"


# --- one task per image: the import lock ---------------------------------------------------------


async def test_a_second_import_while_one_runs_is_409(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn1"))
    gate = gate_store_writes(monkeypatch, api.hub, "dcn0")
    await api.p1.import_(image["id"], copy(["dcn0"]))
    await gate.wait_entered()  # the first copy is writing dcn0 and holds the lock
    first = await api.last_task(image["id"])
    assert first["status"] == "processing"

    async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(all_stores=True)) as resp:
        await error_of(resp, 409, f"locked by import task {first['id']}", "try again")
    async with api.admin.post(f"/v2/images/{image['id']}/import", json=copy(["dcn0"])) as resp:
        await error_of(resp, 409, "locked")
    async with api.admin.delete(f"/v2/stores/dcn1/{image['id']}") as resp:
        await error_of(resp, 409, first["id"])
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 409, first["id"])
    during = await api.p1.show(image["id"])
    assert during["os_glance_import_task"] == first["id"] and during["os_glance_importing_to_stores"] == "dcn0"
    assert len(await api.admin.tasks(image["id"])) == 2

    gate.open()
    await api.wait_idle()
    after = await api.p1.show(image["id"])
    assert sorted(after["stores"].split(",")) == ["central", "dcn0", "dcn1"]
    assert (await api.last_task(image["id"]))["status"] == "success"
    # Released: the next request goes through.
    async with api.admin.delete(f"/v2/stores/dcn1/{image['id']}") as resp:
        assert resp.status == 204


def _held_task(image_id: str) -> Task:
    task_id = str(uuid.uuid4())
    return Task(id=task_id, image_id=image_id, owner="p1", method="copy-image", stores=["dcn0"],
                all_stores_must_succeed=True, status=TaskStatus.PROCESSING)


async def test_a_lock_held_in_the_catalog_blocks_imports(api: Api) -> None:
    image = await api.active_image(default_image())
    holder = _held_task(image["id"])
    await api.hub.catalog.start_task(holder, lock_ttl_s=600)
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(["dcn0"])) as resp:
        await error_of(resp, 409, holder.id)
    await api.hub.catalog.finish_task(holder.id, TaskStatus.FAILURE, "test")
    await api.p1.import_(image["id"], copy(["dcn0"]))
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"


async def test_an_expired_lock_does_not_block_a_new_import(api: Api) -> None:
    image = await api.active_image(default_image())
    stale = _held_task(image["id"])
    await api.hub.catalog.start_task(stale, lock_ttl_s=-1)  # expires_at already passed
    assert await api.hub.catalog.lock_holder(image["id"]) is None
    await api.p1.import_(image["id"], copy(["dcn1"]))
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn1"
    assert await api.hub.catalog.lock_holder(image["id"]) is None


async def test_concurrent_copy_requests_one_wins(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    image = await api.active_image(default_image())
    gate = gate_store_writes(monkeypatch, api.hub, "dcn0")

    async def post() -> int:
        async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(["dcn0"])) as resp:
            return resp.status

    statuses = sorted(await asyncio.gather(*(post() for _ in range(5))))
    assert statuses == [202, 409, 409, 409, 409]
    gate.open()
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"


# --- request bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("body, fragment", [
    ({}, '"method"'),
    ([], '"method"'),
    ({"method": "copy-image"}, '"method"'),
    ({"method": {"name": "glance-upload"}}, "glance-upload"),
    ({"method": {"name": "web-download"}}, "uri"),
    ({"method": {"name": "web-download", "uri": 5}}, "uri"),
    ({"method": {"name": "copy-image"}, "stores": "dcn0"}, "list of store names"),
    ({"method": {"name": "copy-image"}, "stores": []}, "non-empty"),
    ({"method": {"name": "copy-image"}, "stores": [1]}, "list of store names"),
    ({"method": {"name": "copy-image"}, "stores": ["dcn0"], "all_stores": True}, "not both"),
    ({"method": {"name": "copy-image"}, "all_stores": "yes"}, "true or false"),
    ({"method": {"name": "copy-image"}, "stores": ["dcn0"], "all_stores_must_succeed": "false"}, "true or false"),
    ({"method": {"name": "copy-image"}}, "stores"),
])
async def test_bad_import_bodies_are_400_and_start_nothing(api: Api, body: Any, fragment: str) -> None:
    image = await api.active_image(default_image())
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=body) as resp:
        await error_of(resp, 400, fragment)
    assert len(await api.admin.tasks(image["id"])) == 1
    assert (await api.p1.show(image["id"]))["stores"] == "central"


async def test_import_body_that_is_not_json_is_400(api: Api) -> None:
    image = await api.active_image(default_image())
    for raw in (b"", b"{", b"\x00\x01"):
        async with api.p1.post(f"/v2/images/{image['id']}/import", data=raw,
                               headers={"Content-Type": "application/json"}) as resp:
            await error_of(resp, 400, "JSON")


async def test_import_of_an_unknown_image_is_404(api: Api) -> None:
    missing = str(uuid.uuid4())
    async with api.p1.post(f"/v2/images/{missing}/import", json=copy(["dcn0"])) as resp:
        await error_of(resp, 404, missing)


async def test_disabled_import_method_is_400(tmp_path: Path, source: Source) -> None:
    write_hub_files(tmp_path, source_port=source.port, extra_import='enabled_methods = ["glance-direct"]')
    async with running_api(tmp_path) as api:
        image = await api.active_image(default_image())
        async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(["dcn0"])) as resp:
            await error_of(resp, 400, "'copy-image' is not available", "glance-direct")
        async with api.p1.get("/v2/info/import") as resp:
            assert (await resp.json())["import-methods"]["value"] == ["glance-direct"]


# --- web-download -----------------------------------------------------------------------------


async def test_web_download_of_a_qcow2_to_two_stores(api: Api, source: Source, tmp_path: Path) -> None:
    raw = sparse_bytes(12 * MiB, [(MiB, 256 * 1024), (9 * MiB, 64 * 1024)], seed=9)
    source.files["good.qcow2"] = qcow2_of(raw, tmp_path / "q")
    image = await api.p1.create(disk_format="qcow2")
    await api.p1.import_(image["id"], web(source.url("good.qcow2"), ["central", "dcn0"]))
    await api.wait_idle()
    image = await api.p1.show(image["id"])
    assert image["status"] == "active" and image["disk_format"] == "raw", image
    assert image["stores"] == "central,dcn0"
    assert image["size"] == image["virtual_size"] == len(raw)
    assert image["checksum"] == md5(raw) and image["os_hash_value"] == sha512(raw)
    assert (api.store_dir("dcn0") / image["id"]).read_bytes() == raw
    assert api.staging_files() == []


async def test_web_download_needs_a_queued_image(api: Api, source: Source) -> None:
    image = await api.active_image(default_image())
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=web(source.url("x"))) as resp:
        await error_of(resp, 409, "active", "queued")


async def test_web_download_of_a_qcow2_with_a_backing_file_fails_cleanly(
        api: Api, source: Source, tmp_path: Path) -> None:
    source.files["hostile.qcow2"] = qcow2_of(default_image(), tmp_path / "q", backing=True)
    image = await api.p1.create(disk_format="qcow2")
    await api.p1.import_(image["id"], web(source.url("hostile.qcow2"), ["central", "dcn0", "dcn1"]))
    await api.wait_idle()
    after = await assert_reset_to_queued(api, image["id"])
    assert after["disk_format"] == "qcow2"
    assert api.staging_files() == [] and all(api.store_files(s) == [] for s in ("central", "dcn0", "dcn1"))
    task = await api.last_task(image["id"])
    assert task["status"] == "failure"
    assert "backing file" in task["message"] and "central" in task["message"]


@pytest.mark.parametrize("make_uri, fragment", [
    (lambda s: f"https://127.0.0.1:{s.port}/files/x", "scheme 'https'"),
    (lambda s: "file:///etc/passwd", "scheme 'file'"),
    (lambda s: f"ftp://127.0.0.1:{s.port}/files/x", "scheme 'ftp'"),
    (lambda s: f"http://localhost:{s.port}/files/x", "host 'localhost'"),
    (lambda s: "http://169.254.169.254/latest/meta-data", "host '169.254.169.254'"),
    (lambda s: f"http://127.0.0.1:{s.port + 1}/files/x", "port {}"),
    (lambda s: "http://127.0.0.1:/files/x", "empty port"),
    (lambda s: "/files/x", "no scheme"),
])
async def test_web_download_from_a_disallowed_uri_is_400_at_once(
        api: Api, source: Source, make_uri, fragment: str) -> None:  # type: ignore[no-untyped-def]
    uri = make_uri(source)
    fragment = fragment.format(source.port + 1)
    image = await api.p1.create()
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=web(uri)) as resp:
        await error_of(resp, 400, "web-download URI rejected", fragment)
    after = await api.admin.show(image["id"])
    assert after["status"] == "queued" and "os_glance_importing_to_stores" not in after
    assert await api.admin.tasks(image["id"]) == []
    api.assert_nothing_left(image["id"])


async def test_web_download_redirected_to_a_disallowed_uri_fails_cleanly(
        api: Api, source: Source, tmp_path: Path) -> None:
    source.files["good.raw"] = default_image()
    image = await api.p1.create()
    target = f"http://localhost:{source.port}/files/good.raw"
    # The redirect can only be seen when the task fetches: 202, then the task fails.
    await api.p1.import_(image["id"], web(f"{source.base}/redirect?to={target}", ["central", "dcn0"]))
    await api.wait_idle()
    await assert_reset_to_queued(api, image["id"])
    task = await api.last_task(image["id"])
    assert task["status"] == "failure"
    assert "host 'localhost'" in task["message"] and "redirected to by" in task["message"]
    # ... and the image can be imported again from an allowed source.
    await api.p1.import_(image["id"], web(source.url("good.raw")))
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["status"] == "active"


async def test_web_download_of_a_missing_file_fails_cleanly(api: Api, source: Source) -> None:
    image = await api.p1.create()
    await api.p1.import_(image["id"], web(source.url("nothing-here")))
    await api.wait_idle()
    await assert_reset_to_queued(api, image["id"])
    task = await api.last_task(image["id"])
    assert task["status"] == "failure" and "404" in task["message"]


async def test_task_timestamps_and_order(api: Api) -> None:
    """Tasks list newest first, with Glance's fields."""
    image = await api.active_image(default_image())
    await api.p1.import_(image["id"], copy(["dcn0"]))
    await api.wait_idle()
    tasks = await api.p1.tasks(image["id"])
    assert [t["input"]["import_req"]["method"]["name"] for t in tasks] == ["copy-image", "glance-direct"]
    for t in tasks:
        assert t["type"] == "api_image_import" and t["image_id"] == image["id"]
        assert time.strptime(t["created_at"], "%Y-%m-%dT%H:%M:%SZ")


# --- stores failing in awkward places -----------------------------------------------------


async def test_a_store_failing_mid_copy_fails_only_that_store_after_its_siblings_finish(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """dcn1's directory vanishes while its copy is open (publish and cleanup
    fail with ENOTDIR); dcn0 is still copying. The task must wait for dcn0,
    then apply allow-failure: dcn0 kept, dcn1 listed as failed."""
    data = default_image(seed=8)
    image = await api.active_image(data)
    gate0 = gate_store_writes(monkeypatch, api.hub, "dcn0")
    gate1 = gate_store_writes(monkeypatch, api.hub, "dcn1")
    await api.p1.import_(image["id"], copy(["dcn0", "dcn1"], must_succeed=False))
    await gate0.wait_entered()
    await gate1.wait_entered()
    break_store(api, "dcn1")
    gate1.open()

    async def dcn1_failed() -> bool:
        return job_states(await api.last_task(image["id"]))["dcn1"] == "failed"

    await until(dcn1_failed)
    during = await api.last_task(image["id"])
    assert during["status"] == "processing" and job_states(during)["dcn0"] == "running"
    gate0.open()
    await api.wait_idle()
    repair_store(api, "dcn1")

    task = await api.last_task(image["id"])
    assert task["status"] == "success" and job_states(task) == {"dcn0": "done", "dcn1": "failed"}
    assert "Not a directory" in task["result"]["stores"]["dcn1"]["reason"]
    after = await api.p1.show(image["id"])
    assert after["stores"] == "central,dcn0" and after["os_glance_failed_import"] == "dcn1"
    assert (api.store_dir("dcn0") / image["id"]).read_bytes() == data
    assert await api.hub.catalog.lock_holder(image["id"]) is None


async def test_a_store_that_breaks_before_rollback_does_not_leave_the_image_locked(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """must-succeed: dcn0 done, then dcn0 and dcn1 both break (so dcn1 fails
    and dcn0's rollback itself fails). The task must still end, failed, with
    the lock released and dcn0 no longer listed."""
    image = await api.active_image(default_image())
    gate = gate_store_writes(monkeypatch, api.hub, "dcn1")
    await api.p1.import_(image["id"], copy(["dcn0", "dcn1"], must_succeed=True))

    async def dcn0_done() -> bool:
        return job_states(await api.last_task(image["id"]))["dcn0"] == "done"

    await until(dcn0_done)
    await gate.wait_entered()
    break_store(api, "dcn0")
    break_store(api, "dcn1")
    gate.open()
    await api.wait_idle()
    repair_store(api, "dcn0")
    repair_store(api, "dcn1")

    task = await api.last_task(image["id"])
    assert task["status"] == "failure" and job_states(task) == {"dcn0": "rolled_back", "dcn1": "failed"}
    after = await api.p1.show(image["id"])
    assert after["status"] == "active" and after["stores"] == "central"
    assert "os_glance_import_task" not in after and after["os_glance_importing_to_stores"] == ""
    assert await api.hub.catalog.lock_holder(image["id"]) is None
    # and the image can be copied again
    await api.p1.import_(image["id"], copy(["dcn0", "dcn1"]))
    await api.wait_idle()
    assert sorted((await api.p1.show(image["id"]))["stores"].split(",")) == ["central", "dcn0", "dcn1"]


async def test_web_download_credentials_are_used_but_not_recorded(api: Api, source: Source) -> None:
    source.files["private.raw"] = default_image()
    image = await api.p1.create()
    uri = f"http://user:s3cret@127.0.0.1:{source.port}/files/private.raw"
    await api.p1.import_(image["id"], web(uri))
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["status"] == "active"
    task = await api.last_task(image["id"])
    assert "s3cret" not in json.dumps(task)
    # Nor at rest: not in the catalog file or its write-ahead log.
    for db in (api.dir / "state").rglob("*"):
        if db.is_file():
            assert b"s3cret" not in db.read_bytes(), db
            assert db.stat().st_mode & 0o077 == 0, f"{db} is readable by others"
