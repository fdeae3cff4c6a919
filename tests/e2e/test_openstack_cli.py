"""The real `openstack` CLI (python-openstackclient, admin_token auth) against a real lab.

`openstack --os-auth-type admin_token --os-endpoint <hub>/v2 --os-token T image …`:
keystoneauth's admin_token plugin sends every request to the endpoint as
given, so the endpoint is the versioned URL (as it would be for real Glance).
The image is created with the glance CLI; what is checked is what openstack
prints (`-f json`), compared with the hub's own view.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.lab import (
    ImageFile,
    Lab,
    api,
    check,
    get_image,
    glance,
    make_striped_raw,
    openstack,
    stores_of,
    wait_import_done,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> ImageFile:
    return make_striped_raw(tmp_path_factory.mktemp("os-images") / "os.raw", 4)  # 16 MiB, 8 MiB data


@pytest.fixture(scope="module")
def image(file_lab: Lab, raw_image: ImageFile) -> Iterator[dict[str, Any]]:
    """A private image in central and dcn0, with a custom property."""
    image_id = str(uuid.uuid4())
    name = f"e2e-openstack-{image_id[:8]}"
    try:
        check(glance(file_lab, "image-create-via-import", "--id", image_id, "--name", name,
                     "--disk-format", "raw", "--container-format", "bare", "--visibility", "private",
                     "--property", "edge_site=dcn0", "--file", str(raw_image.path),
                     "--stores", "central,dcn0"))
        shown = wait_import_done(file_lab, image_id)
        assert shown["status"] == "active" and stores_of(shown) == {"central", "dcn0"}, shown
        yield shown
    finally:
        if get_image(file_lab, image_id) is not None:
            api(file_lab, "DELETE", f"/v2/images/{image_id}")


def _json(proc: Any) -> Any:
    return json.loads(check(proc).stdout)


def test_image_show_json(file_lab: Lab, image: dict[str, Any], raw_image: ImageFile) -> None:
    shown = _json(openstack(file_lab, "image", "show", image["id"], "-f", "json"))
    assert shown["id"] == image["id"]
    assert shown["name"] == image["name"]
    assert shown["status"] == "active"
    assert shown["disk_format"] == "raw" and shown["container_format"] == "bare"
    assert shown["visibility"] == "private"
    assert shown["owner"] == "admin"
    assert shown["size"] == shown["virtual_size"] == raw_image.size
    assert shown["checksum"] == raw_image.md5
    assert shown["protected"] is False
    props = shown["properties"]
    assert props["os_hash_algo"] == "sha512"
    assert props["os_hash_value"] == raw_image.sha512
    assert set(props["stores"].split(",")) == {"central", "dcn0"}
    assert props["edge_site"] == "dcn0"
    assert props["os_glance_failed_import"] == ""
    assert {loc["metadata"]["store"] for loc in props["locations"]} == {"central", "dcn0"}


def test_image_show_by_name(file_lab: Lab, image: dict[str, Any]) -> None:
    shown = _json(openstack(file_lab, "image", "show", image["name"], "-f", "json"))
    assert shown["id"] == image["id"]


def test_image_list_json(file_lab: Lab, image: dict[str, Any], raw_image: ImageFile) -> None:
    rows = _json(openstack(file_lab, "image", "list", "-f", "json"))
    assert {"ID": image["id"], "Name": image["name"], "Status": "active"} in rows

    long_rows = _json(openstack(file_lab, "image", "list", "--long", "-f", "json"))
    row = next(r for r in long_rows if r["ID"] == image["id"])
    assert row["Size"] == raw_image.size
    assert row["Checksum"] == raw_image.md5
    assert row["Hash Value"] == raw_image.sha512
    assert row["Visibility"] == "private" and row["Project"] == "admin"


def test_member_token_does_not_see_a_private_image(file_lab: Lab, image: dict[str, Any]) -> None:
    member = file_lab["member_token"]
    rows = _json(openstack(file_lab, "image", "list", "-f", "json", token=member))
    assert image["id"] not in {r["ID"] for r in rows}
    shown = openstack(file_lab, "image", "show", image["id"], "-f", "json", token=member)
    assert shown.returncode != 0
    assert f"No Image found for {image['id']}" in shown.stderr, shown.stderr


def test_bad_token_is_refused(file_lab: Lab, image: dict[str, Any]) -> None:
    proc = openstack(file_lab, "image", "show", image["id"], "-f", "json", token="not-a-token")
    assert proc.returncode != 0
    assert "401" in proc.stderr, proc.stderr


def test_image_task_list_and_show(file_lab: Lab, image: dict[str, Any]) -> None:
    """openstackclient's `image task` commands read the hub's import tasks."""
    tasks = _json(openstack(file_lab, "image", "task", "list", "-f", "json"))
    assert tasks, "the fixture's import made a task"
    assert {"ID", "Type", "Status", "Owner"} <= set(tasks[0])
    shown = _json(openstack(file_lab, "image", "task", "show", tasks[0]["ID"], "-f", "json"))
    assert shown["id"] == tasks[0]["ID"] and shown["type"] == "api_image_import"
    assert shown["status"] in ("pending", "processing", "success", "failure")
