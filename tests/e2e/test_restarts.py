"""The hub killed mid-copy, and the broker restarted mid-copy, on the rbd lab
with agents: hub, Mosquitto, one agent per edge site and three Ceph clusters,
each its own process, driven through the real glance CLI and `edgesync lab`.

The edge agents are throttled for this module (the per-site bandwidth limit
in their site files), so that a copy is still running when the test acts;
the tests wait for what they can observe (progress, a dropped connection),
never for a time.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.lab import (
    ImageFile,
    Lab,
    api,
    check,
    glance,
    hub_log_tail,
    image_tasks,
    lab_cli,
    make_striped_raw,
    parse_dict_table,
    stores_of,
    urlopen,
    wait_for_image,
    wait_import_done,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
EDGES = ("dcn0", "dcn1")
# 40 Mbit/s is 5 MB/s: a copy of BIG's 48 MiB of data takes about 10 s.
BANDWIDTH_LIMIT_MBPS = 40
COPY_TIMEOUT_S = 120.0


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def throttled(rbd_agents_lab: Lab) -> Iterator[Lab]:
    """The lab with its edge agents pulling at BANDWIDTH_LIMIT_MBPS; put back after."""
    files = {site: Path(rbd_agents_lab["lab_dir"]) / "sites" / f"{site}.toml" for site in EDGES}
    originals = {site: path.read_text() for site, path in files.items()}
    try:
        for site, path in files.items():
            path.write_text(originals[site].replace(
                "[agent]\n", f"[agent]\nbandwidth_limit_mbps = {BANDWIDTH_LIMIT_MBPS}\n", 1))
            _restart_agent(rbd_agents_lab, site)
        yield rbd_agents_lab
    finally:
        for site, path in files.items():
            path.write_text(originals[site])
            _restart_agent(rbd_agents_lab, site)


def _restart_agent(lab: Lab, site: str) -> None:
    lab_cli(lab, "agent", "stop", site)
    lab_cli(lab, "agent", "start", site)


# --- helpers ---------------------------------------------------------------------------


def import_to_central(lab: Lab, image: ImageFile, name: str) -> str:
    out = check(glance(lab, "image-create-via-import", "--disk-format", "raw", "--container-format", "bare",
                       "--name", name, "--file", str(image.path), "--stores", "central", timeout=180))
    image_id = parse_dict_table(out.stdout)["id"]
    assert wait_import_done(lab, image_id, timeout=COPY_TIMEOUT_S)["status"] == "active"
    return image_id


def copy_to_edges(lab: Lab, image_id: str) -> None:
    check(glance(lab, "image-import", image_id, "--stores", ",".join(EDGES), "--import-method", "copy-image"))


def wait_progress(lab: Lab, image_id: str) -> dict[str, Any]:
    """Until an edge copy has moved bytes (the hub records agents' progress)."""
    deadline = time.monotonic() + COPY_TIMEOUT_S
    while time.monotonic() < deadline:
        task = image_tasks(lab, image_id)[0]
        jobs = task["result"]["stores"]
        if any(jobs[s]["bytes_done"] > 0 for s in EDGES):
            assert all(jobs[s]["state"] == "running" for s in EDGES), jobs  # mid-copy, not after
            return task
        time.sleep(0.1)
    raise AssertionError(f"no progress on {image_id} in {COPY_TIMEOUT_S:.0f} s:\n{hub_log_tail(lab)}")


def wait_copied(lab: Lab, image_id: str) -> dict[str, Any]:
    """Until the copy task finished; it must have succeeded at both edges."""
    image = wait_for_image(lab, image_id, lambda i: "os_glance_import_task" not in i,
                           what="the end of the copy task", timeout=COPY_TIMEOUT_S)
    assert image["os_glance_importing_to_stores"] == "", image
    assert image["os_glance_failed_import"] == "", (image, image_tasks(lab, image_id)[0])
    assert image["status"] == "active" and stores_of(image) == {"central", *EDGES}, image
    return image


def assert_identical_copies(lab: Lab, image_id: str, image: ImageFile) -> None:
    shown = api(lab, "GET", f"/v2/images/{image_id}")[1]
    by_store = {loc["metadata"]["store"]: loc["url"] for loc in shown["locations"]}
    for site in EDGES:
        assert by_store[site] == f"rbd://{lab['sites'][site]['fsid']}/images/{image_id}/snap"
        assert exported_sha512(lab, site, image_id) == image.sha512, f"{site}: copy differs"


def exported_sha512(lab: Lab, site: str, image_id: str) -> str:
    conf = lab["sites"][site]["ceph_conf"]
    export = subprocess.Popen(["rbd", "-c", conf, "export", f"images/{image_id}@snap", "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    with export:
        digest = subprocess.run(["sha512sum"], stdin=export.stdout, capture_output=True, text=True,
                                check=True, timeout=120)
    assert export.returncode == 0
    return digest.stdout.split()[0]


def agent_health(lab: Lab, site: str) -> dict[str, Any]:
    with urlopen(lab, f"{lab['sites'][site]['agent_url']}/healthz", 5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def wait_agents_disconnected(lab: Lab) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(agent_health(lab, s)["broker"] == "disconnected" for s in EDGES):
            return
        time.sleep(0.1)
    raise AssertionError("the agents never noticed the broker had stopped")


@pytest.fixture
def big(tmp_path: Path) -> ImageFile:
    """96 MiB: 4 MiB of data, 4 MiB of hole, 12 times. New data for every
    test: edges that held an earlier test's copy of the same bytes would
    make this one from their own blocks in a second, and no test would see
    a copy under way."""
    return make_striped_raw(tmp_path / "big.raw", stripes=24)


# --- the tests -------------------------------------------------------------------------


def test_hub_killed_mid_copy_reattaches_and_the_copy_completes(throttled: Lab, big: ImageFile) -> None:
    lab = throttled
    image_id = import_to_central(lab, big, "hub-killed-mid-copy")
    copy_to_edges(lab, image_id)
    task = wait_progress(lab, image_id)
    lab_cli(lab, "hub", "stop", "--kill")
    lab_cli(lab, "hub", "start")
    # The restarted hub re-attached to the copies rather than failing them…
    assert api(lab, "GET", f"/v2/images/{image_id}")[1]["os_glance_failed_import"] == ""
    log = Path(lab["hub_log"]).read_text(errors="replace")
    assert re.search(rf"recovery: task {task['id']} .* goes on", log), hub_log_tail(lab)
    # …and the agents finish them: the same task, with both edges' own copies.
    wait_copied(lab, image_id)
    after = image_tasks(lab, image_id)[0]
    assert after["id"] == task["id"] and after["status"] == "success", after
    assert_identical_copies(lab, image_id, big)


def test_broker_restarted_mid_copy_loses_no_event_and_no_command(
        throttled: Lab, big: ImageFile, tmp_path: Path) -> None:
    lab = throttled
    first = import_to_central(lab, big, "broker-restart-mid-copy")
    small = make_striped_raw(tmp_path / "small.raw", stripes=2)
    second = import_to_central(lab, small, "copied-while-the-broker-is-down")
    copy_to_edges(lab, first)
    wait_progress(lab, first)
    lab_cli(lab, "broker", "stop")
    try:
        # A command given while the broker is down waits in the hub's outbox.
        copy_to_edges(lab, second)
        wait_agents_disconnected(lab)
    finally:
        lab_cli(lab, "broker", "start")
    wait_copied(lab, first)
    wait_copied(lab, second)
    assert_identical_copies(lab, first, big)
    assert_identical_copies(lab, second, small)
