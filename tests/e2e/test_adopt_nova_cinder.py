"""Nova's and Cinder's own clone paths on an image adopted from Glance.

The image and its dcn0 copy were made by Glance (upload, then copy-image);
after `edgesync adopt`, Nova's `Rbd.clone` at dcn0 (tests/openstack/nova_driver.py)
and Cinder's `clone_image` (cinder_driver.py) clone that same RBD snapshot,
copy-on-write, through the hub: the copy Glance wrote is the one they use.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.glance_source import adopt, glance_image, reports, striped
from tests.fixtures.openstack_lab import ok, rbd_json, rbd_names, run_driver, token

pytestmark = [pytest.mark.ceph, pytest.mark.e2e]

MIB = 1 << 20
SITE = "dcn0"


def parent_of(lab: dict[str, Any], pool: str, name: str) -> tuple[str, str, str]:
    info = rbd_json(lab, SITE, "info", f"{pool}/{name}")
    assert "parent" in info, f"{pool}/{name} is not a clone: {info}"
    return info["parent"]["pool"], info["parent"]["image"], info["parent"]["snapshot"]


def test_nova_and_cinder_clone_the_copy_glance_made(glance_source: dict[str, Any], tmp_path: Path) -> None:
    lab = glance_source["lab"]
    image = glance_image(glance_source, striped(7, 4 * MIB), copy_to=(SITE,), visibility="public")
    _, summary = adopt(glance_source)
    assert reports(summary)[image["id"]]["action"] in ("adopted", "unchanged")
    admin = token(lab, "admin")
    fsid = lab["sites"][SITE]["fsid"]

    disk = f"{uuid.uuid4()}_disk"
    boot = ok(run_driver(lab, "nova", "boot", tmp_path / "boot", token=admin, image_id=image["id"], disk=disk))
    try:
        assert boot["cloneable"] == [f"rbd://{fsid}/images/{image['id']}/snap"]
        assert boot["stores_before"] == boot["stores_after"] == "central,dcn0"  # no copy was needed
        assert parent_of(lab, "vms", disk) == ("images", image["id"], "snap")
    finally:
        if disk in rbd_names(lab, SITE, "vms"):
            ok(run_driver(lab, "nova", "destroy_disk", tmp_path / "destroy", token=admin, disk=disk))

    volume_id = str(uuid.uuid4())
    done = ok(run_driver(lab, "cinder", "clone_image", tmp_path / "clone", token=admin, image_id=image["id"],
                         volume_id=volume_id))
    try:
        assert done["cloned"] is True
        assert parent_of(lab, "volumes", done["volume_name"]) == ("images", image["id"], "snap")
    finally:
        ok(run_driver(lab, "cinder", "delete_volume", tmp_path / "delete", token=admin, volume_id=volume_id))
