"""The real `openstack` and `glance` CLIs against a lab with a real Keystone
(`lab up --auth keystone`): password auth from clouds.yaml or OS_*
variables, the hub found as the `image` endpoint in Keystone's catalog (no
--os-image-url, no --os-endpoint), Glance's personas (admin, project member,
project reader) from Keystone's roles, agents pulling with their own
application credentials, a revoked token refused within the hub's stated
bound, and Keystone stopped → 503, never 401."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.keystone_lab import (
    glance_os,
    hub_cache_ttl_s,
    json_out,
    keystone_call,
    new_token,
    os_cloud,
    project_id,
)
from tests.fixtures.lab import (
    ImageFile,
    Lab,
    api,
    check,
    get_image,
    glance,
    lab_cli,
    make_striped_raw,
    parse_dict_table,
    stores_of,
    wait_for_image,
    wait_import_done,
)

pytestmark = pytest.mark.e2e




@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> ImageFile:
    return make_striped_raw(tmp_path_factory.mktemp("ks-images") / "ks.raw", 2)  # 8 MiB


@pytest.fixture(scope="module")
def member_image(keystone_lab: Lab, raw_image: ImageFile) -> Iterator[dict[str, Any]]:
    """`openstack image create --file` as the demo project's member."""
    name = f"ks-member-{uuid.uuid4().hex[:8]}"
    shown = json_out(os_cloud(keystone_lab, "member", "image", "create", "--disk-format", "raw",
                           "--container-format", "bare", "--private", "--file", str(raw_image.path), name,
                           "-f", "json"))
    try:
        yield shown
    finally:
        if get_image(keystone_lab, shown["id"]) is not None:
            api(keystone_lab, "DELETE", f"/v2/images/{shown['id']}")


def test_lab_json_names_keystone_and_clouds_yaml_has_the_personas(keystone_lab: Lab) -> None:
    ks = keystone_lab["keystone"]
    assert ks["auth_url"].endswith("/v3") and ks["region"] == "RegionOne"
    # the three users' personas, and the services (Nova's is also "service") that send X-Service-Token
    assert set(ks["clouds"]) == {"admin", "member", "reader", "nova", "cinder", "service"}
    assert ks["clouds"]["service"] == ks["clouds"]["nova"]
    clouds = json.loads(Path(ks["clouds_yaml"]).read_text())["clouds"]
    assert set(clouds) == set(ks["clouds"].values())
    # over TLS (the lab's default): Keystone and the hub verified against the lab's CA
    assert ks["auth_url"].startswith("https://") and keystone_lab["hub_url"].startswith("https://")
    assert {cloud["cacert"] for cloud in clouds.values()} == {keystone_lab["ca_file"]}
    # the hub is the catalog's image service, public and internal, in the lab's region
    status, _, body = keystone_call(keystone_lab, "GET", "/endpoints", token=keystone_lab["admin_token"])
    assert status == 200
    image_urls = {(e["interface"], e["region_id"], e["url"]) for e in json.loads(body)["endpoints"]
                  if e["url"] == keystone_lab["hub_url"]}
    assert image_urls == {("public", "RegionOne", keystone_lab["hub_url"]),
                          ("internal", "RegionOne", keystone_lab["hub_url"])}


def test_member_creates_shows_lists_an_image_owned_by_its_project(
        keystone_lab: Lab, member_image: dict[str, Any], raw_image: ImageFile) -> None:
    assert member_image["status"] == "active" and member_image["checksum"] == raw_image.md5
    assert member_image["owner"] == project_id(keystone_lab, "demo")
    shown = json_out(os_cloud(keystone_lab, "member", "image", "show", member_image["id"], "-f", "json"))
    assert shown["id"] == member_image["id"] and shown["size"] == raw_image.size
    rows = json_out(os_cloud(keystone_lab, "member", "image", "list", "-f", "json"))
    assert member_image["id"] in {r["ID"] for r in rows}


def test_reader_sees_its_projects_image_but_may_not_change_or_delete_it(
        keystone_lab: Lab, member_image: dict[str, Any], raw_image: ImageFile) -> None:
    rows = json_out(os_cloud(keystone_lab, "reader", "image", "list", "-f", "json"))
    assert member_image["id"] in {r["ID"] for r in rows}
    deleted = os_cloud(keystone_lab, "reader", "image", "delete", member_image["id"])
    assert deleted.returncode != 0 and "403" in deleted.stderr and "reader" in deleted.stderr, deleted.stderr
    created = os_cloud(keystone_lab, "reader", "image", "create", "--disk-format", "raw",
                       "--container-format", "bare", f"ks-reader-{uuid.uuid4().hex[:8]}")
    assert created.returncode != 0 and "403" in created.stderr, created.stderr
    assert get_image(keystone_lab, member_image["id"]) is not None


