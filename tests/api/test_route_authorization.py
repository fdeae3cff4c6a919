"""Every route authorises what it serves (issue 11, item 2).

The transfer routes serve central's copy only to agents copying that image
to their site, and to admins; agents are known by their token, not their
user name; an agent's registrations belong to its site's project and name
a location its store holds.
"""

from __future__ import annotations

import uuid

import pytest

from tests.api.conftest import Api, copy, default_image, error_of, gate_store_writes, md5, sha512

EXTENTS = "/edgesync/v1/images/{}/extents"
DATA = "/edgesync/v1/images/{}/data"


async def test_transfer_routes_refuse_members_even_of_the_owning_project(api: Api) -> None:
    image = await api.active_image(default_image(), visibility="private")
    for caller in (api.p2, api.p1, api.impostor):
        async with caller.get(EXTENTS.format(image["id"])) as resp:
            assert resp.status in (403, 404), await resp.text()
        async with caller.get(DATA.format(image["id"]), params={"offset": "0", "length": "4096"}) as resp:
            assert resp.status in (403, 404), await resp.text()
    async with api.admin.get(EXTENTS.format(image["id"])) as resp:
        assert resp.status == 200  # the hub's own admin use


async def test_an_agent_reads_only_an_image_being_copied_to_its_own_site(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    image = await api.active_image(default_image())
    other = await api.active_image(default_image(seed=3))
    # no copy to anywhere: even dcn0's real agent may not read it
    async with api.agent0.get(EXTENTS.format(image["id"])) as resp:
        await error_of(resp, 404, "not being copied to site dcn0")
    gate = gate_store_writes(monkeypatch, api.hub, "dcn0")
    await api.p1.import_(image["id"], copy(["dcn0"]))
    await gate.wait_entered()
    async with api.agent0.get(EXTENTS.format(image["id"])) as resp:
        assert resp.status == 200, await resp.text()
    async with api.agent0.get(DATA.format(image["id"]), params={"offset": "0", "length": "4096"}) as resp:
        assert resp.status == 200 and len(await resp.read()) == 4096
    # the copy is to dcn0: dcn1's agent, and dcn0's agent for another image, get nothing
    async with api.agent1.get(DATA.format(image["id"]), params={"offset": "0", "length": "4096"}) as resp:
        await error_of(resp, 404, "dcn1")
    async with api.agent0.get(EXTENTS.format(other["id"])) as resp:
        await error_of(resp, 404, "dcn0")
    gate.open()
    await api.wait_idle()


def _snapshot(api: Api, site: str) -> tuple[str, dict[str, object]]:
    image_id = str(uuid.uuid4())
    data = default_image(seed=11)
    (api.store_dir(site) / image_id).write_bytes(data)
    return image_id, {"id": image_id, "name": "snap", "size": len(data), "checksum": md5(data),
                      "os_hash_value": sha512(data)}


async def test_an_agent_is_known_by_its_token_not_by_its_user_name(api: Api) -> None:
    _, body = _snapshot(api, "dcn0")
    async with api.impostor.post("/edgesync/v1/sites/dcn0/images", json=body) as resp:
        await error_of(resp, 403, "dcn0")
    async with api.agent1.post("/edgesync/v1/sites/dcn0/images", json=body) as resp:
        await error_of(resp, 403, "dcn0")  # another site's agent
    async with api.agent0.post("/edgesync/v1/sites/dcn0/images", json=body) as resp:
        assert resp.status == 201, await resp.text()
    await api.wait_idle()


async def test_an_agent_registers_for_its_sites_project_only_and_not_for_everyone(api: Api) -> None:
    image_id, body = _snapshot(api, "dcn0")
    async with api.agent0.post("/edgesync/v1/sites/dcn0/images", json={**body, "owner": "p1"}) as resp:
        await error_of(resp, 403, "project")
    async with api.agent0.post("/edgesync/v1/sites/dcn0/images", json={**body, "visibility": "community"}) as resp:
        await error_of(resp, 403, "shared")
    async with api.agent0.post("/edgesync/v1/sites/dcn0/images",
                               json={**body, "location_url": "file:///etc/passwd#" + image_id}) as resp:
        assert resp.status == 201, await resp.text()
        registered = (await resp.json())["image"]
    await api.wait_idle()
    assert registered["owner"] == "edgesync-agents"
    locations = (await api.admin.show(image_id))["locations"]
    assert all("/etc/passwd" not in loc["url"] for loc in locations), locations
    async with api.admin.get(f"/v2/images/{image_id}") as resp:
        assert (await resp.json())["owner"] == "edgesync-agents"
    # an admin may choose the owner
    _, other = _snapshot(api, "dcn1")
    async with api.admin.post("/edgesync/v1/sites/dcn1/images", json={**other, "owner": "p2"}) as resp:
        assert resp.status == 201 and (await resp.json())["image"]["owner"] == "p2"
    await api.wait_idle()
