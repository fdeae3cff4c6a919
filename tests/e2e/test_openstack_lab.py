"""The OpenStack lab itself (`openstack_lab`): RBD stores on three Ceph
clusters with agents and a real Keystone work together, Keystone has the
service users Nova and Cinder send as X-Service-Token, and each site's Ceph
has the pools and user its compute and volume nodes use."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.fixtures.keystone_lab import keystone_call
from tests.fixtures.lab import Lab, stores_of, wait_gone
from tests.fixtures.openstack_lab import delete_image, rbd_json, rbd_names, token, upload_image

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def _roles(lab: Lab, subject: str) -> set[str]:
    status, _, body = keystone_call(lab, "GET", "/auth/tokens", token=lab["admin_token"],
                                    headers={"X-Subject-Token": subject})
    assert status == 200, body
    return {r["name"] for r in json.loads(body)["token"]["roles"]}


def test_nova_and_cinder_are_service_users_in_keystone(openstack_lab: Lab) -> None:
    clouds = openstack_lab["keystone"]["clouds"]
    assert clouds["service"] == clouds["nova"] and clouds["cinder"] != clouds["nova"]
    for persona in ("nova", "cinder"):
        assert "service" in _roles(openstack_lab, token(openstack_lab, persona))
    assert "service" not in _roles(openstack_lab, token(openstack_lab, "member"))


def test_a_members_image_lands_in_every_sites_rbd_pool_and_leaves_with_its_delete(openstack_lab: Lab) -> None:
    member = token(openstack_lab, "member")
    data = b"\xab" * MiB + b"\0" * (3 * MiB) + b"\xcd" * MiB
    image = upload_image(openstack_lab, member, data, stores=("dcn0", "dcn1"))
    try:
        assert stores_of(image) == {"central", "dcn0", "dcn1"} and image["size"] == len(data)
        for site in ("central", "dcn0", "dcn1"):
            snaps = rbd_json(openstack_lab, site, "snap", "ls", f"images/{image['id']}")
            assert [s["name"] for s in snaps] == ["snap"], site
    finally:
        delete_image(openstack_lab, image["id"])
    wait_gone(openstack_lab, image["id"])
    for site in ("central", "dcn0", "dcn1"):
        assert image["id"] not in rbd_names(openstack_lab, site, "images"), site


def test_the_openstack_ceph_user_clones_images_into_the_vms_pool(openstack_lab: Lab) -> None:
    """What Nova and Cinder will do through librbd, done with the rbd CLI as their Ceph user."""
    node: dict[str, Any] = openstack_lab["openstack"]["dcn0"]
    image = upload_image(openstack_lab, openstack_lab["admin_token"], b"\x11" * MiB, stores=("dcn0",))
    child = f"{node['vms_pool']}/probe-{image['id'][:8]}"
    as_openstack = ["rbd", "-c", node["ceph_conf"], "--id", node["rbd_user"]]
    try:
        done = subprocess.run([*as_openstack, "clone", f"images/{image['id']}@snap", child],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        info = rbd_json(openstack_lab, "dcn0", "info", child)
        assert info["parent"]["pool"] == "images" and info["parent"]["image"] == image["id"]
    finally:
        subprocess.run([*as_openstack, "rm", child], capture_output=True, timeout=60)
        delete_image(openstack_lab, image["id"])
    wait_gone(openstack_lab, image["id"])
