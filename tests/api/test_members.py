"""Image members as Glance has them: who adds, who answers, who sees what,
`shared` only, the member limit, `member_status` and `visibility=shared`
listings, the member schemas."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import TOKENS, Api, Caller, error_of


async def add(who: Caller, image_id: str, member: str, status: int = 200) -> dict[str, Any]:
    async with who.post(f"/v2/images/{image_id}/members", json={"member": member}) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


async def answer(who: Caller, image_id: str, member: str, status: str) -> dict[str, Any]:
    async with who.put(f"/v2/images/{image_id}/members/{member}", json={"status": status}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


async def members_of(who: Caller, image_id: str) -> list[str]:
    async with who.get(f"/v2/images/{image_id}/members") as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["schema"] == "/v2/schemas/members"
    return [m["member_id"] for m in body["members"]]


async def listed(who: Caller, query: str = "") -> set[str]:
    async with who.get(f"/v2/images{query}") as resp:
        assert resp.status == 200, await resp.text()
        return {i["id"] for i in (await resp.json())["images"]}


async def test_share_accept_reject_and_the_listings_that_follow(api: Api) -> None:
    image = await api.p1.create(name="shared-one")
    added = await add(api.p1, image["id"], "p2")
    assert set(added) == {"member_id", "image_id", "status", "created_at", "updated_at", "schema"}
    assert (added["member_id"], added["image_id"], added["status"]) == ("p2", image["id"], "pending")
    assert added["schema"] == "/v2/schemas/member" and added["created_at"].endswith("Z")

    # pending: the member sees the image (to answer), its listings don't show it
    assert (await api.p2.show(image["id"]))["name"] == "shared-one"
    assert await listed(api.p2) == set()
    assert await listed(api.p2, "?member_status=pending") == {image["id"]}
    assert await listed(api.p2, "?visibility=shared&member_status=all") == {image["id"]}

    accepted = await answer(api.p2, image["id"], "p2", "accepted")
    assert accepted["status"] == "accepted" and accepted["created_at"] == added["created_at"]
    assert await listed(api.p2) == {image["id"]}
    assert await listed(api.p2, "?visibility=shared") == {image["id"]}
    assert await listed(api.p2, "?member_status=pending") == set()

    await answer(api.p2, image["id"], "p2", "rejected")
    assert await listed(api.p2) == set()
    assert await listed(api.p2, "?member_status=rejected") == {image["id"]}
    assert (await api.p2.show(image["id"]))["id"] == image["id"]  # rejected still sees it, as in Glance
    # the owner's listing doesn't depend on any member's answer
    assert image["id"] in await listed(api.p1, "?visibility=shared")


async def test_only_the_owner_adds_and_removes_only_the_member_answers(api: Api) -> None:
    image = await api.p1.create()
    await add(api.p1, image["id"], "p2")
    await add(api.p1, image["id"], "p3")
    async with api.p2.post(f"/v2/images/{image['id']}/members", json={"member": "p4"}) as resp:
        await error_of(resp, 403, "add_member", "owner")
    async with api.p1.put(f"/v2/images/{image['id']}/members/p2", json={"status": "accepted"}) as resp:
        await error_of(resp, 403, "modify_member", "member itself")
    async with api.p2.delete(f"/v2/images/{image['id']}/members/p2") as resp:
        await error_of(resp, 403, "delete_member")
    # a member sees only itself; another member is a 404 to it
    assert await members_of(api.p1, image["id"]) == ["p2", "p3"]
    assert await members_of(api.p2, image["id"]) == ["p2"]
    for method, body in (("GET", None), ("PUT", {"status": "accepted"})):
        async with api.p2.request(method, f"/v2/images/{image['id']}/members/p3", json=body) as resp:
            await error_of(resp, 404, "p3 not found in the member list")
    async with api.p2.get(f"/v2/images/{image['id']}/members/p2") as resp:
        assert (await resp.json())["status"] == "pending"
    # an admin answers for anyone (Glance's modify_member)
    assert (await answer(api.admin, image["id"], "p3", "accepted"))["status"] == "accepted"
    # the owning project's reader may look, not share
    reader = Caller(api.client, TOKENS["reader"][0])
    assert await members_of(reader, image["id"]) == ["p2", "p3"]
    async with reader.post(f"/v2/images/{image['id']}/members", json={"member": "p5"}) as resp:
        await error_of(resp, 403, "add_member")

    async with api.p1.delete(f"/v2/images/{image['id']}/members/p2") as resp:
        assert resp.status == 204
    async with api.p2.get(f"/v2/images/{image['id']}") as resp:
        await error_of(resp, 404)
    async with api.p1.delete(f"/v2/images/{image['id']}/members/p2") as resp:
        await error_of(resp, 404, "not found in the member list")


async def test_members_only_for_shared_images(api: Api) -> None:
    private = await api.p1.create(visibility="private")
    async with api.p1.post(f"/v2/images/{private['id']}/members", json={"member": "p2"}) as resp:
        await error_of(resp, 403, "Only shared images have members", "private")
    async with api.p1.get(f"/v2/images/{private['id']}/members") as resp:
        await error_of(resp, 403, "Only shared images have members")
    async with api.p1.get(f"/v2/images/{private['id']}/members/p2") as resp:
        await error_of(resp, 404)
    # members of an image made private again stay, but can't see it
    shared = await api.p1.create()
    await add(api.p1, shared["id"], "p2")
    async with api.p1.patch(shared["id"], [{"op": "replace", "path": "/visibility", "value": "private"}]) as resp:
        assert resp.status == 200
    async with api.p2.get(f"/v2/images/{shared['id']}") as resp:
        await error_of(resp, 404)
    # not visible at all: 404 before anything else
    async with api.p2.post(f"/v2/images/{private['id']}/members", json={"member": "p2"}) as resp:
        await error_of(resp, 404, private["id"])


async def test_a_duplicate_is_409_and_the_member_limit_413(api: Api) -> None:
    image = await api.p1.create()
    await add(api.p1, image["id"], "p2")
    async with api.p1.post(f"/v2/images/{image['id']}/members", json={"member": "p2"}) as resp:
        await error_of(resp, 409, "Member p2 is duplicated")
    for n in range(127):
        await add(api.p1, image["id"], f"project-{n}")
    async with api.p1.post(f"/v2/images/{image['id']}/members", json={"member": "one-too-many"}) as resp:
        await error_of(resp, 413, "Attempted: 129, Maximum: 128")
    assert len(await members_of(api.p1, image["id"])) == 128


async def test_bad_member_bodies_are_400_saying_what_to_send(api: Api) -> None:
    image = await api.p1.create()
    for body, fragment in (({}, "Member to be added not specified"), ({"member": ""}, "can't be empty"),
                           ([1], "Expected a member"), ({"member": 7}, "project id"),
                           ({"member": "x" * 256}, "at most 255")):
        async with api.p1.post(f"/v2/images/{image['id']}/members", json=body) as resp:
            await error_of(resp, 400, fragment)
    await add(api.p1, image["id"], "p2")
    for body, fragment in (({}, "Status not specified"), ({"status": "maybe"}, "Status must be"),
                           ({"status": None}, "Status must be"), ("accepted", "Expected a status")):
        async with api.p2.put(f"/v2/images/{image['id']}/members/p2", json=body) as resp:
            await error_of(resp, 400, fragment)
    async with api.p2.get("/v2/images?member_status=maybe") as resp:
        await error_of(resp, 400, "Invalid status")


async def test_member_schemas_are_glances(api: Api) -> None:
    async with api.anon.get("/v2/schemas/member") as resp:
        assert resp.status == 401  # schemas need a token, as Glance's
    async with api.p2.get("/v2/schemas/member") as resp:
        member = await resp.json()
    assert member["name"] == "member" and member["additionalProperties"] is False
    assert member["properties"]["status"]["enum"] == ["pending", "accepted", "rejected"]
    assert set(member["properties"]) == {"member_id", "image_id", "created_at", "updated_at", "status", "schema"}
    async with api.p2.get("/v2/schemas/members") as resp:
        members = await resp.json()
    assert members["name"] == "members" and members["properties"]["members"]["items"] == member
