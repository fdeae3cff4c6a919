"""Deactivate/reactivate, uploads into a named store and usage through the
real clients against the Keystone lab: `openstack image set --deactivate /
--activate`, `glance image-deactivate / image-reactivate`, `openstack image
save` refused while deactivated (admins excepted), `glance image-upload
--store` (what Cinder's upload-to-image sends) and `glance usage`."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.keystone_lab import glance_os, json_out, os_cloud
from tests.fixtures.lab import ImageFile, Lab, api, check, get_image, make_striped_raw, parse_dict_table, stores_of

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> ImageFile:
    return make_striped_raw(tmp_path_factory.mktemp("ks-actions") / "a.raw", 2)


@pytest.fixture
def members_image(keystone_lab: Lab, raw: ImageFile) -> Iterator[dict[str, Any]]:
    shown = json_out(os_cloud(keystone_lab, "member", "image", "create", "--disk-format", "raw",
                           "--container-format", "bare", "--private", "--file", str(raw.path),
                           f"ks-actions-{uuid.uuid4().hex[:8]}", "-f", "json"))
    try:
        yield shown
    finally:
        if get_image(keystone_lab, shown["id"]) is not None:
            api(keystone_lab, "DELETE", f"/v2/images/{shown['id']}")


def _save(lab: Lab, persona: str, image_id: str, to: Path) -> subprocess.CompletedProcess[str]:
    return os_cloud(lab, persona, "image", "save", "--file", str(to), image_id)


def test_deactivated_images_refuse_downloads_until_reactivated(
        keystone_lab: Lab, members_image: dict[str, Any], raw: ImageFile, tmp_path: Path) -> None:
    image_id = members_image["id"]
    # openstacksdk ignores an action's answer (osc exits 0): what counts is that nothing changed
    os_cloud(keystone_lab, "reader", "image", "set", "--deactivate", image_id)
    assert (get_image(keystone_lab, image_id) or {})["status"] == "active"
    check(os_cloud(keystone_lab, "member", "image", "set", "--deactivate", image_id))
    assert (get_image(keystone_lab, image_id) or {})["status"] == "deactivated"

    denied = glance_os(keystone_lab, "member", "image-download", "--file", str(tmp_path / "m.raw"), image_id)
    assert denied.returncode != 0 and "deactivated" in denied.stderr, denied.stderr
    # (openstack image save reads the 403's body as the image and reports a checksum mismatch)
    assert _save(keystone_lab, "member", image_id, tmp_path / "m.raw").returncode != 0
    check(_save(keystone_lab, "admin", image_id, tmp_path / "a.raw"))
    assert hashlib.md5((tmp_path / "a.raw").read_bytes()).hexdigest() == raw.md5

    check(glance_os(keystone_lab, "member", "image-reactivate", image_id))
    check(_save(keystone_lab, "member", image_id, tmp_path / "m.raw"))
    assert hashlib.md5((tmp_path / "m.raw").read_bytes()).hexdigest() == raw.md5
    check(glance_os(keystone_lab, "member", "image-deactivate", image_id))
    check(os_cloud(keystone_lab, "member", "image", "set", "--activate", image_id))
    assert (get_image(keystone_lab, image_id) or {})["status"] == "active"


def test_upload_into_a_named_store_and_usage(keystone_lab: Lab, raw: ImageFile) -> None:
    # glance with stdin closed: a queued image (openstack image create would upload its stdin)
    created = parse_dict_table(check(glance_os(keystone_lab, "member", "image-create", "--disk-format", "raw",
                                               "--container-format", "bare", "--name",
                                               f"ks-upload-{uuid.uuid4().hex[:8]}")).stdout)
    assert created["status"] == "queued"
    image_id = created["id"]
    try:
        check(glance_os(keystone_lab, "member", "image-upload", "--store", "dcn1", "--file", str(raw.path),
                        image_id))
        image = get_image(keystone_lab, image_id) or {}
        assert image["status"] == "active" and image["checksum"] == raw.md5
        assert stores_of(image) == {"central", "dcn1"}
        usage = check(glance_os(keystone_lab, "member", "usage")).stdout
        for resource in ("image_size_total", "image_stage_total", "image_count_total", "image_count_uploading"):
            assert resource in usage, usage
    finally:
        api(keystone_lab, "DELETE", f"/v2/images/{image_id}")
