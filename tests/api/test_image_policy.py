"""The policy (Glance's rule names, its secure-RBAC defaults and the DCN
ones, hub/policy.py) decides every image route: personas, Glance's 404-or-403
answers, the service persona from `X-Service-Token`, and an operator's
policy file changing a rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.conftest import (
    TOKENS,
    Api,
    Caller,
    Source,
    copy,
    default_image,
    error_of,
    running_api,
    write_hub_files,
)

SERVICE = {"X-Service-Token": TOKENS["service"][0]}


def reader(api: Api) -> Caller:
    return Caller(api.client, TOKENS["reader"][0])


async def test_a_reader_reads_but_may_not_create_change_download_or_copy(api: Api) -> None:
    image = await api.active_image(default_image())
    rita = reader(api)
    assert (await rita.show(image["id"]))["id"] == image["id"]
    async with rita.get("/v2/images") as resp:
        assert [i["id"] for i in (await resp.json())["images"]] == [image["id"]]
    async with rita.post("/v2/images", json={"name": "x"}) as resp:
        await error_of(resp, 403, "add_image", "member role")
    async with rita.patch(image["id"], [{"op": "replace", "path": "/name", "value": "x"}]) as resp:
        await error_of(resp, 403, "modify_image")
    async with rita.get(f"/v2/images/{image['id']}/file") as resp:
        await error_of(resp, 403, "download_image", "reader")
    async with rita.post(f"/v2/images/{image['id']}/import", json=copy(["dcn0"])) as resp:
        await error_of(resp, 403, "copy_image")
    async with rita.delete(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 403, "delete_image")
    assert (await api.p1.show(image["id"]))["name"] == "img"


async def test_refusals_on_an_image_the_caller_cannot_see_are_404_not_403(api: Api) -> None:
    """Glance's ImageAPIPolicy: a refusal never tells anyone an unseen image exists."""
    private = await api.active_image(default_image(), visibility="private")
    public = await api.admin.create(visibility="public", owner="p1")
    for path, method in ((f"/v2/images/{private['id']}/file", "GET"), (f"/v2/images/{private['id']}", "DELETE"),
                         (f"/v2/stores/central/{private['id']}", "DELETE")):
        async with api.p2.request(method, path) as resp:
            await error_of(resp, 404, private["id"])
    async with api.p2.delete(f"/v2/images/{public['id']}") as resp:
        await error_of(resp, 403, "delete_image", "owner")


async def test_the_service_persona_sees_locations_users_do_not(api: Api) -> None:
    """Nova's boot of another project's public image: the user's token with
    Nova's service token sees the per-site locations it clones from."""
    image = await api.active_image(default_image(), stores=("central", "dcn0"), caller=api.admin,
                                   visibility="public")
    for who in (api.p1, api.p2):
        plain = await who.show(image["id"])
        assert "locations" not in plain and "direct_url" not in plain
        async with who.get(f"/v2/images/{image['id']}", headers=SERVICE) as resp:
            assert resp.status == 200, await resp.text()
            served = await resp.json()
        assert [loc["metadata"]["store"] for loc in served["locations"]] == ["central", "dcn0"]
        assert served["direct_url"] == served["locations"][0]["url"]
    async with api.p2.get("/v2/images", headers=SERVICE) as resp:
        listed = {i["id"]: i for i in (await resp.json())["images"]}
    assert len(listed[image["id"]]["locations"]) == 2
    # A service token never widens what the user may see.
    private = await api.active_image(default_image(seed=1), visibility="private")
    async with api.p2.get(f"/v2/images/{private['id']}", headers=SERVICE) as resp:
        await error_of(resp, 404)


async def test_a_service_token_the_hub_does_not_know_is_401(api: Api) -> None:
    image = await api.p1.create()
    async with api.p1.get(f"/v2/images/{image['id']}", headers={"X-Service-Token": "tok-nobody"}) as resp:
        await error_of(resp, 401, "X-Service-Token")
    # a known token without the service role adds nothing
    async with api.p1.get(f"/v2/images/{image['id']}", headers={"X-Service-Token": TOKENS["p2"][0]}) as resp:
        assert resp.status == 200 and "locations" not in await resp.json()


async def test_store_details_are_for_admins_and_services(api: Api) -> None:
    async with api.p1.get("/v2/info/stores/detail") as resp:
        await error_of(resp, 403, "stores_info_detail")
    async with api.p1.get("/v2/info/stores/detail", headers=SERVICE) as resp:
        assert resp.status == 200 and len((await resp.json())["stores"]) == 3


@pytest.fixture
async def strict_api(tmp_path: Path, source: Source) -> AsyncIterator[Api]:
    """An operator's policy file: deletes for admins only, locations for the
    owning project's readers (Glance's own default for it)."""
    hub_toml = write_hub_files(tmp_path, source_port=source.port)
    policy = tmp_path / "policy.yaml"
    policy.write_text('"delete_image": "role:admin"\n'
                      '"get_image_location": "rule:context_is_admin or (role:reader and project_id:%(project_id)s)"\n')
    hub_toml.write_text(hub_toml.read_text().replace("[hub]\n", f'[hub]\npolicy_file = "{policy}"\n', 1))
    async with running_api(tmp_path) as running:
        yield running


async def test_an_operators_policy_file_changes_the_rules_it_names(strict_api: Api) -> None:
    api = strict_api
    image = await api.active_image(default_image(), visibility="community")
    async with api.p1.delete(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 403, "delete_image")
    assert [loc["metadata"]["store"] for loc in (await api.p1.show(image["id"]))["locations"]] == ["central"]
    assert "locations" not in await api.p2.show(image["id"])
    # rules the file doesn't name keep their defaults
    async with api.p2.patch(image["id"], [{"op": "replace", "path": "/name", "value": "x"}]) as resp:
        await error_of(resp, 403, "modify_image")
    async with api.admin.delete(f"/v2/images/{image['id']}") as resp:
        assert resp.status == 204