def test_admin_sees_the_members_image_and_the_member_not_the_admins(
        keystone_lab: Lab, member_image: dict[str, Any], raw_image: ImageFile) -> None:
    admin_rows = json_out(os_cloud(keystone_lab, "admin", "image", "list", "-f", "json"))
    assert member_image["id"] in {r["ID"] for r in admin_rows}
    admins = json_out(os_cloud(keystone_lab, "admin", "image", "create", "--disk-format", "raw",
                            "--container-format", "bare", "--private", "--file", str(raw_image.path),
                            f"ks-admin-{uuid.uuid4().hex[:8]}", "-f", "json"))
    try:
        hidden = os_cloud(keystone_lab, "member", "image", "show", admins["id"], "-f", "json")
        assert hidden.returncode != 0 and f"No Image found for {admins['id']}" in hidden.stderr, hidden.stderr
    finally:
        check(os_cloud(keystone_lab, "admin", "image", "delete", admins["id"]))
    assert get_image(keystone_lab, admins["id"]) is None


def test_member_copies_to_an_edge_whose_agent_pulls_with_its_application_credential(
        keystone_lab: Lab, member_image: dict[str, Any]) -> None:
    """`openstack image import --method copy-image`: the dcn0 agent pulls
    central's copy from the hub with a token of its own Keystone credential."""
    check(os_cloud(keystone_lab, "member", "image", "import", member_image["id"], "--method", "copy-image",
                   "--store", "dcn0"))
    done = wait_for_image(keystone_lab, member_image["id"], lambda i: "dcn0" in stores_of(i), timeout=60)
    assert stores_of(done) == {"central", "dcn0"}


def test_glance_with_os_variables_finds_the_hub_in_the_catalog(
        keystone_lab: Lab, raw_image: ImageFile) -> None:
    image_id = str(uuid.uuid4())
    check(glance_os(keystone_lab, "member", "image-create-via-import", "--id", image_id, "--name",
                    f"ks-glance-{image_id[:8]}", "--disk-format", "raw", "--container-format", "bare",
                    "--file", str(raw_image.path), "--stores", "central"))
    try:
        wait_import_done(keystone_lab, image_id)
        shown = parse_dict_table(check(glance_os(keystone_lab, "reader", "image-show", image_id)).stdout)
        assert shown["status"] == "active" and shown["checksum"] == raw_image.md5
        assert shown["owner"] == project_id(keystone_lab, "demo")
        assert image_id in check(glance_os(keystone_lab, "member", "image-list")).stdout
    finally:
        check(glance_os(keystone_lab, "member", "image-delete", image_id))
    assert get_image(keystone_lab, image_id) is None


def test_a_revoked_token_is_refused_within_the_hubs_cache_ttl(keystone_lab: Lab) -> None:
    bound_s = hub_cache_ttl_s(keystone_lab)
    token = new_token(keystone_lab, "member")
    assert api(keystone_lab, "GET", "/v2/images", token=token)[0] == 200  # validated, now cached
    status, _, body = keystone_call(keystone_lab, "DELETE", "/auth/tokens", token=keystone_lab["admin_token"],
                                    headers={"X-Subject-Token": token})
    assert status == 204, body
    revoked_at = time.monotonic()
    while api(keystone_lab, "GET", "/v2/images", token=token)[0] == 200:
        assert time.monotonic() - revoked_at < bound_s + 2, f"still accepted {bound_s:g} s after its revocation"
        time.sleep(0.25)
    status, body = api(keystone_lab, "GET", "/v2/images", token=token)
    assert status == 401 and "not a valid Keystone token" in body["error"]["message"], body


def test_keystone_stopped_is_a_503_saying_so_then_back_to_work(keystone_lab: Lab) -> None:
    token = new_token(keystone_lab, "reader")  # never shown to the hub: nothing cached for it
    lab_cli(keystone_lab, "keystone", "stop")
    try:
        status, body = api(keystone_lab, "GET", "/v2/images", token=token)
        assert status == 503, body
        assert "Keystone" in body["error"]["message"] and "can't be reached" in body["error"]["message"], body
        # what a client shows: glance with that token (and the hub's URL, Keystone being away)
        proc = glance(keystone_lab, "image-list", token=token)
        assert proc.returncode != 0 and "Keystone" in proc.stderr and "401" not in proc.stderr, proc.stderr
    finally:
        lab_cli(keystone_lab, "keystone", "start")
    assert api(keystone_lab, "GET", "/v2/images", token=token)[0] == 200
