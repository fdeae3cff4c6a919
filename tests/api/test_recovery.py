"""A hub that died mid-task: the next hub on the same state directory must
leave no image importing/saving, no lock held, every open task failed with a
reason, and no partial copy or staging residue."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from edgesync.model import FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO_STORES, ImageStatus, StoreJob, Task, TaskStatus
from tests.api.conftest import (
    Api,
    copy,
    default_image,
    direct,
    gate_store_writes,
    md5,
    running_api,
    until,
)


async def kill_running_tasks(api: Api) -> None:
    """What SIGKILL does to the tasks: they stop where they are. (Cancelling
    still runs their `finally` blocks; the residue a real kill would leave is
    put back by hand in the tests.)"""
    running = list(api.hub.importer.runner.running.values())
    assert running, "no task was running"
    for t in running:
        t.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def job_states(task: dict[str, Any]) -> dict[str, str]:
    return {store: r["state"] for store, r in task["result"]["stores"].items()}


async def test_copy_interrupted_by_a_crash_is_failed_on_restart(
        hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = default_image(seed=21)
    async with running_api(hub_dir) as api:
        image = await api.active_image(data)
        gate = gate_store_writes(monkeypatch, api.hub, "dcn0")
        await api.p1.import_(image["id"], copy(["dcn0", "dcn1"]))
        await gate.wait_entered()

        async def dcn1_done() -> bool:
            return job_states(await api.last_task(image["id"]))["dcn1"] == "done"

        await until(dcn1_done)  # dcn1 written and recorded, dcn0 mid-copy
        await kill_running_tasks(api)
        # What the dead process left: the task open, the lock held, a partial copy.
        stuck = await api.p1.show(image["id"])
        assert stuck[IMPORT_TASK] and await api.hub.catalog.lock_holder(image["id"]) is not None
        (api.store_dir("dcn0") / f"{image['id']}.partial").write_bytes(b"half a copy")
        task_id = (await api.last_task(image["id"]))["id"]

    async with running_api(hub_dir) as api:
        after = await api.admin.show(image["id"])
        assert after["status"] == "active" and after["stores"] == "central"
        assert IMPORT_TASK not in after and after[IMPORTING_TO_STORES] == ""
        assert await api.hub.catalog.lock_holder(image["id"]) is None
        task = await api.last_task(image["id"])
        assert task["id"] == task_id and task["status"] == "failure"
        assert "interrupted" in task["message"] and "restarted" in task["message"]
        # must-succeed (the default): dcn0 interrupted, so dcn1's copy is rolled back
        assert job_states(task) == {"dcn0": "failed", "dcn1": "rolled_back"}
        assert task["result"]["stores"]["dcn0"]["reason"].startswith("interrupted")
        assert api.store_files("dcn0") == [] and api.store_files("dcn1") == []
        assert after[FAILED_IMPORT] == "dcn0"
        # The image works and can be copied again.
        await api.p1.import_(image["id"], copy(["dcn0", "dcn1"]))
        await api.wait_idle()
        assert sorted((await api.p1.show(image["id"]))["stores"].split(",")) == ["central", "dcn0", "dcn1"]
        assert await api.p1.download(image["id"]) == data


async def test_glance_direct_interrupted_by_a_crash_is_reset_to_queued_on_restart(
        hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = default_image(seed=22)
    async with running_api(hub_dir) as api:
        image = await api.p1.create()
        await api.p1.stage(image["id"], data)
        gate = gate_store_writes(monkeypatch, api.hub, "central")
        await api.p1.import_(image["id"], direct(["central", "dcn0"]))
        await gate.wait_entered()
        await kill_running_tasks(api)
        assert (await api.p1.show(image["id"]))["status"] == "importing"
        # residue of a killed process: staging copies and a partial central copy
        (api.staging_dir / image["id"]).write_bytes(data[:4096])
        (api.staging_dir / f"{image['id']}.raw").write_bytes(b"x")
        (api.store_dir("central") / f"{image['id']}.partial").write_bytes(b"x")

    async with running_api(hub_dir) as api:
        after = await api.admin.show(image["id"])
        assert after["status"] == "queued" and "stores" not in after and after["size"] is None
        assert IMPORT_TASK not in after and after[IMPORTING_TO_STORES] == ""
        assert await api.hub.catalog.lock_holder(image["id"]) is None
        task = await api.last_task(image["id"])
        assert task["status"] == "failure" and "interrupted" in task["message"]
        api.assert_nothing_left(image["id"])
        # Retryable: stage and import again.
        await api.p1.stage(image["id"], data)
        await api.p1.import_(image["id"], direct(["central", "dcn0"]))
        await api.wait_idle()
        image = await api.p1.show(image["id"])
        assert image["status"] == "active" and image["checksum"] == md5(data)


def open_task(image_id: str, method: str, stores: list[str], **kw: Any) -> Task:
    task_id = str(uuid.uuid4())
    return Task(id=task_id, image_id=image_id, owner="p1", user_id="alice", method=method, stores=stores,
                all_stores_must_succeed=kw.pop("must_succeed", True), status=TaskStatus.PROCESSING,
                jobs=[StoreJob(task_id, s) for s in stores], **kw)


@pytest.mark.parametrize("method, status", [
    ("glance-direct", ImageStatus.IMPORTING),
    ("web-download", ImageStatus.IMPORTING),
    ("upload", ImageStatus.SAVING),
])
async def test_a_task_left_open_in_the_catalog_is_finished_on_restart(
        hub_dir: Path, method: str, status: ImageStatus) -> None:
    """The catalog state a hub killed right after accepting a new import
    leaves: task row, store jobs, lock, image importing/saving, staging data."""
    async with running_api(hub_dir) as api:
        image = await api.p1.create()
        task = open_task(image["id"], method, ["central", "dcn0"], input={"disk_format": "raw", "uri": ""})
        await api.hub.catalog.start_task(
            task, lock_ttl_s=600, image_fields={"status": status},
            image_properties={IMPORTING_TO_STORES: "central,dcn0", FAILED_IMPORT: "", IMPORT_TASK: task.id})
        (api.staging_dir / image["id"]).write_bytes(default_image())
        (api.store_dir("central") / f"{image['id']}.partial").write_bytes(b"x")
        (api.store_dir("dcn0") / f"{image['id']}.partial").write_bytes(b"x")

    async with running_api(hub_dir) as api:
        after = await api.admin.show(image["id"])
        assert after["status"] == "queued" and after.get("locations") == []
        assert IMPORT_TASK not in after and after[IMPORTING_TO_STORES] == ""
        assert await api.hub.catalog.lock_holder(image["id"]) is None
        recovered = await api.last_task(image["id"])
        assert recovered["id"] == task.id and recovered["status"] == "failure"
        assert "interrupted" in recovered["message"]
        api.assert_nothing_left(image["id"])
        assert await api.hub.catalog.tasks(unfinished_only=True) == []


async def test_a_copy_published_but_never_recorded_is_removed_on_restart(hub_dir: Path) -> None:
    """Killed between the store's publish and the catalog commit: the store
    holds a whole copy that no location refers to."""
    async with running_api(hub_dir) as api:
        image = await api.active_image(default_image())
        task = open_task(image["id"], "copy-image", ["dcn0"])
        await api.hub.catalog.start_task(task, lock_ttl_s=600,
                                         image_properties={IMPORTING_TO_STORES: "dcn0", IMPORT_TASK: task.id})
        shutil.copy(api.store_dir("central") / image["id"], api.store_dir("dcn0") / image["id"])

    async with running_api(hub_dir) as api:
        after = await api.p1.show(image["id"])
        assert after["stores"] == "central" and after["status"] == "active"
        assert (await api.last_task(image["id"]))["status"] == "failure"
        assert api.store_files("dcn0") == [], "an unrecorded copy was left in dcn0"
        # ... and a new copy there works.
        await api.p1.import_(image["id"], copy(["dcn0"]))
        await api.wait_idle()
        assert (await api.p1.show(image["id"]))["stores"] == "central,dcn0"


async def test_a_staged_image_keeps_its_data_across_a_restart(hub_dir: Path) -> None:
    data = default_image(seed=23)
    async with running_api(hub_dir) as api:
        image = await api.p1.create()
        await api.p1.stage(image["id"], data)
        # and some residue of an image that is gone, and of one not staged
        (api.staging_dir / str(uuid.uuid4())).write_bytes(b"orphan")
        queued = await api.p1.create()
        (api.staging_dir / queued["id"]).write_bytes(b"stale")

    async with running_api(hub_dir) as api:
        assert (await api.p1.show(image["id"]))["status"] == "uploading"
        assert api.staging_files() == [image["id"]]
        await api.p1.import_(image["id"], direct(["central"]))
        await api.wait_idle()
        assert (await api.p1.show(image["id"]))["checksum"] == md5(data)


async def test_a_task_for_a_store_no_longer_configured_is_still_recovered(hub_dir: Path) -> None:
    async with running_api(hub_dir) as api:
        image = await api.active_image(default_image(), stores=("central", "dcn1"))
        task = open_task(image["id"], "copy-image", ["dcn0"])
        await api.hub.catalog.start_task(task, lock_ttl_s=600,
                                         image_properties={IMPORTING_TO_STORES: "dcn0", IMPORT_TASK: task.id})
    (hub_dir / "sites" / "dcn0.toml").unlink()

    async with running_api(hub_dir) as api:
        assert list(api.hub.stores) == ["central", "dcn1"]
        after = await api.p1.show(image["id"])
        assert after["status"] == "active" and IMPORT_TASK not in after
        assert (await api.last_task(image["id"]))["status"] == "failure"
        assert await api.hub.catalog.lock_holder(image["id"]) is None


async def test_hub_close_gives_running_tasks_their_grace_then_recovery_finishes_them(
        hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The orderly stop: a task still running after the grace time is
    cancelled, and the next start fails it cleanly."""
    async with running_api(hub_dir) as api:
        image = await api.active_image(default_image())
        gate = gate_store_writes(monkeypatch, api.hub, "dcn1")
        await api.p1.import_(image["id"], copy(["dcn1"]))
        await gate.wait_entered()
        await api.client.close()
        await api.hub.importer.shutdown(grace_s=0.05)
        assert api.hub.importer.runner.running == {}

    async with running_api(hub_dir) as api:
        after = await api.p1.show(image["id"])
        assert after["stores"] == "central" and IMPORT_TASK not in after
        assert (await api.last_task(image["id"]))["status"] == "failure"
        assert api.store_files("dcn1") == []


