"""Per-project quota on stored bytes (Glance's image_size_total): usage is
each image's size once per store holding it; a stage, upload or import that
would take the project past its limit is a 413 with Glance's message, and
leaves nothing started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgesync.hub.quota import Usage
from tests.api.conftest import (
    Api,
    MiB,
    Source,
    chunks,
    copy,
    default_image,
    direct,
    error_of,
    running_api,
    write_hub_files,
)

LIMIT_MIB = 20  # p1's, by default; p2 has no limit (-1) of its own


@pytest.fixture
async def api(tmp_path: Path, source: Source) -> AsyncIterator[Api]:
    hub_toml = write_hub_files(tmp_path, source_port=source.port)
    hub_toml.write_text(hub_toml.read_text()
                        + f"\n[hub.quota]\nimage_size_total = {LIMIT_MIB}\n[hub.quota.projects]\np2 = -1\n")
    async with running_api(tmp_path) as running:
        yield running


async def test_usage_counts_each_copy_and_is_given_in_mib(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))  # 8 MiB twice
    assert image["size"] == 8 * MiB
    assert await api.hub.images.quota.usage("p1") == Usage(limit=LIMIT_MIB, usage=16)
    assert await api.hub.images.quota.usage("p2") == Usage(limit=-1, usage=0)
    assert (await api.hub.images.quota.usage("p1")).as_glance() == {"limit": LIMIT_MIB, "usage": 16}


async def test_a_copy_past_the_limit_is_a_413_and_starts_nothing(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central", "dcn0"))  # 16 MiB used
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=copy(["dcn1"])) as resp:
        message = await error_of(resp, 413, "image_size_total", f"over limit of {LIMIT_MIB}",
                                 "current usage 16", "delta 8")
    assert message.startswith("Project p1 is over a limit")
    assert await api.hub.catalog.lock_holder(image["id"]) is None
    after = await api.p1.show(image["id"])
    assert after["stores"] == "central,dcn0" and after["status"] == "active"


async def test_a_stage_or_upload_declared_past_the_limit_is_a_413_before_any_data(api: Api) -> None:
    await api.active_image(default_image(), stores=("central", "dcn0"))
    image = await api.p1.create()
    headers = {"Content-Type": "application/octet-stream", "x-openstack-image-size": str(8 * MiB)}
    for route in ("stage", "file"):
        async with api.p1.put(f"/v2/images/{image['id']}/{route}", data=chunks(default_image(1)),
                              headers=headers) as resp:
            await error_of(resp, 413, "image_size_total")
        assert (await api.p1.show(image["id"]))["status"] == "queued"
        api.assert_nothing_left(image["id"])


async def test_a_glance_direct_import_counts_its_staged_data_once_per_store(api: Api) -> None:
    await api.active_image(default_image(), stores=("central",))  # 8 MiB used, 12 left
    image = await api.p1.create()
    await api.p1.stage(image["id"], default_image(1))  # 8 + 8 fits
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=direct(["central", "dcn0"])) as resp:
        await error_of(resp, 413, "image_size_total", "delta 16")
    assert (await api.p1.show(image["id"]))["status"] == "uploading"  # still staged, importable
    await api.p1.import_(image["id"], direct(["central"]))
    await api.wait_idle()
    assert (await api.p1.show(image["id"]))["status"] == "active"
    assert (await api.hub.images.quota.usage("p1")).usage == 16


async def test_a_project_with_its_own_unlimited_quota_and_a_delete_that_frees_room(api: Api) -> None:
    for seed in range(3):  # 48 MiB for p2, past the default limit
        await api.active_image(default_image(seed), stores=("central", "dcn0", "dcn1"), caller=api.p2)
    assert (await api.hub.images.quota.usage("p2")).usage == 72
    first = await api.active_image(default_image(), stores=("central", "dcn0"))
    blocked = await api.p1.create()
    async with api.p1.put(f"/v2/images/{blocked['id']}/stage", data=chunks(default_image(1)),
                          headers={"x-openstack-image-size": str(8 * MiB)}) as resp:
        await error_of(resp, 413)
    async with api.p1.delete(f"/v2/images/{first['id']}") as resp:
        assert resp.status == 204
    await api.p1.stage(blocked["id"], default_image(1))
