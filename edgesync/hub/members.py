"""Image members as Glance has them (glance/api/v2/image_members.py):

- only `shared` images have members: listing, adding, changing or removing
  one of another visibility is a 403 (showing one, a 404);
- the owner (the `add_member`/`delete_member` rules: its project's member
  role, or an admin) adds and removes members — a new member is `pending`;
- only the member itself (`modify_member`: the caller's project is the
  member) answers: `accepted`, `rejected`, or back to `pending`;
- the owner sees every member, a member only itself (another member is a
  404, as in Glance's database layer); an admin sees all;
- at most `image_member_quota` members (Glance's default 128; a 413 past it).

A pending member already sees the image (to accept it); listings show it to
the member once accepted (`member_status` asks for the others).
"""

from __future__ import annotations

from typing import Any

from edgesync.catalog import Catalog
from edgesync.catalog.members import MEMBER_STATUSES, ImageMember
from edgesync.errors import BadRequest, Forbidden, NotFound
from edgesync.hub.auth import Caller
from edgesync.hub.images import ImageService
from edgesync.hub.policy import Policy
from edgesync.model import Image, Visibility

# Glance's image_member_quota default.
IMAGE_MEMBER_QUOTA = 128
MAX_MEMBER_ID = 255  # Glance's image_members.member column


def member_json(member: ImageMember) -> dict[str, Any]:
    return {"member_id": member.member_id, "image_id": member.image_id, "status": member.status,
            "created_at": member.created_at, "updated_at": member.updated_at, "schema": "/v2/schemas/member"}


def new_member_id(body: Any) -> str:
    """`{"member": "<project id>"}`, as Glance's deserializer wants it."""
    if not isinstance(body, dict):
        raise BadRequest('Expected a member in the form: {"member": "<project id>"}')
    if "member" not in body:
        raise BadRequest('Member to be added not specified: send {"member": "<project id>"}')
    member = body["member"]
    if member in (None, ""):
        raise BadRequest("Member can't be empty: give the project id to share the image with")
    if not isinstance(member, str) or len(member) > MAX_MEMBER_ID:
        raise BadRequest(f"member must be a project id (a string of at most {MAX_MEMBER_ID} characters), "
                         f"got {str(member)[:64]!r}")
    return member


def new_status(body: Any) -> Any:
    """`{"status": …}`; the value is checked after the policy, as in Glance."""
    if not isinstance(body, dict):
        raise BadRequest('Expected a status in the form: {"status": "accepted"}')
    if "status" not in body:
        raise BadRequest('Status not specified: send {"status": "accepted"} (or "rejected", "pending")')
    return body["status"]


class MemberService:
    def __init__(self, catalog: Catalog, images: ImageService, policy: Policy,
                 quota: int = IMAGE_MEMBER_QUOTA) -> None:
        self.catalog, self.images, self.policy, self.quota = catalog, images, policy, quota

    async def _shared_image(self, caller: Caller, image_id: str, action: str) -> Image:
        image = await self.images.get(caller, image_id)
        if image.visibility != Visibility.SHARED:
            raise Forbidden(f"Only shared images have members: image {image_id} is {image.visibility.value}, "
                            f"so its members can't be {action}; set its visibility to shared first")
        return image

    async def _visible_member(self, caller: Caller, image: Image, member_id: str) -> ImageMember:
        """Glance's member lookup: `get_member`, then the member if the caller
        may see it (the owner and admins all, a member itself only)."""
        self.policy.enforce_on_image("get_member", caller, image)
        member = await self.catalog.image_member(image.id, member_id)
        owner_or_admin = caller.is_admin or caller.project == image.owner
        if member is None or not (owner_or_admin or member.member_id == caller.project):
            raise NotFound(f"{member_id} not found in the member list of the image {image.id}.")
        return member

    async def list(self, caller: Caller, image_id: str) -> list[ImageMember]:
        image = await self._shared_image(caller, image_id, "listed")
        self.policy.enforce_on_image("get_members", caller, image)
        members = await self.catalog.image_members(image.id)
        if caller.is_admin or caller.project == image.owner:
            return members
        return [m for m in members if m.member_id == caller.project]

    async def show(self, caller: Caller, image_id: str, member_id: str) -> ImageMember:
        try:
            image = await self._shared_image(caller, image_id, "shown")
            return await self._visible_member(caller, image, member_id)
        except Forbidden as exc:  # Glance answers 404 here: nothing leaks
            raise NotFound(exc.message) from exc

    async def add(self, caller: Caller, image_id: str, member_id: str) -> ImageMember:
        image = await self._shared_image(caller, image_id, "added")
        self.policy.enforce_on_image("add_member", caller, image)
        return await self.catalog.add_image_member(image.id, member_id, limit=self.quota)

    async def set_status(self, caller: Caller, image_id: str, member_id: str, status: Any) -> ImageMember:
        image = await self._shared_image(caller, image_id, "changed")
        member = await self._visible_member(caller, image, member_id)
        self.policy.enforce_on_image("modify_member", caller, image)
        if status not in MEMBER_STATUSES:
            raise BadRequest(f'Incorrect request: Status must be "pending", "accepted" or "rejected", '
                             f"got {str(status)[:40]!r}")
        return await self.catalog.set_image_member_status(image.id, member.member_id, status)

    async def remove(self, caller: Caller, image_id: str, member_id: str) -> None:
        image = await self._shared_image(caller, image_id, "removed")
        member = await self._visible_member(caller, image, member_id)
        self.policy.enforce_on_image("delete_member", caller, image)
        await self.catalog.delete_image_member(image.id, member.member_id)
