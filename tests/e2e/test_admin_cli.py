"""The admin CLI (`edgesync image …`, `sites`, `tasks`) as a subprocess against
the session's running lab.

Images are set up through the hub's HTTP API; every command under test runs
as its own process, the way an operator runs it, and what it did is checked
on disk and through the API. A site fails for real: its store directory is
replaced by a regular file (with agents too: the agent writes there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.lab import (
    SITES,
    ImageFile,
    Lab,
    api,
    assert_copies,
    broken_store,
    get_image,
    make_striped_raw,
    stores_of,
    urlopen,
    wait_import_done,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120.0


def edgesync(lab: Lab, *args: str, env: dict[str, str] | None = None,
             lab_dir: bool = True) -> subprocess.CompletedProcess[str]:
    """`edgesync ARGS --lab-dir LAB` (or, with `lab_dir=False`, only `env`)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "EDGESYNC_"))}
    argv = [sys.executable, "-m", "edgesync", *args] + (["--lab-dir", str(lab["lab_dir"])] if lab_dir else [])
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT,
                          env={**clean, **(env or {})}, timeout=CLI_TIMEOUT_S)


def ran(proc: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (
        f"{' '.join(proc.args[3:])} exited {proc.returncode}, expected {code}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


# --- images, set up through the API and deleted afterwards ----------------------------------


@pytest.fixture
def raw(tmp_path: Path) -> ImageFile:
    """32 MiB, 16 MiB of data; new data for every test, so that no copy is
    made in a moment from the blocks an earlier test left at the site."""
    return make_striped_raw(tmp_path / "striped.raw", 8)


@pytest.fixture
def image_id(file_lab: Lab, raw: ImageFile) -> Iterator[str]:
    """An active image in central only."""
    image_id = str(uuid.uuid4())
    status, body = api(file_lab, "POST", "/v2/images", body={
        "id": image_id, "name": f"admin-{image_id[:8]}", "disk_format": "raw", "container_format": "bare"})
    assert status == 201, body
    try:
        _stage(file_lab, image_id, raw.path)
        status, body = api(file_lab, "POST", f"/v2/images/{image_id}/import",
                           body={"method": {"name": "glance-direct"}, "stores": ["central"]})
        assert status == 202, body
        assert wait_import_done(file_lab, image_id)["status"] == "active"
        yield image_id
    finally:
        if (get_image(file_lab, image_id) or {}).get("os_glance_import_task"):
            wait_import_done(file_lab, image_id)
        api(file_lab, "DELETE", f"/v2/images/{image_id}")


def _stage(lab: Lab, image_id: str, path: Path) -> None:
    with path.open("rb") as data:
        req = urllib.request.Request(f"{lab['hub_url']}/v2/images/{image_id}/stage", data=data, method="PUT")
        req.add_header("X-Auth-Token", lab["admin_token"])
        req.add_header("Content-Type", "application/octet-stream")
        req.add_header("Content-Length", str(path.stat().st_size))
        with urlopen(lab, req, 60) as resp:
            assert resp.status == 204


def _lines(text: str, store: str) -> list[str]:
    return [line for line in text.splitlines() if line.split()[:1] == [store]]


# --- image copy --------------------------------------------------------------------------


def test_copy_wait_shows_each_stores_progress_and_succeeds(file_lab: Lab, raw: ImageFile, image_id: str) -> None:
    proc = ran(edgesync(file_lab, "image", "copy", image_id, "--stores", "dcn0,dcn1", "--wait"))
    assert "\x1b[" not in proc.stdout  # not a terminal: plain lines, no cursor movement
    for store in ("dcn0", "dcn1"):
        last = _lines(proc.stdout, store)[-1]
        # the data (16 MiB), not the logical size (32 MiB): holes are never copied
        assert last.split()[1] == "done" and "16.0 MiB in" in last and "MiB/s" in last, proc.stdout
    assert f"copied admin-{image_id[:8]} ({image_id}) to dcn0, dcn1" in proc.stdout
    assert stores_of(get_image(file_lab, image_id) or {}) == set(SITES)
    assert_copies(file_lab, image_id, raw, set(SITES))


def test_no_allow_failure_wait_exits_1_when_a_site_fails(file_lab: Lab, raw: ImageFile, image_id: str) -> None:
    with broken_store(file_lab, "dcn1"):
        proc = ran(edgesync(file_lab, "image", "copy", image_id, "--stores", "dcn0,dcn1",
                            "--no-allow-failure", "--wait"), code=1)
    assert "every store must succeed" in proc.stdout
    assert "Not a directory" in _lines(proc.stdout, "dcn1")[-1] and _lines(proc.stdout, "dcn1")[-1].split()[1] == "failed"
    assert "copy of" in proc.stdout and "failed (all_stores_must_succeed" in proc.stdout
    image = get_image(file_lab, image_id) or {}
    assert stores_of(image) == {"central"} and image["os_glance_failed_import"] == "dcn1"
    assert_copies(file_lab, image_id, raw, {"central"})  # dcn0's copy was rolled back


def test_allow_failure_wait_json_says_partial_and_exits_3(file_lab: Lab, raw: ImageFile, image_id: str) -> None:
    with broken_store(file_lab, "dcn1"):
        proc = ran(edgesync(file_lab, "image", "copy", image_id, "--stores", "dcn0,dcn1", "--wait", "--json"),
                   code=3)
    result = json.loads(proc.stdout)
    assert result["outcome"] == "partial" and result["image_stores"] == ["central", "dcn0"]
    jobs = result["task"]["result"]["stores"]
    assert (jobs["dcn0"]["state"], jobs["dcn1"]["state"]) == ("done", "failed")
    assert jobs["dcn0"]["bytes_done"] == jobs["dcn0"]["bytes_total"] == raw.data_bytes
    assert_copies(file_lab, image_id, raw, {"central", "dcn0"})


def test_copy_without_wait_starts_it_and_a_second_copy_is_refused(file_lab: Lab, image_id: str) -> None:
    started = json.loads(ran(edgesync(file_lab, "image", "copy", image_id, "--all-stores", "--json")).stdout)
    assert started["outcome"] == "started" and sorted(started["stores"]) == ["dcn0", "dcn1"]
    image = wait_import_done(file_lab, image_id)
    assert stores_of(image) == set(SITES)
    again = ran(edgesync(file_lab, "image", "copy", image_id, "--stores", "dcn0"), code=2)
    assert "Bad Request (400)" in again.stderr and "already present at store 'dcn0'" in again.stderr
    nothing = ran(edgesync(file_lab, "image", "copy", image_id, "--all-stores"))
    assert "nothing to copy" in nothing.stdout


# --- show, delete-from-store, sites, tasks --------------------------------------------------


def test_show_delete_from_store_and_tasks(file_lab: Lab, raw: ImageFile, image_id: str) -> None:
    ran(edgesync(file_lab, "image", "copy", image_id, "--stores", "dcn0", "--wait"))
    shown = json.loads(ran(edgesync(file_lab, "image", "show", image_id, "--json")).stdout)
    states = {r["store"]: r["state"] for r in shown["stores"]}
    assert states == {"central": "present", "dcn0": "present", "dcn1": "absent"}
    dcn0 = next(r for r in shown["stores"] if r["store"] == "dcn0")
    assert image_id in dcn0["location"]
    text = ran(edgesync(file_lab, "image", "show", f"admin-{image_id[:8]}")).stdout  # by name
    assert f"id      {image_id}" in text and _lines(text, "dcn1")[0].split()[1] == "absent"

    gone = ran(edgesync(file_lab, "image", "delete-from-store", image_id, "--store", "dcn0"))
    assert "image stores now: central" in gone.stdout
    assert_copies(file_lab, image_id, raw, {"central"})
    refused = ran(edgesync(file_lab, "image", "delete-from-store", image_id, "--store", "central"), code=2)
    assert "Forbidden (403)" in refused.stderr and "central" in refused.stderr

    listed = json.loads(ran(edgesync(file_lab, "tasks", "--image", image_id, "--json")).stdout)["tasks"]
    assert [t["input"]["import_req"]["method"]["name"] for t in listed] == ["copy-image", "glance-direct"]
    recent = ran(edgesync(file_lab, "tasks", "--limit", "5")).stdout
    assert any(line.split()[1:3] == [listed[0]["id"], image_id] and "dcn0 done" in line
               for line in recent.splitlines()[1:])


def test_sites_with_the_url_and_token_from_the_environment(file_lab: Lab) -> None:
    env = {"EDGESYNC_URL": file_lab["hub_url"], "EDGESYNC_TOKEN": file_lab["admin_token"],
           **({"EDGESYNC_CACERT": file_lab["ca_file"]} if file_lab.get("ca_file") else {})}
    sites = json.loads(ran(edgesync(file_lab, "sites", "--json", env=env, lab_dir=False)).stdout)["sites"]
    assert [s["name"] for s in sites] == SITES
    for site in sites:
        assert site["up"] is True and site["availability_zone"] == site["name"], site
        assert site["free_bytes"] > 0 and site["in_flight"] == []
    text = ran(edgesync(file_lab, "sites", env=env, lab_dir=False)).stdout.splitlines()
    assert text[0].split()[:3] == ["SITE", "ROLE", "AZ"]
    assert [line.split()[0] for line in text[1:]] == SITES and all(" up " in line for line in text[1:])


def test_api_errors_exit_2_with_the_hubs_message(file_lab: Lab) -> None:
    missing = str(uuid.uuid4())
    proc = ran(edgesync(file_lab, "image", "show", missing), code=2)
    assert f"Not Found (404): No image found with ID {missing}" in proc.stderr
    env = {"EDGESYNC_URL": file_lab["hub_url"], "EDGESYNC_TOKEN": "wrong",
           **({"EDGESYNC_CACERT": file_lab["ca_file"]} if file_lab.get("ca_file") else {})}
    proc = ran(edgesync(file_lab, "tasks", env=env, lab_dir=False), code=2)
    assert "Unauthorized (401)" in proc.stderr
