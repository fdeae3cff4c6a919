"""The WAN lab (`lab up --wan`): copies cross real shaped links between
network namespaces, and links cut in the middle of a copy.

Bytes on a link are read from the switch's end of it (`lab.link_bytes`), so
"fetched only what it lacked" is what crossed the wire, not what a daemon
says it sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgesync import lab as lab_module
from edgesync.lab import ceph, wan
from edgesync.lab.errors import LabError
from tests.e2e.test_agents_lab import (
    assert_rbd_copies,
    central_image,
    copy_to,
    job,
    pool_images,
    site_view,
    wait_until,
)
from tests.e2e.test_rbd_lab import in_site
from tests.fixtures.lab import SITES, ImageFile, Lab, check, make_striped_raw, stores_of, wait_import_done
from tests.fixtures.wan import WAN_OFFLINE_DEADLINE_S, WAN_RATE, lab_netns

pytestmark = [pytest.mark.e2e, pytest.mark.ceph, pytest.mark.wan]

EDGES = SITES[1:]
MiB = 1024 * 1024
# 4 stripes of 4 MiB, every other one data: 8 MiB of data, about 3.5 s across
# a 20 Mbit/s link, long enough to cut in the middle.
STRIPES = 4
WAIT_S = 60.0
WAIT_OFFLINE_S = WAN_OFFLINE_DEADLINE_S + WAIT_S
CUT_SHORT_S = 7.0  # longer than the hub's 5 s heartbeat staleness, shorter than the offline deadline


@pytest.fixture
def source(tmp_path: Path) -> ImageFile:
    """Fresh random data for each test: an edge dedups blocks it already holds,
    so a copy of data an earlier test left at the site would cross no link."""
    return make_striped_raw(tmp_path / "wan.raw", stripes=STRIPES)


@pytest.fixture
def created() -> Iterator[list[str]]:
    yield []  # the images live on with the session's lab; nothing else uses them


def link_bytes(lab: Lab, site: str) -> int:
    """Bytes the switch has sent down `site`'s link so far."""
    return asyncio.run(lab_module.link_bytes(Path(lab["lab_dir"]), site))["to_site"]


