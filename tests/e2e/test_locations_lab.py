"""The location API on real Ceph with agents (`rbd_agents_lab`): a snapshot
made in an edge site's pool as Nova's direct snapshot makes it (clone of the
base image, flatten, snap, protect), its location POSTed to the queued image
that Nova created, and what must follow — active at that site, copied to
central by itself, other edges refused until then; and locations that must
fail (no image, no protected snap, a hash that differs) failing cleanly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_agents_lab import (
    WAIT_S,
    assert_identical_and_sparse,
    central_image,
    cluster_paused,
    copy_to,
    created,
    edgesync,
    images,
    latest_task,
    pool_images,
    rbd_url,
    site_file,
    site_view,
    wait_until,
)
from tests.e2e.test_rbd_lab import rbd, snap_protected
from tests.fixtures.lab import ImageFile, Lab, api, check, get_image, glance, status_of, stores_of, wait_import_done

pytestmark = [pytest.mark.e2e, pytest.mark.ceph]

__all__ = ["created", "images"]  # the fixtures, used here by name


def queued_image(lab: Lab, ids: list[str], name: str) -> str:
    """What Nova creates before it snapshots: a queued record (a member's)."""
    status, body = api(lab, "POST", "/v2/images", token=lab["member_token"],
                       body={"name": name, "disk_format": "raw", "container_format": "bare"})
    assert status == 201, body
    ids.append(body["id"])
    return str(body["id"])


def add_location(lab: Lab, image_id: str, url: str, validation: dict[str, str] | None = None) -> tuple[int, Any]:
    return api(lab, "POST", f"/v2/images/{image_id}/locations",
               body={"url": url, "validation_data": validation or {}})


@pytest.fixture
def nova_made(rbd_agents_lab: Lab) -> Iterator[list[tuple[str, str]]]:
    """(site, image id) of RBD images a test made as Nova would; any still in
    the pool afterwards (a location refused: the hub never owned them) are removed."""
    made: list[tuple[str, str]] = []
    yield made
    for site, image_id in made:
        if image_id not in pool_images(rbd_agents_lab, site):
            continue
        snaps = rbd(rbd_agents_lab, site, "snap", "ls", f"images/{image_id}")
        if "snap" in snaps:
            rbd(rbd_agents_lab, site, "snap", "unprotect", f"images/{image_id}@snap")
            rbd(rbd_agents_lab, site, "snap", "purge", f"images/{image_id}")
        rbd(rbd_agents_lab, site, "rm", f"images/{image_id}")


def direct_snapshot(lab: Lab, site: str, base_id: str, image_id: str) -> None:
    """Nova's `Rbd.direct_snapshot`, on the image level: clone the base image's
    protected snap into the pool as the new image, flatten it, snap and protect."""
    rbd(lab, site, "clone", f"images/{base_id}@snap", f"images/{image_id}")
    rbd(lab, site, "flatten", f"images/{image_id}")
    rbd(lab, site, "snap", "create", f"images/{image_id}@snap")
    rbd(lab, site, "snap", "protect", f"images/{image_id}@snap")


def test_a_direct_snapshot_at_an_edge_becomes_active_there_then_reaches_central_by_itself(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], nova_made: list[tuple[str, str]],
        created: list[str]) -> None:
    lab, source = rbd_agents_lab, images["small"]
    # each agent announced its cluster's fsid, by which the hub could match locations without its ceph.conf
    for site in ("dcn0", "dcn1"):
        assert site_view(lab, site)["store_fsid"] == lab["sites"][site]["fsid"]
    base = central_image(lab, created, source)
    check(copy_to(lab, base, "dcn0"))  # the instance's base image at dcn0
    assert "dcn0" in stores_of(wait_import_done(lab, base, timeout=WAIT_S))
    image_id = queued_image(lab, created, "nova-direct-snapshot")
    direct_snapshot(lab, "dcn0", base, image_id)
    nova_made.append(("dcn0", image_id))

    with cluster_paused(lab, "central"):  # the copy to central can't finish meanwhile
        # glanceclient's add_image_location, what Nova's _add_location calls (POST, v2.17)
        added = glance(lab, "add-location", "--url", rbd_url(lab, "dcn0", image_id), image_id, debug=True)
        assert status_of(added, "POST", f"/v2/images/{image_id}/locations") == 202, added.stderr[-2000:]
        image = wait_until(lambda: (i := get_image(lab, image_id)) and i["status"] == "active" and i,
                           "the image to be active at dcn0")
        assert image["stores"] == "dcn0" and image["os_glance_importing_to_stores"] == "central"
        assert (image["size"], image["checksum"], image["os_hash_value"]) == (source.size, source.md5, source.sha512)
        status, listed = api(lab, "GET", f"/v2/images/{image_id}/locations")
        assert status == 200 and listed == [{"url": rbd_url(lab, "dcn0", image_id), "metadata": {"store": "dcn0"}}]
        refused = copy_to(lab, image_id, "dcn1", debug=True)
        assert status_of(refused, "POST", f"/v2/images/{image_id}/import") == 409
        assert "hub first" in refused.stderr

    image = wait_import_done(lab, image_id, timeout=WAIT_S)
    assert stores_of(image) == {"central", "dcn0"} and image["os_glance_failed_import"] == ""
    assert_identical_and_sparse(lab, "central", image_id, source)  # pulled from dcn0's agent, checked
    check(copy_to(lab, image_id, "dcn1"))
    image = wait_import_done(lab, image_id, timeout=WAIT_S)
    assert stores_of(image) == {"central", "dcn0", "dcn1"} and image["os_glance_failed_import"] == ""
    assert_identical_and_sparse(lab, "dcn1", image_id, source)  # copied from central
    assert snap_protected(lab, "dcn0", image_id)  # Nova's copy is the image's copy there, as it was


