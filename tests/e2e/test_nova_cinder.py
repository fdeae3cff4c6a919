"""Nova's and Cinder's own code (PyPI nova 34, cinder 29, in .venv-openstack)
against the hub at edge site dcn0 of the OpenStack lab: RBD stores on three
Ceph clusters, agents, a real Keystone; user tokens from Keystone, and the
service token Nova and Cinder add as their own service users.

Each step runs one of tests/openstack/*_driver.py in a subprocess (Nova and
Cinder can't share a process), configured by a nova.conf/cinder.conf as a
DCN compute or volume node at dcn0 has it; the image service is found in the
Keystone catalog. What they leave in Ceph is checked with the rbd CLI.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.lab import Lab, api, get_image, hub_log_tail, stores_of, wait_for_image, wait_gone
from tests.fixtures.openstack_lab import (
    delete_image,
    ok,
    rbd_json,
    rbd_names,
    run_driver,
    token,
    upload_image,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
SITE = "dcn0"
ALL_SITES = ("central", "dcn0", "dcn1")


def _data(seed: int) -> bytes:
    """A small image with data, a hole and data again (the clones must be of the real thing)."""
    return bytes([seed]) * MiB + b"\0" * (2 * MiB) + bytes([seed ^ 0xFF]) * MiB


def _parent(lab: Lab, site: str, pool: str, name: str) -> dict[str, Any]:
    info = rbd_json(lab, site, "info", f"{pool}/{name}")
    assert "parent" in info, f"{pool}/{name} at {site} is not a clone: {info}"
    return info["parent"]  # type: ignore[no-any-return]


def _copies(lab: Lab, image_id: str) -> dict[str, bool]:
    """Whether each site's images pool holds the image (with its snap)."""
    return {site: image_id in rbd_names(lab, site, "images") for site in ALL_SITES}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(params=["admin", "member"])
