"""`edgesync adopt --from-glance` against a real Glance 33 on the lab's own clusters.

Images are made and copied to the edges by Glance itself; after adoption the
hub has them under the same ids, with the same metadata and the same
locations, and no byte was copied for the copies already in place (the
pools' usage and the transfer counters say so). A corrupted copy is caught
by verification; an image Glance has only at an edge is copied to central.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.glance_source import adopt, glance_call, glance_image, reports, striped
from tests.fixtures.keystone_lab import keystone_call
from tests.fixtures.lab import Lab, api, get_image, urlopen, wait_for_image
from tests.fixtures.metrics_text import Scrape
from tests.fixtures.openstack_lab import rbd_cli, rbd_json, token

pytestmark = [pytest.mark.ceph, pytest.mark.e2e]

MIB = 1 << 20
# What differs by design: the hub's own bookkeeping and the fields it derives.
NOT_COMPARED = {"self", "file", "schema", "os_glance_importing_to_stores", "os_glance_failed_import"}


def copies(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["store"] or c["source_store"]: c for c in report["copies"]}


def pool_usage(lab: Lab) -> dict[str, Any]:
    """Per site: the images pool's RBD names and `rbd du`'s used bytes."""
    usage = {}
    for site, info in lab["sites"].items():
        du = rbd_json(lab, site, "du", "-p", info["pool"])
        usage[site] = (sorted(i["name"] + (f"@{i['snapshot']}" if i.get("snapshot") else "") for i in du["images"]),
                       du["total_used_size"])
    return usage


def moved_bytes(lab: Lab) -> dict[str, float]:
    """What crossed between sites: the hub's served bytes and each agent's received and written bytes."""
    def scrape(url: str) -> Scrape:
        with urlopen(lab, url, 10) as resp:  # verified against the lab's CA
            return Scrape.parse(resp.read().decode())

    hub = scrape(lab["hub_url"] + "/metrics")
    moved = {"hub served": hub.total("edgesync_transfer_served_bytes_total"),
             "hub wrote": hub.total("edgesync_replicated_bytes_total")}
    for site, info in lab["sites"].items():
        if info.get("metrics_url"):
            agent = scrape(info["metrics_url"])
            moved[f"{site} received"] = agent.total("edgesync_transfer_bytes_total")
            moved[f"{site} wrote"] = agent.total("edgesync_replicated_bytes_total")
    return moved


def hub_view(lab: Lab, image_id: str) -> dict[str, Any]:
    image = get_image(lab, image_id)
    assert image is not None, f"the hub has no image {image_id}"
    return image


def same_record(glance: dict[str, Any], hub: dict[str, Any]) -> None:
    keys = (set(glance) | set(hub)) - NOT_COMPARED
    differ = {k: (glance.get(k), hub.get(k)) for k in keys - {"locations", "tags"} if glance.get(k) != hub.get(k)}
    assert sorted(glance["tags"]) == sorted(hub["tags"])  # a set in Glance
    assert not differ, f"fields that differ (glance, hub): {differ}"
    as_set = lambda image: {(loc["url"], loc["metadata"].get("store")) for loc in image.get("locations", [])}  # noqa: E731
    assert as_set(glance) == as_set(hub)


def project_id(lab: Lab, name: str) -> str:
    status, _, body = keystone_call(lab, "GET", f"/projects?name={name}", token=token(lab, "admin"))
    assert status == 200, body
    return str(json.loads(body)["projects"][0]["id"])


def test_adopted_in_place_same_ids_metadata_locations_no_byte_copied(glance_source: dict[str, Any]) -> None:
    lab = glance_source["lab"]
    public = glance_image(glance_source, striped(1), copy_to=("dcn0", "dcn1"), visibility="public",
                          protected=True, min_ram=128, min_disk=1, tags=["adopt", "cirros"], os_distro="cirros",
                          hw_disk_bus="scsi")
    shared = glance_image(glance_source, striped(2, 6 * MIB), copy_to=("dcn1",), visibility="shared",
                          os_hidden=True)
    demo = project_id(lab, "demo")
    assert glance_call(glance_source, "POST", f"/v2/images/{shared['id']}/members", body={"member": demo})[0] == 200
    status, _ = glance_call(glance_source, "PUT", f"/v2/images/{shared['id']}/members/{demo}",
                            body={"status": "accepted"}, persona="member")
    assert status == 200
    queued = glance_image(glance_source, None, name="no-data-yet", container_format="bare")
    before_usage, before_moved = pool_usage(lab), moved_bytes(lab)

    _rc, summary = adopt(glance_source)

    assert not summary["errors"], summary["errors"]
    found = reports(summary)
    for image in (public, shared):
        assert found[image["id"]]["action"] == "adopted", found[image["id"]]
        for store, copy in copies(found[image["id"]]).items():
            assert copy["state"] == "adopted" and copy["verified"] == "full", (store, copy)
            assert copy["verified_bytes"] == image["size"]
        same_record(glance_call(glance_source, "GET", f"/v2/images/{image['id']}")[1], hub_view(lab, image["id"]))
    assert found[queued["id"]]["action"] == "adopted"
    same_record(queued, hub_view(lab, queued["id"]))
    # The member accepted the share in Glance: edgesync has the same members, and the member sees the image.
    members = lambda body: sorted((m["member_id"], m["status"], m["created_at"]) for m in body["members"])  # noqa: E731
    status, in_hub = api(lab, "GET", f"/v2/images/{shared['id']}/members")
    assert status == 200, in_hub
    assert members(in_hub) == members(glance_call(glance_source, "GET", f"/v2/images/{shared['id']}/members")[1])
    status, _ = api(lab, "GET", f"/v2/images/{shared['id']}", token=token(lab, "member"))
    assert status == 200
    # No byte moved: the pools hold what they held, and nothing crossed between sites.
    assert pool_usage(lab) == before_usage
    assert moved_bytes(lab) == before_moved
    rbd_info = json.loads(rbd_cli(lab, "dcn1", "info", f"images/{public['id']}@snap", "--format", "json"))
    assert rbd_info["protected"] == "true"

    _rc, again = adopt(glance_source)
    second = reports(again)
    for image in (public, shared, queued):
        assert second[image["id"]]["action"] == "unchanged", second[image["id"]]
    assert all(c["state"] == "already_adopted" for i in (public, shared) for c in second[i["id"]]["copies"])


def test_corrupted_copy_is_caught_and_left_out(glance_source: dict[str, Any]) -> None:
    lab = glance_source["lab"]
    image = glance_image(glance_source, striped(3), copy_to=("dcn0", "dcn1"))
    corrupt(lab, "dcn1", image["id"])

    rc, summary = adopt(glance_source)

    assert rc == 3  # done, with discrepancies
    report = reports(summary)[image["id"]]
    assert report["action"] == "adopted"
    by_store = copies(report)
    assert by_store["dcn1"]["state"] == "failed" and by_store["dcn1"]["reason"].startswith("copy_mismatch"), by_store
    assert by_store["central"]["state"] == by_store["dcn0"]["state"] == "adopted"
    assert {loc["metadata"]["store"] for loc in hub_view(lab, image["id"])["locations"]} == {"central", "dcn0"}
    assert any(image["id"] in line and "dcn1" in line for line in summary["discrepancies"])


def test_missing_edge_copy_is_copied_with_copy_missing(glance_source: dict[str, Any]) -> None:
    lab = glance_source["lab"]
    image = glance_image(glance_source, striped(4, 4 * MIB), copy_to=("dcn0",))
    # Gone behind Glance's back: Glance still lists the location.
    remove_copy(lab, "dcn0", image["id"])

    _rc, summary = adopt(glance_source, "--copy-missing")

    report = reports(summary)[image["id"]]
    assert copies(report)["dcn0"]["state"] == "failed" and "copy_missing" in copies(report)["dcn0"]["reason"]
    assert [t["stores"] for t in report["copy_tasks"]] == [["dcn0"]]
    done = wait_for_image(lab, image["id"], lambda i: "dcn0" in i["stores"].split(","), what="dcn0 copy",
                          timeout=60)
    assert done["os_hash_value"] == image["os_hash_value"]


def test_hub_first_and_dry_run(glance_source: dict[str, Any]) -> None:
    lab = glance_source["lab"]
    edge_only = glance_image(glance_source, striped(5, 4 * MIB), store="dcn1")
    assert edge_only["stores"] == "dcn1"

    _rc, dry = adopt(glance_source, "--dry-run")

    planned = reports(dry)[edge_only["id"]]
    assert planned["action"] == "would_adopt"
    assert [t["stores"] for t in planned["copy_tasks"]] == [["central"]]
    assert get_image(lab, edge_only["id"]) is None  # a dry run writes nothing

    _rc, summary = adopt(glance_source)

    report = reports(summary)[edge_only["id"]]
    assert report["action"] == "adopted" and [t["stores"] for t in report["copy_tasks"]] == [["central"]]
    done = wait_for_image(lab, edge_only["id"], lambda i: {"central", "dcn1"} <= set(i["stores"].split(",")),
                          what="central copy", timeout=60)
    assert done["os_hash_value"] == edge_only["os_hash_value"]


def corrupt(lab: Lab, site: str, image_id: str) -> None:
    """Change the bytes of a site's copy, keeping it published (a protected snap of the same size)."""
    name = f"{lab['sites'][site]['pool']}/{image_id}"
    rbd_cli(lab, site, "snap", "unprotect", f"{name}@snap")
    rbd_cli(lab, site, "snap", "rm", f"{name}@snap")
    rbd_cli(lab, site, "bench", "--io-type", "write", "--io-size", "4096", "--io-total", "4096",
            "--io-pattern", "rand", name)
    rbd_cli(lab, site, "snap", "create", f"{name}@snap")
    rbd_cli(lab, site, "snap", "protect", f"{name}@snap")


def remove_copy(lab: Lab, site: str, image_id: str) -> None:
    name = f"{lab['sites'][site]['pool']}/{image_id}"
    rbd_cli(lab, site, "snap", "unprotect", f"{name}@snap")
    rbd_cli(lab, site, "snap", "rm", f"{name}@snap")
    rbd_cli(lab, site, "rm", name)