async def test_a_hub_that_cannot_open_a_store_fails_to_start_and_releases_the_catalog(hub_dir: Path) -> None:
    import gc

    from edgesync.config import load_hub
    from edgesync.hub.app import Hub

    (hub_dir / "stores").mkdir()
    (hub_dir / "stores" / "dcn1").write_bytes(b"a file where the store directory should be")
    hub = Hub(load_hub(hub_dir / "hub.toml"))
    with pytest.raises(Exception):  # noqa: B017 — whichever error the store raises, the hub must not open
        await hub.open()
    # A second hub can open the same state (the first let go of everything),
    # and nothing the first opened is left to be garbage-collected unclosed.
    gc.collect()
    (hub_dir / "stores" / "dcn1").unlink()
    async with running_api(hub_dir) as api:
        assert list(api.hub.stores) == ["central", "dcn0", "dcn1"]


@pytest.mark.parametrize("problem", ["port in use", "tokens file missing"])
async def test_a_hub_that_fails_to_serve_releases_everything(hub_dir: Path, problem: str) -> None:
    import socket

    from edgesync.config import load_hub
    from edgesync.errors import ConfigError
    from edgesync.hub.app import Hub

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = (hub_dir / "hub.toml").read_text().replace("127.0.0.1:9292", f"127.0.0.1:{port}")
        (hub_dir / "hub.toml").write_text(text)
        if problem == "tokens file missing":
            (hub_dir / "tokens.toml").rename(hub_dir / "tokens.gone")
        hub = Hub(load_hub(hub_dir / "hub.toml"))
        with pytest.raises(ConfigError if problem == "tokens file missing" else OSError):
            await hub.start()
    if problem == "tokens file missing":
        (hub_dir / "tokens.gone").rename(hub_dir / "tokens.toml")
    async with running_api(hub_dir) as api:
        assert (await api.p1.create())["status"] == "queued"