def persona(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def image_at_dcn0(openstack_lab: Lab, persona: str) -> Iterator[dict[str, Any]]:
    """The persona's project's image, at central and dcn0."""
    image = upload_image(openstack_lab, token(openstack_lab, persona), _data(0x31), stores=(SITE,))
    yield image
    delete_image(openstack_lab, image["id"])


@pytest.fixture
def image_at_central(openstack_lab: Lab, persona: str) -> Iterator[dict[str, Any]]:
    image = upload_image(openstack_lab, token(openstack_lab, persona), _data(0x52))
    yield image
    delete_image(openstack_lab, image["id"])


@contextmanager
def _instance_disk(lab: Lab, workdir: Path, tok: str, image_id: str) -> Iterator[dict[str, Any]]:
    """A boot at dcn0 (Nova's Rbd.clone), its disk destroyed afterwards as deleting the instance does."""
    instance = str(uuid.uuid4())
    disk = f"{instance}_disk"
    answer = run_driver(lab, "nova", "boot", workdir / "boot", token=tok, image_id=image_id, disk=disk)
    try:
        yield {"instance": instance, "disk": disk, **ok(answer)}
    finally:
        if disk in rbd_names(lab, SITE, "vms"):
            ok(run_driver(lab, "nova", "destroy_disk", workdir / "destroy", token=tok, disk=disk))


# --- a boot at the edge ---------------------------------------------------------------------------


def test_boot_clones_the_edge_sites_copy(openstack_lab: Lab, image_at_dcn0: dict[str, Any], persona: str,
                                         workdir: Path) -> None:
    image_id = image_at_dcn0["id"]
    fsid = openstack_lab["sites"][SITE]["fsid"]
    with _instance_disk(openstack_lab, workdir, token(openstack_lab, persona), image_id) as boot:
        # Nova's is_cloneable picks exactly dcn0's location (its cluster's fsid), the copy it had
        assert boot["cloneable"] == [f"rbd://{fsid}/images/{image_id}/snap"]
        assert boot["stores_before"] == boot["stores_after"] == "central,dcn0"
        parent = _parent(openstack_lab, SITE, "vms", boot["disk"])
        assert (parent["pool"], parent["image"], parent["snapshot"]) == ("images", image_id, "snap")
        assert boot["parent"] == ["images", image_id, "snap"]


def test_boot_without_an_edge_copy_copies_it_there_with_novas_wait_loop_then_clones(
        openstack_lab: Lab, image_at_central: dict[str, Any], persona: str, workdir: Path) -> None:
    image_id = image_at_central["id"]
    assert stores_of(image_at_central) == {"central"} and not _copies(openstack_lab, image_id)[SITE]
    with _instance_disk(openstack_lab, workdir, token(openstack_lab, persona), image_id) as boot:
        assert boot["cloneable"] == []  # only central's location, another cluster
        assert stores_of({"stores": boot["stores_after"]}) == {"central", SITE}
        assert _copies(openstack_lab, image_id) == {"central": True, "dcn0": True, "dcn1": False}
        parent = _parent(openstack_lab, SITE, "vms", boot["disk"])
        assert (parent["pool"], parent["image"], parent["snapshot"]) == ("images", image_id, "snap")


# --- deletes while clones exist ---------------------------------------------------------------------


def test_image_delete_while_novas_clone_exists_is_409_then_204_removes_every_copy(
        openstack_lab: Lab, workdir: Path) -> None:
    member = token(openstack_lab, "member")
    image = upload_image(openstack_lab, member, _data(0x73), stores=(SITE, "dcn1"))
    image_id = image["id"]
    admin = token(openstack_lab, "admin")
    try:
        with _instance_disk(openstack_lab, workdir, admin, image_id) as boot:
            status, body = api(openstack_lab, "DELETE", f"/v2/images/{image_id}", token=member)
            assert status == 409, body
            refused = run_driver(openstack_lab, "nova", "delete_image", workdir / "delete", token=member,
                                 image_id=image_id)
            assert refused.get("error", {}).get("type") == "ImageDeleteConflict", refused
            # nothing removed: the record, every site's copy and snap, the clone's parent
            assert stores_of(get_image(openstack_lab, image_id) or {}) == set(ALL_SITES)
            assert _copies(openstack_lab, image_id) == dict.fromkeys(ALL_SITES, True)
            assert _parent(openstack_lab, SITE, "vms", boot["disk"])["image"] == image_id
        status, body = api(openstack_lab, "DELETE", f"/v2/images/{image_id}", token=member)
        assert status == 204, body
        wait_gone(openstack_lab, image_id)
        _wait_copies_gone(openstack_lab, image_id)
    finally:
        delete_image(openstack_lab, image_id)


def _wait_copies_gone(lab: Lab, image_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any((copies := _copies(lab, image_id)).values()):
        assert time.monotonic() < deadline, f"copies of {image_id} left: {copies}\n{hub_log_tail(lab)}"
        time.sleep(0.2)


# --- Cinder: volume from an image -------------------------------------------------------------------
# Cinder reads locations as its own service user ([glance] in cinder.conf, project service, role
# service), whoever asks for the volume; the image itself (`show`) with the caller's token.

@pytest.fixture(scope="module")
def public_image(openstack_lab: Lab) -> Iterator[dict[str, Any]]:
    """An admin's public image at central and dcn0 (a DCN cloud's base image)."""
    image = upload_image(openstack_lab, token(openstack_lab, "admin"), _data(0x15), stores=(SITE,),
                         visibility="public")
    yield image
    delete_image(openstack_lab, image["id"])


@pytest.mark.parametrize("caller", ["admin", "member", "nova"])
def test_cinder_get_location_finds_every_copy_for_each_caller(openstack_lab: Lab, public_image: dict[str, Any],
                                                              caller: str, workdir: Path) -> None:
    seen = ok(run_driver(openstack_lab, "cinder", "clone_image", workdir, token=token(openstack_lab, caller),
                         image_id=public_image["id"], volume_id=str(uuid.uuid4()), clone=False))
    assert seen["direct_url"] is None  # the v2.17 location API's answer, not the image's
    urls = {loc["url"]: loc["metadata"].get("store") for loc in seen["locations"]}
    fsid = {site: openstack_lab["sites"][site]["fsid"] for site in ALL_SITES}
    assert urls == {f"rbd://{fsid[s]}/images/{public_image['id']}/snap": s for s in ("central", SITE)}


def _volume_from_image(lab: Lab, workdir: Path, image: dict[str, Any], owner: str, caller: str) -> None:
    """Cinder's clone_image at dcn0 for `caller`, the image delete (as `owner`) refused while the
    volume exists, and allowed once it is deleted, removing every copy."""
    tok, owner_tok = token(lab, caller), token(lab, owner)
    volume_id = str(uuid.uuid4())
    try:
        done = ok(run_driver(lab, "cinder", "clone_image", workdir / "clone", token=tok,
                             image_id=image["id"], volume_id=volume_id))
        assert done["cloned"] is True and done["volume_name"] == f"volume-{volume_id}"
        parent = _parent(lab, SITE, "volumes", done["volume_name"])
        assert (parent["pool"], parent["image"], parent["snapshot"]) == ("images", image["id"], "snap")
        assert rbd_json(lab, SITE, "info", f"volumes/{done['volume_name']}")["size"] == 1024 * MiB
        status, body = api(lab, "DELETE", f"/v2/images/{image['id']}", token=owner_tok)
        assert status == 409, body
        assert _copies(lab, image["id"]) == {"central": True, "dcn0": True, "dcn1": False}
        ok(run_driver(lab, "cinder", "delete_volume", workdir / "delete", token=tok, volume_id=volume_id))
        status, body = api(lab, "DELETE", f"/v2/images/{image['id']}", token=owner_tok)
        assert status == 204, body
        _wait_copies_gone(lab, image["id"])
    finally:
        if f"volume-{volume_id}" in rbd_names(lab, SITE, "volumes"):
            run_driver(lab, "cinder", "delete_volume", workdir / "cleanup", token=tok, volume_id=volume_id)


def test_cinder_clone_image_of_a_public_image_makes_a_cow_volume_that_holds_the_image_delete(
        openstack_lab: Lab, workdir: Path) -> None:
    image = upload_image(openstack_lab, token(openstack_lab, "admin"), _data(0x26), stores=(SITE,),
                         visibility="public")
    try:
        _volume_from_image(openstack_lab, workdir, image, owner="admin", caller="member")
    finally:
        delete_image(openstack_lab, image["id"])


def test_cinder_clone_image_of_a_members_private_image(openstack_lab: Lab, workdir: Path) -> None:
    image = upload_image(openstack_lab, token(openstack_lab, "member"), _data(0x27), stores=(SITE,))
    try:
        _volume_from_image(openstack_lab, workdir, image, owner="member", caller="member")
    finally:
        delete_image(openstack_lab, image["id"])


# --- Nova: snapshot of an instance at the edge ------------------------------------------------------


@contextmanager
def _paused_osd(lab: Lab, site: str) -> Iterator[None]:
    """The site's only OSD stopped (SIGSTOP) and continued afterwards: writes to that cluster wait."""
    pid = int((Path(lab["lab_dir"]) / "ceph" / site / "run" / "osd.0.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_nova_snapshot_at_the_edge_goes_active_there_and_reaches_central_by_itself(
        openstack_lab: Lab, persona: str, workdir: Path) -> None:
    member = token(openstack_lab, persona)
    base = upload_image(openstack_lab, member, _data(0x48), stores=(SITE,))
    snapshot_id = None
    try:
        with _instance_disk(openstack_lab, workdir, member, base["id"]) as boot:
            # central's cluster paused: the edge snapshot can't reach central until it continues
            with _paused_osd(openstack_lab, "central"):
                done = ok(run_driver(openstack_lab, "nova", "snapshot", workdir / "snapshot", token=member,
                                     base_image_id=base["id"], disk=boot["disk"], instance_uuid=boot["instance"],
                                     name=f"snap-{boot['instance'][:8]}"))
                snapshot_id = done["image_id"]
                fsid = openstack_lab["sites"][SITE]["fsid"]
                assert done["location"] == f"rbd://{fsid}/images/{snapshot_id}/snap"
                image = wait_for_image(openstack_lab, snapshot_id, lambda i: i["status"] == "active",
                                       what="active at the edge", timeout=60)
                assert SITE in stores_of(image) and "central" not in stores_of(image)
                # hub first: no other edge gets it before central has it
                status, body = api(openstack_lab, "POST", f"/v2/images/{snapshot_id}/import", body={
                    "method": {"name": "copy-image"}, "stores": ["dcn1"]})
                assert status == 409, body
            image = wait_for_image(openstack_lab, snapshot_id, lambda i: "central" in stores_of(i),
                                   what="a copy at central", timeout=60)
            assert image["status"] == "active" and image["size"] == len(_data(0x48))
            assert _copies(openstack_lab, snapshot_id) == {"central": True, "dcn0": True, "dcn1": False}
            status, body = api(openstack_lab, "POST", f"/v2/images/{snapshot_id}/import", body={
                "method": {"name": "copy-image"}, "stores": ["dcn1"]})
            assert status == 202, body
            wait_for_image(openstack_lab, snapshot_id, lambda i: "dcn1" in stores_of(i), what="a copy at dcn1")
    finally:
        for image_id in filter(None, (snapshot_id, base["id"])):
            delete_image(openstack_lab, image_id)

