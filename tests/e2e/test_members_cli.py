"""Image members through the real clients against the Keystone lab, where
the personas are Keystone's roles: `openstack image add project` / `image
set --accept|--reject` / `image member list` and `glance member-create /
member-update / member-list`; only the owner shares, only the member (with
the member role) answers, a reader of the member project may not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.keystone_lab import glance_os, json_out, os_cloud, project_id
from tests.fixtures.lab import Lab, api, check, get_image

pytestmark = pytest.mark.e2e




def _listed(lab: Lab, persona: str) -> set[str]:
    return {r["ID"] for r in json_out(os_cloud(lab, persona, "image", "list", "-f", "json"))}


@pytest.fixture
def admins_shared_image(keystone_lab: Lab) -> Iterator[dict[str, Any]]:
    # (osc uploads its stdin, empty here: an active image of 0 bytes; members don't mind)
    shown = json_out(os_cloud(keystone_lab, "admin", "image", "create", "--disk-format", "raw",
                           "--container-format", "bare", "--shared", f"ks-shared-{uuid.uuid4().hex[:8]}",
                           "-f", "json"))
    try:
        yield shown
    finally:
        if get_image(keystone_lab, shown["id"]) is not None:
            api(keystone_lab, "DELETE", f"/v2/images/{shown['id']}")


def test_openstack_shares_the_member_accepts_rejects_and_the_owner_unshares(
        keystone_lab: Lab, admins_shared_image: dict[str, Any]) -> None:
    image_id, demo = admins_shared_image["id"], project_id(keystone_lab, "demo")
    added = json_out(os_cloud(keystone_lab, "admin", "image", "add", "project", image_id, "demo", "-f", "json"))
    assert added["status"] == "pending" and added["member_id"] == demo
    assert image_id not in _listed(keystone_lab, "member")  # pending: not listed, yet visible
    assert json_out(os_cloud(keystone_lab, "member", "image", "show", image_id, "-f", "json"))["id"] == image_id

    check(os_cloud(keystone_lab, "member", "image", "set", "--accept", image_id))
    assert image_id in _listed(keystone_lab, "member")
    rows = json_out(os_cloud(keystone_lab, "admin", "image", "member", "list", image_id, "-f", "json"))
    assert [(r["Member ID"], r["Status"]) for r in rows] == [(demo, "accepted")]

    check(os_cloud(keystone_lab, "member", "image", "set", "--reject", image_id))
    assert image_id not in _listed(keystone_lab, "member")

    check(os_cloud(keystone_lab, "admin", "image", "remove", "project", image_id, "demo"))
    hidden = os_cloud(keystone_lab, "member", "image", "show", image_id)
    assert hidden.returncode != 0 and "No Image found" in hidden.stderr, hidden.stderr


def test_glance_member_commands_and_who_may_run_them(
        keystone_lab: Lab, admins_shared_image: dict[str, Any]) -> None:
    image_id, demo = admins_shared_image["id"], project_id(keystone_lab, "demo")
    check(glance_os(keystone_lab, "admin", "member-create", image_id, demo))
    listed = check(glance_os(keystone_lab, "member", "member-list", "--image-id", image_id)).stdout
    assert demo in listed and "pending" in listed

    # the member project's reader may not answer for it; the member may not share further
    refused = glance_os(keystone_lab, "reader", "member-update", image_id, demo, "accepted")
    assert refused.returncode != 0 and "modify_member" in refused.stderr, refused.stderr
    admin_project = project_id(keystone_lab, "admin")
    shared_on = glance_os(keystone_lab, "member", "member-create", image_id, admin_project)
    assert shared_on.returncode != 0 and "add_member" in shared_on.stderr, shared_on.stderr
    # an admin may answer for anyone (Glance's modify_member: admin or the member itself)
    check(glance_os(keystone_lab, "admin", "member-update", image_id, demo, "rejected"))

    out = check(glance_os(keystone_lab, "member", "member-update", image_id, demo, "accepted")).stdout
    assert "accepted" in out
    assert image_id in _listed(keystone_lab, "member")
    bad = glance_os(keystone_lab, "member", "member-update", image_id, demo, "maybe")
    assert bad.returncode != 0  # the client refuses it from the schema's enum, or the hub's 400