def set_link(lab: Lab, site: str, *, up: bool) -> None:
    done = subprocess.run([sys.executable, "-m", "edgesync", "lab", "wan", "heal" if up else "cut", site,
                           "--dir", str(lab["lab_dir"])], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def pid_netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def wait_bytes(lab: Lab, site: str, since: int, at_least: int) -> int:
    return wait_until(lambda: (n := link_bytes(lab, site) - since) >= at_least and n,
                      f"{at_least} bytes to cross {site}'s link", timeout=WAIT_S)


def test_every_site_runs_in_its_own_namespace_and_a_copy_crosses_each_edge_link(
        wan_lab: Lab, source: ImageFile, created: list[str]) -> None:
    lab, lab_dir = wan_lab, Path(wan_lab["lab_dir"])
    sites = lab["sites"]
    assert {s["rate"] for name, s in sites.items() if name != "central"} == {WAN_RATE}
    assert sites["central"]["rate"] is None  # the data centre's link is not the one shaped
    assert len({s["netns"] for s in sites.values()}) == len({s["address"] for s in sites.values()}) == 3
    assert lab["hub_url"].startswith("https://127.0.0.1:")  # reachable from the machine's own namespace
    central_ns = netns_inode(sites["central"]["netns"])
    assert pid_netns_inode(lab["hub_pid"]) == central_ns
    assert pid_netns_inode(int((lab_dir / "mosquitto" / "mosquitto.pid").read_text())) == central_ns
    for site in SITES:
        for daemon in ("mon.a", "osd.0"):
            pid = int((lab_dir / "ceph" / site / "run" / f"{daemon}.pid").read_text())
            assert pid_netns_inode(pid) == netns_inode(sites[site]["netns"]), (site, daemon)
    for site in EDGES:
        assert pid_netns_inode(sites[site]["agent_pid"]) == netns_inode(sites[site]["netns"])
    # Each cluster's ceph.conf works from another site's namespace, across the links.
    for here, there in (("dcn1", "central"), ("central", "dcn0")):
        listed = subprocess.run([*in_site(lab, here), "rbd", "-c", sites[there]["ceph_conf"], "ls", "images"],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, (here, there, listed.stderr)

    image_id = central_image(lab, created, source)
    before = {site: link_bytes(lab, site) for site in EDGES}
    check(copy_to(lab, image_id, ",".join(EDGES)))
    image = wait_import_done(lab, image_id, timeout=WAIT_S)

    assert image["os_glance_failed_import"] == "" and stores_of(image) == set(SITES), image
    assert_rbd_copies(lab, image_id, source, set(SITES))
    for site in EDGES:  # the data crossed the site's link, the holes did not
        crossed = link_bytes(lab, site) - before[site]
        assert source.data_bytes <= crossed <= source.data_bytes * 1.1 + MiB, (site, crossed)


def test_a_site_cut_mid_copy_resumes_when_healed_and_fetches_only_what_it_lacks(
        wan_lab: Lab, source: ImageFile, created: list[str]) -> None:
    lab = wan_lab
    image_id = central_image(lab, created, source)
    before = link_bytes(lab, "dcn0")
    check(copy_to(lab, image_id, "dcn0"))
    at_cut = wait_bytes(lab, "dcn0", before, source.data_bytes * 2 // 5)
    set_link(lab, "dcn0", up=False)
    try:
        assert at_cut < source.data_bytes * 4 // 5, "the copy was nearly done before the cut"
        wait_until(lambda: not site_view(lab, "dcn0")["up"], "the hub to see dcn0 down", timeout=WAIT_S)
        assert job(lab, image_id, "dcn0")["state"] == "running"
        time.sleep(max(0.0, CUT_SHORT_S - 5.0))
    finally:
        set_link(lab, "dcn0", up=True)
    image = wait_import_done(lab, image_id, timeout=WAIT_S + 60)

    assert image["os_glance_failed_import"] == "" and stores_of(image) >= {"central", "dcn0"}, image
    assert job(lab, image_id, "dcn0")["state"] == "done"
    assert_rbd_copies(lab, image_id, source, {"central", "dcn0"})
    crossed = link_bytes(lab, "dcn0") - before
    # Starting again would have sent what had crossed before the cut a second time.
    assert source.data_bytes <= crossed < source.data_bytes + at_cut // 2, (crossed, at_cut)


def test_a_cut_outlasting_the_offline_deadline_fails_that_store_with_site_offline(
        wan_lab: Lab, source: ImageFile, created: list[str]) -> None:
    lab = wan_lab
    image_id = central_image(lab, created, source)
    before = link_bytes(lab, "dcn1")
    check(copy_to(lab, image_id, "dcn0,dcn1", allow_failure=True))
    wait_bytes(lab, "dcn1", before, source.data_bytes // 5)
    set_link(lab, "dcn1", up=False)
    try:
        # dcn1 cut off, broker and all, does not hold up dcn0's copy.
        wait_until(lambda: job(lab, image_id, "dcn1")["state"] == "running"
                   and job(lab, image_id, "dcn0")["state"] == "done", "dcn0's copy while dcn1 is cut", timeout=WAIT_S)
        image = wait_import_done(lab, image_id, timeout=WAIT_OFFLINE_S)
    finally:
        set_link(lab, "dcn1", up=True)

    assert image["os_glance_failed_import"] == "dcn1" and stores_of(image) == {"central", "dcn0"}, image
    assert job(lab, image_id, "dcn1")["state"] == "failed"
    assert job(lab, image_id, "dcn1")["reason"].startswith("site offline"), job(lab, image_id, "dcn1")
    assert job(lab, image_id, "dcn0")["state"] == "done"
    # Back on the WAN, dcn1 keeps nothing of the copy the catalog gave up on.
    wait_until(lambda: site_view(lab, "dcn1")["up"], "the hub to see dcn1 up again", timeout=WAIT_S)
    wait_until(lambda: not {image_id, f"{image_id}.partial"} & pool_images(lab, "dcn1"),
               "dcn1 to drop the copy that failed", timeout=WAIT_S + 60)
    assert_rbd_copies(lab, image_id, source, {"central", "dcn0"})



def test_a_site_the_broker_cant_reach_does_not_hold_up_the_others_and_catches_up_when_healed(
        wan_lab: Lab, source: ImageFile, created: list[str]) -> None:
    """Cut before the copy starts, dcn1 can't hear its command (its broker
    connection crosses the cut link): dcn0 is copied meanwhile, and dcn1's
    copy, waiting rather than failed, runs once the link is back within the
    offline deadline."""
    lab = wan_lab
    image_id = central_image(lab, created, source)
    set_link(lab, "dcn1", up=False)
    try:
        cut_at = link_bytes(lab, "dcn1")
        check(copy_to(lab, image_id, "dcn0,dcn1"))
        wait_until(lambda: job(lab, image_id, "dcn0")["state"] == "done", "dcn0's copy while dcn1 is cut",
                   timeout=WAIT_S)
        waiting = job(lab, image_id, "dcn1")
        assert waiting["state"] in ("pending", "running") and waiting["bytes_done"] == 0, waiting
        assert link_bytes(lab, "dcn1") == cut_at  # nothing reached dcn1: not the command, not a byte of data
        wait_until(lambda: not site_view(lab, "dcn1")["up"], "the hub to see dcn1 down", timeout=WAIT_S)
    finally:
        set_link(lab, "dcn1", up=True)
    image = wait_import_done(lab, image_id, timeout=WAIT_OFFLINE_S)

    assert image["os_glance_failed_import"] == "" and stores_of(image) == set(SITES), image
    assert job(lab, image_id, "dcn1")["state"] == "done"
    assert_rbd_copies(lab, image_id, source, set(SITES))


async def test_a_wan_lab_whose_agent_fails_at_start_removes_its_namespaces(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    (lab_dir / "stores").mkdir(parents=True)
    (lab_dir / "stores" / "dcn1").write_text("not a directory\n")  # dcn1's agent can't open its store
    with pytest.raises(LabError, match="agent-dcn1 exited during start-up"):
        await lab_module.up(lab_dir, store="file", sites=SITES, wan="50mbit")

    info = lab_module.read_info(lab_dir)
    assert info["wan"] and lab_netns(info) == set()
    assert info["hub_pid"] is None


def test_wan_rates_are_checked_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="'fast' is not a rate"):
        asyncio.run(lab_module.up(tmp_path / "lab", wan="fast"))
    with pytest.raises(LabError, match="no site 'dcn9'"):
        asyncio.run(lab_module.up(tmp_path / "lab", wan="10mbit,dcn9=1mbit"))
    assert not (tmp_path / "lab").exists()


def test_an_edge_osd_stopped_mid_copy_makes_the_copy_wait_and_complete_when_it_is_back(
        wan_lab: Lab, source: ImageFile, created: list[str]) -> None:
    lab, lab_dir = wan_lab, Path(wan_lab["lab_dir"])
    image_id = central_image(lab, created, source)
    before = link_bytes(lab, "dcn0")
    check(copy_to(lab, image_id, "dcn0"))
    wait_bytes(lab, "dcn0", before, source.data_bytes // 4)
    osd = int((lab_dir / "ceph" / "dcn0" / "run" / "osd.0.pid").read_text())
    os.kill(osd, signal.SIGKILL)  # as a crash stops it
    try:
        time.sleep(CUT_SHORT_S - 2.0)
        assert job(lab, image_id, "dcn0")["state"] == "running"  # waiting, not failed
    finally:  # back on its own address, in its namespace: what a restarted OSD does
        asyncio.run(ceph.up(lab_dir / "ceph", ["dcn0"], netns=dict(wan.load(lab_dir))))
    image = wait_import_done(lab, image_id, timeout=WAIT_S + 60)

    assert image["os_glance_failed_import"] == "" and job(lab, image_id, "dcn0")["state"] == "done", image
    assert_rbd_copies(lab, image_id, source, {"central", "dcn0"})