async def test_a_stage_cut_short_by_a_crash_is_not_imported_as_if_complete(hub_dir: Path) -> None:
    """Killed mid-stage: whatever the staging area held at that moment must
    not pass for the staged image after a restart (it would import truncated
    data as a good image). The image goes back to queued, ready to re-stage."""
    data = default_image(seed=24)
    more = asyncio.Event()
    snapshot: dict[str, bytes] = {}

    async def body():  # type: ignore[no-untyped-def]
        yield data[:5 << 20]  # more than the staging buffer: some reaches the disk
        await more.wait()
        yield data[5 << 20:]

    async with running_api(hub_dir) as api:
        image = await api.p1.create()

        async def stage() -> int:
            async with api.p1.put(f"/v2/images/{image['id']}/stage", data=body(),
                                  headers={"x-openstack-image-size": str(len(data))}) as resp:
                return resp.status

        pending = asyncio.create_task(stage())

        async def some_on_disk() -> bool:
            return any(p.stat().st_size > 0 for p in api.staging_dir.iterdir())

        await until(some_on_disk)
        # The disk as a SIGKILL right now would leave it.
        snapshot = {p.name: p.read_bytes() for p in api.staging_dir.iterdir()}
        assert (await api.p1.show(image["id"]))["status"] == "uploading"
        more.set()
        assert await pending == 204
        staging_dir = api.staging_dir

    for p in staging_dir.iterdir():
        p.unlink()
    for name, content in snapshot.items():
        (staging_dir / name).write_bytes(content)

    async with running_api(hub_dir) as api:
        after = await api.p1.show(image["id"])
        assert after["status"] == "queued", "a half-received stage survived the restart as staged data"
        assert api.staging_files() == []
        await api.p1.stage(image["id"], data)
        await api.p1.import_(image["id"], direct(["central"]))
        await api.wait_idle()
        assert (await api.p1.show(image["id"]))["checksum"] == md5(data)
