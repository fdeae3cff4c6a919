"""The hub on three real Ceph clusters, driven by the real glance CLI.

Issue 3's "done when": a 1 GiB image, half zeros, imported to central through
glanceclient lands at rbd://<central fsid>/images/<uuid>/snap, uses about
512 MiB, has `snap` protected and exports byte-identical; edge copies use
their own cluster's fsid; a COW clone of `snap` makes store delete and image
delete answer 409 with nothing removed — with agents (the lab's default),
the agent of each edge is asked before anything is removed. An image deleted
while an edge's agent is down is removed there when the agent returns, and
is listed as pending until then.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.lab import (
    Lab,
    api,
    check,
    get_image,
    glance,
    lab_cli,
    make_striped_raw,
    needs_agents,
    parse_dict_table,
    wait_import_done,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
STRIPE = 4 * MiB


def in_site(lab: Lab, site: str) -> list[str]:
    """What runs a command where the site's cluster is reachable: in the WAN
    lab, the site's own network namespace."""
    netns = lab["sites"][site].get("netns")
    return ["ip", "netns", "exec", netns] if netns else []


def rbd(lab: Lab, site: str, *args: str) -> str:
    conf = lab["sites"][site]["ceph_conf"]
    out = subprocess.run([*in_site(lab, site), "rbd", "-c", conf, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"rbd {' '.join(args)}: {out.stderr}"
    return out.stdout


def used_bytes(lab: Lab, site: str, image_id: str) -> int:
    # One entry for the snapshot and one for the head; Pacific prints no total.
    du = json.loads(rbd(lab, site, "du", "--format", "json", f"images/{image_id}"))
    return sum(int(entry["used_size"]) for entry in du["images"])


def snap_protected(lab: Lab, site: str, image_id: str) -> bool:
    snaps = json.loads(rbd(lab, site, "snap", "ls", "--format", "json", f"images/{image_id}"))
    return [s["name"] for s in snaps] == ["snap"] and snaps[0]["protected"] == "true"


def exported_sha512(lab: Lab, site: str, image_id: str) -> str:
    conf = lab["sites"][site]["ceph_conf"]
    export = subprocess.Popen([*in_site(lab, site), "rbd", "-c", conf, "export", f"images/{image_id}@snap", "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    with export:
        digest = subprocess.run(["sha512sum"], stdin=export.stdout, capture_output=True, text=True, check=True)
    assert export.returncode == 0
    return digest.stdout.split()[0]


@pytest.fixture(scope="module")
def big_image(rbd_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """1 GiB, 4 MiB data / 4 MiB holes, imported to central through glanceclient."""
    source = make_striped_raw(tmp_path_factory.mktemp("rbd-img") / "half.raw", stripes=256, stripe=STRIPE)
    out = check(glance(rbd_lab, "image-create-via-import", "--disk-format", "raw", "--container-format",
                       "bare", "--name", "rbd-half-zeros", "--file", str(source.path),
                       "--stores", "central", timeout=180))
    image_id = parse_dict_table(out.stdout)["id"]
    image = wait_import_done(rbd_lab, image_id, timeout=120)
    assert image["status"] == "active", image
    return {"id": image_id, "source": source}


def test_import_lands_in_central_rbd_sparse_protected_identical(rbd_lab: Lab, big_image: dict[str, Any]) -> None:
    image_id, source = big_image["id"], big_image["source"]
    status, image = api(rbd_lab, "GET", f"/v2/images/{image_id}")
    assert status == 200
    fsid = rbd_lab["sites"]["central"]["fsid"]
    assert image["direct_url"] == f"rbd://{fsid}/images/{image_id}/snap"
    assert image["locations"] == [{"url": f"rbd://{fsid}/images/{image_id}/snap",
                                   "metadata": {"store": "central"}}]
    assert image["os_hash_value"] == source.sha512
    used = used_bytes(rbd_lab, "central", image_id)
    assert 0.95 * source.data_bytes <= used <= 1.05 * source.data_bytes, used
    assert snap_protected(rbd_lab, "central", image_id)
    assert exported_sha512(rbd_lab, "central", image_id) == source.sha512


def test_copy_to_edges_uses_each_sites_fsid_and_stays_sparse(rbd_lab: Lab, big_image: dict[str, Any]) -> None:
    image_id, source = big_image["id"], big_image["source"]
    check(glance(rbd_lab, "image-import", image_id, "--stores", "dcn0,dcn1", "--import-method", "copy-image"))
    image = wait_import_done(rbd_lab, image_id, timeout=120)
    assert image["os_glance_failed_import"] == ""
    by_store = {loc["metadata"]["store"]: loc["url"] for loc in image["locations"]}
    assert set(by_store) == {"central", "dcn0", "dcn1"}
    fsids = {site: rbd_lab["sites"][site]["fsid"] for site in by_store}
    assert len(set(fsids.values())) == 3
    for site, url in by_store.items():
        assert url == f"rbd://{fsids[site]}/images/{image_id}/snap"
    for site in ("dcn0", "dcn1"):
        assert snap_protected(rbd_lab, site, image_id)
        used = used_bytes(rbd_lab, site, image_id)
        assert 0.95 * source.data_bytes <= used <= 1.05 * source.data_bytes, (site, used)
    assert exported_sha512(rbd_lab, "dcn1", image_id) == source.sha512


def test_stores_detail_shows_rbd_facts(rbd_lab: Lab) -> None:
    status, body = api(rbd_lab, "GET", "/v2/info/stores/detail")
    assert status == 200
    for entry in body["stores"]:
        assert entry["type"] == "rbd"
        props = entry["properties"]
        assert props["pool"] == "images"
        assert props["thin_provisioning"] is True
        assert props["fsid"] == rbd_lab["sites"][entry["id"]]["fsid"]


def test_cow_clone_blocks_store_and_image_delete(rbd_lab: Lab, tmp_path: Path) -> None:
    source = make_striped_raw(tmp_path / "small.raw", stripes=4, stripe=MiB)
    out = check(glance(rbd_lab, "image-create-via-import", "--disk-format", "raw", "--container-format",
                       "bare", "--name", "clone-me", "--file", str(source.path), "--stores", "central,dcn0,dcn1"))
    image_id = parse_dict_table(out.stdout)["id"]
    # parallel copies finish in either order; `stores` follows completion
    assert set(wait_import_done(rbd_lab, image_id)["stores"].split(",")) == {"central", "dcn0", "dcn1"}
    # A VM booted at dcn0: Nova clones the protected snapshot copy-on-write.
    rbd(rbd_lab, "dcn0", "clone", f"images/{image_id}@snap", f"images/vm-{image_id[:8]}")
    try:
        status, body = api(rbd_lab, "DELETE", f"/v2/stores/dcn0/{image_id}")
        assert status == 409, body
        assert "in use" in body["error"]["message"]
        status, body = api(rbd_lab, "DELETE", f"/v2/images/{image_id}")
        assert status == 409, body
        # nothing was removed, anywhere
        status, image = api(rbd_lab, "GET", f"/v2/images/{image_id}")
        assert status == 200 and set(image["stores"].split(",")) == {"central", "dcn0", "dcn1"}
        for site in ("central", "dcn0", "dcn1"):
            assert snap_protected(rbd_lab, site, image_id)
    finally:
        rbd(rbd_lab, "dcn0", "rm", f"images/vm-{image_id[:8]}")
    status, _ = api(rbd_lab, "DELETE", f"/v2/stores/dcn0/{image_id}")
    assert status == 204
    status, _ = api(rbd_lab, "DELETE", f"/v2/images/{image_id}")
    assert status == 204
    for site in ("central", "dcn1"):
        assert image_id not in rbd(rbd_lab, site, "ls", "images").split()


def pending_deletes(lab: Lab, image_id: str) -> list[dict[str, Any]]:
    status, body = api(lab, "GET", "/edgesync/v1/pending-deletes")
    assert status == 200, body
    return [p for p in body["pending_deletes"] if p["image_id"] == image_id]


def test_an_image_deleted_while_an_edge_agent_is_down_goes_there_when_it_returns(
        rbd_lab: Lab, tmp_path: Path) -> None:
    needs_agents(rbd_lab)
    source = make_striped_raw(tmp_path / "small.raw", stripes=4, stripe=MiB)
    out = check(glance(rbd_lab, "image-create-via-import", "--disk-format", "raw", "--container-format",
                       "bare", "--name", "offline-delete", "--file", str(source.path),
                       "--stores", "central,dcn0,dcn1"))
    image_id = parse_dict_table(out.stdout)["id"]
    assert set(wait_import_done(rbd_lab, image_id)["stores"].split(",")) == {"central", "dcn0", "dcn1"}
    lab_cli(rbd_lab, "agent", "stop", "dcn1")
    try:
        status, body = api(rbd_lab, "DELETE", f"/v2/stores/dcn1/{image_id}")
        assert status == 503, body  # a store delete says it can't, and changes nothing
        assert "offline" in body["error"]["message"] and "Nothing was changed" in body["error"]["message"]
        assert pending_deletes(rbd_lab, image_id) == []
        check(glance(rbd_lab, "image-delete", image_id))
        assert get_image(rbd_lab, image_id) is None
        for site in ("central", "dcn0"):
            assert image_id not in rbd(rbd_lab, site, "ls", "images").split()
        assert image_id in rbd(rbd_lab, "dcn1", "ls", "images").split()  # its agent is away
        [pending] = pending_deletes(rbd_lab, image_id)
        assert pending["site"] == "dcn1" and pending["last_error"] is None
        status, body = api(rbd_lab, "GET", "/edgesync/v1/sites")
        assert {s["name"]: s["pending_deletes"] for s in body["sites"]}["dcn1"] >= 1
    finally:
        lab_cli(rbd_lab, "agent", "start", "dcn1")
    deadline = time.monotonic() + 30
    while pending_deletes(rbd_lab, image_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pending_deletes(rbd_lab, image_id) == [], "the returning agent never confirmed the delete"
    assert image_id not in rbd(rbd_lab, "dcn1", "ls", "images").split()