def wait_refused(lab: Lab, image_id: str, fragment: str) -> dict[str, Any]:
    """The location's check failed: the image is queued again, nothing registered."""
    image = wait_until(lambda: (i := get_image(lab, image_id)) and i["status"] == "queued"
                       and "os_glance_import_task" not in i and i, "the location to be refused")
    assert "stores" not in image and image["size"] is None and image["os_hash_value"] is None, image
    task = latest_task(lab, image_id)
    assert task["type"] == "location_import" and task["status"] == "failure", task
    assert fragment in task["message"], task["message"]
    return image


def test_a_bad_location_fails_cleanly_and_a_good_one_is_then_taken(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], nova_made: list[tuple[str, str]],
        created: list[str]) -> None:
    lab, source = rbd_agents_lab, images["small"]
    image_id = queued_image(lab, created, "nova-snapshot-gone-wrong")
    url = rbd_url(lab, "dcn1", image_id)
    # no such RBD image at dcn1
    assert add_location(lab, image_id, url)[0] == 202
    wait_refused(lab, image_id, f"there is no RBD image {image_id}")
    # the image without its protected snapshot (Nova died before protecting it)
    nova_made.append(("dcn1", image_id))
    rbd(lab, "dcn1", "import", str(source.path), f"images/{image_id}")
    rbd(lab, "dcn1", "snap", "create", f"images/{image_id}@snap")
    assert add_location(lab, image_id, url)[0] == 202
    wait_refused(lab, image_id, f"the snapshot {image_id}@snap is not protected")
    # protected, but not the data the validation data describes
    rbd(lab, "dcn1", "snap", "protect", f"images/{image_id}@snap")
    wrong = {"os_hash_algo": "sha512", "os_hash_value": "0" * 128}
    assert add_location(lab, image_id, url, wrong)[0] == 202
    wait_refused(lab, image_id, "does not match")
    assert not pool_images(lab, "central") & {image_id}  # nothing reached central
    # no store in that cluster: refused at once, saying which stores exist
    status, body = add_location(lab, image_id, f"rbd://{uuid.uuid4()}/images/{image_id}/snap")
    assert status == 400 and all(lab["sites"][s]["fsid"] in body["error"]["message"] for s in lab["sites"])
    # the right data, by Nova's older path (glanceclient's add_location: PATCH add /locations/-)
    check(glance(lab, "location-add", "--url", url, "--checksum", source.md5, "--hash-algo", "sha512",
                 "--hash-value", source.sha512, image_id))
    image = wait_until(lambda: (i := get_image(lab, image_id)) and stores_of(i) == {"central", "dcn1"}
                       and "os_glance_import_task" not in i and i, "the image to reach central")
    assert image["status"] == "active" and image["os_glance_failed_import"] == ""
    assert_identical_and_sparse(lab, "central", image_id, source)


def test_agent_register_completes_the_queued_record_nova_made(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], nova_made: list[tuple[str, str]],
        created: list[str]) -> None:
    lab, source = rbd_agents_lab, images["small"]
    image_id = queued_image(lab, created, "nova-record")
    owner = get_image(lab, image_id)["owner"]  # type: ignore[index]  # the member's project
    nova_made.append(("dcn1", image_id))
    rbd(lab, "dcn1", "import", str(source.path), f"images/{image_id}")
    rbd(lab, "dcn1", "snap", "create", f"images/{image_id}@snap")
    rbd(lab, "dcn1", "snap", "protect", f"images/{image_id}@snap")
    registered = check(edgesync("agent", "register", "--config", str(site_file(lab, "dcn1")), f"images/{image_id}@snap"))
    assert f"{image_id} registered at dcn1" in registered.stdout
    image = wait_import_done(lab, image_id, timeout=WAIT_S)
    assert stores_of(image) == {"central", "dcn1"} and image["name"] == "nova-record"
    assert image["owner"] == owner  # still the member's, not the site's project
    assert image["os_hash_value"] == source.sha512
    again = edgesync("agent", "register", "--config", str(site_file(lab, "dcn1")), image_id)
    assert again.returncode != 0 and "409" in again.stderr + again.stdout
