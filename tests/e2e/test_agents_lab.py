"""The DCN rules and the faults of a WAN, with the hub and the site agents as
separate processes: `edgesync lab up --store rbd --agents` (the session's
`rbd_agents_lab`), three real Ceph clusters, the lab's Mosquitto.

Every command under test is a real client or the real CLI (`glance`,
`edgesync agent register`, `edgesync agent`, `edgesync lab agent stop|start`);
the hub's API, the clusters (`rbd`, `ceph`) and the daemons' logs are read to
check what happened. Faults are made for real: a site's cephx user loses its
write caps, an agent is stopped, SIGKILLed or started with the wrong
availability zone, the central cluster is paused (`ceph osd pause`), and the
hub, started again with its test-only fault hook armed for one image,
corrupts ranges of it. Each test puts back what it changed: the lab is shared.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgesync.bus import BusClient, BusError, BusSettings, DoneEvent, ProgressEvent, SiteState, SiteStatus, topics
from edgesync.lab import mosquitto
from edgesync.transfer.wire import CORRUPT_CHUNKS_ENV
from tests.e2e.test_rbd_lab import exported_sha512, rbd, snap_protected, used_bytes
from tests.fixtures.broker import Inbox, unique_id
from tests.fixtures.lab import (
    AGENTS_OFFLINE_DEADLINE_S,
    ImageFile,
    Lab,
    api,
    check,
    get_image,
    glance,
    image_tasks,
    lab_cli,
    make_striped_raw,
    status_of,
    stores_of,
    urlopen,
    wait_import_done,
)

pytestmark = [pytest.mark.e2e, pytest.mark.ceph]

REPO = Path(__file__).resolve().parents[2]
EDGES = ("dcn0", "dcn1")
WAIT_S = 60.0
CORRUPT_RANGES = 2


# --- the lab's processes ----------------------------------------------------------------


def edgesync(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgesync", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def lab_agent(lab: Lab, action: str, site: str, *flags: str) -> None:
    """`edgesync lab agent stop|start SITE` (start returns once the agent serves)."""
    lab_cli(lab, "agent", action, site, *flags)


def restart_agent(lab: Lab, site: str) -> None:
    lab_agent(lab, "stop", site)
    lab_agent(lab, "start", site)


def agent_log(lab: Lab, site: str) -> str:
    return (Path(lab["lab_dir"]) / "logs" / f"agent-{site}.log").read_text(errors="replace")


def hub_log(lab: Lab) -> str:
    return Path(lab["hub_log"]).read_text(errors="replace")


def site_file(lab: Lab, site: str) -> Path:
    return Path(lab["lab_dir"]) / "sites" / f"{site}.toml"


def ceph(lab: Lab, site: str, *args: str) -> str:
    out = subprocess.run(["ceph", "-c", lab["sites"][site]["ceph_conf"], *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"ceph {' '.join(args)}: {out.stderr}"
    return out.stdout


def pool_images(lab: Lab, site: str) -> set[str]:
    return set(rbd(lab, site, "ls", "images").split())


def site_view(lab: Lab, site: str) -> dict[str, Any]:
    status, body = api(lab, "GET", "/edgesync/v1/sites")
    assert status == 200, body
    return next(s for s in body["sites"] if s["name"] == site)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer := predicate():
            return answer
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting ({timeout:.0f} s) for {what}")


def site_down(lab: Lab, site: str) -> None:
    wait_until(lambda: not site_view(lab, site)["up"], f"the hub to see {site} down")


def site_up(lab: Lab, site: str) -> None:
    wait_until(lambda: (v := site_view(lab, site))["up"] and v["problem"] is None, f"the hub to see {site} up")


@contextmanager
def agent_settings(lab: Lab, site: str, **settings: Any) -> Iterator[None]:
    """Restart `site`'s agent with extra [agent] settings. On the way out the
    site file is as it was, and its agent is restarted with it (or started,
    if the test left it stopped)."""
    path = site_file(lab, site)
    original = path.read_text()
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    path.write_text(original.replace("[agent]\n", "[agent]\n" + extra, 1))
    try:
        restart_agent(lab, site)
        yield
    finally:
        path.write_text(original)
        restart_agent(lab, site)


@contextmanager
def write_caps_revoked(lab: Lab, site: str) -> Iterator[None]:
    """The site's cephx user may read its pool but no longer write it (its
    agent reconnects: a connection keeps the caps it authenticated with)."""
    client = f"client.{lab['sites'][site]['ceph_user']}"
    caps = json.loads(ceph(lab, site, "auth", "get", client, "--format", "json"))[0]["caps"]
    ceph(lab, site, "auth", "caps", client, "mon", caps["mon"], "osd", "profile rbd-read-only pool=images")
    try:
        restart_agent(lab, site)
        yield
    finally:
        ceph(lab, site, "auth", "caps", client, *[x for kv in caps.items() for x in kv])
        restart_agent(lab, site)


@contextmanager
def cluster_paused(lab: Lab, site: str) -> Iterator[None]:
    """Every read and write on the site's cluster waits (`ceph osd pause`)."""
    ceph(lab, site, "osd", "pause")
    try:
        yield
    finally:
        ceph(lab, site, "osd", "unpause")


# --- images --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageFile]:
    root = tmp_path_factory.mktemp("agents-images")
    return {
        "small": make_striped_raw(root / "small.raw", 8),  # 32 MiB, 16 MiB of data
        "slow": make_striped_raw(root / "slow.raw", 16),  # 64 MiB, 32 MiB of data
    }


@pytest.fixture
def created(rbd_agents_lab: Lab) -> Iterator[list[str]]:
    """Ids of the images a test made; deleted (every copy, through the agents) afterwards."""
    ids: list[str] = []
    yield ids
    for image_id in ids:
        image = get_image(rbd_agents_lab, image_id)
        if image is None:
            continue
        if "os_glance_import_task" in image:
            wait_import_done(rbd_agents_lab, image_id, timeout=WAIT_S)
        status, body = api(rbd_agents_lab, "DELETE", f"/v2/images/{image_id}", timeout=WAIT_S)
        assert status in (204, 404), f"cleanup of {image_id}: {status} {body}"


def central_image(lab: Lab, ids: list[str], source: ImageFile, image_id: str | None = None) -> str:
    """An active image in central, made through the API (the glance CLI is
    what the tests drive for the copies; here it would only cost seconds)."""
    image_id = image_id or str(uuid.uuid4())
    ids.append(image_id)
    status, body = api(lab, "POST", "/v2/images", body={
        "id": image_id, "name": f"agents-{image_id[:8]}", "disk_format": "raw", "container_format": "bare"})
    assert status == 201, body
    with source.path.open("rb") as data:
        stage = urllib.request.Request(f"{lab['hub_url']}/v2/images/{image_id}/stage", data=data, method="PUT",
                                       headers={"X-Auth-Token": lab["admin_token"],
                                                "Content-Type": "application/octet-stream",
                                                "Content-Length": str(source.size)})
        with urlopen(lab, stage, WAIT_S) as answer:
            assert answer.status == 204
    status, body = api(lab, "POST", f"/v2/images/{image_id}/import",
                       body={"method": {"name": "glance-direct"}, "stores": ["central"]})
    assert status == 202, body
    assert wait_import_done(lab, image_id, timeout=WAIT_S)["status"] == "active"
    return image_id


def copy_to(lab: Lab, image_id: str, stores: str, *, allow_failure: bool = True,
            debug: bool = False) -> subprocess.CompletedProcess[str]:
    return glance(lab, "image-import", image_id, "--import-method", "copy-image", "--stores", stores,
                  "--allow-failure", str(allow_failure), debug=debug)


def latest_task(lab: Lab, image_id: str) -> dict[str, Any]:
    return max(image_tasks(lab, image_id), key=lambda t: (t["created_at"], t["updated_at"]))


def job(lab: Lab, image_id: str, store: str) -> dict[str, Any]:
    return latest_task(lab, image_id)["result"]["stores"][store]  # type: ignore[no-any-return]


def assert_rbd_copies(lab: Lab, image_id: str, source: ImageFile, sites: set[str]) -> None:
    """Exactly `sites` hold a published copy (protected `snap`), and the
    others nothing of it, not even a partial copy; the edge copies are sparse
    and byte-identical (central's was checked by the import that made it)."""
    for site in lab["sites"]:
        names = pool_images(lab, site)
        assert f"{image_id}.partial" not in names, f"{site} kept a partial copy of {image_id}"
        if site not in sites:
            assert image_id not in names, f"{site} holds a copy of {image_id} the catalog does not list"
            continue
        assert image_id in names and snap_protected(lab, site, image_id), f"{site}: no published copy"
        if site != "central":
            assert_identical_and_sparse(lab, site, image_id, source)


def assert_identical_and_sparse(lab: Lab, site: str, image_id: str, source: ImageFile) -> None:
    used = used_bytes(lab, site, image_id)
    assert 0.95 * source.data_bytes <= used <= 1.05 * source.data_bytes, f"{site}: {used} bytes used"
    assert exported_sha512(lab, site, image_id) == source.sha512, f"{site}: the copy differs"


def location_urls(lab: Lab, image: dict[str, Any]) -> dict[str, str]:
    by_store = {loc["metadata"]["store"]: loc["url"] for loc in image["locations"]}
    assert len(by_store) == len(image["locations"]), image["locations"]
    return by_store


def rbd_url(lab: Lab, site: str, image_id: str) -> str:
    return f"rbd://{lab['sites'][site]['fsid']}/images/{image_id}/snap"


# --- 1. a copy to two sites ---------------------------------------------------------------


def test_a_copy_to_two_sites_lands_in_each_sites_own_cluster_sparse_and_identical(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    source = images["small"]
    image_id = central_image(rbd_agents_lab, created, source)
    check(copy_to(rbd_agents_lab, image_id, "dcn0,dcn1"))
    image = wait_import_done(rbd_agents_lab, image_id, timeout=WAIT_S)

    assert image["os_glance_failed_import"] == "" and image["os_glance_importing_to_stores"] == ""
    assert location_urls(rbd_agents_lab, image) == {s: rbd_url(rbd_agents_lab, s, image_id) for s in ("central", *EDGES)}
    assert len({rbd_agents_lab["sites"][s]["fsid"] for s in rbd_agents_lab["sites"]}) == 3
    assert_rbd_copies(rbd_agents_lab, image_id, source, {"central", *EDGES})
    task_id = latest_task(rbd_agents_lab, image_id)["id"]
    for site in EDGES:  # each copy was made by that site's agent process
        assert f"task {task_id}-{site}: image {image_id} copied" in agent_log(rbd_agents_lab, site)


# --- 2. allow-failure with one site failing -------------------------------------------------


def test_allow_failure_when_a_sites_store_refuses_writes(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    source = images["small"]
    kept, rolled = (central_image(rbd_agents_lab, created, source) for _ in range(2))
    with write_caps_revoked(rbd_agents_lab, "dcn1"):
        check(copy_to(rbd_agents_lab, kept, "dcn0,dcn1", allow_failure=True))
        check(copy_to(rbd_agents_lab, rolled, "dcn0,dcn1", allow_failure=False))
        kept_image = wait_import_done(rbd_agents_lab, kept, timeout=WAIT_S)
        rolled_image = wait_import_done(rbd_agents_lab, rolled, timeout=WAIT_S)

    # allow failure: the site that worked keeps its copy, the failed one is listed with its reason
    assert kept_image["status"] == "active" and stores_of(kept_image) == {"central", "dcn0"}
    assert kept_image["os_glance_failed_import"] == "dcn1"
    assert job(rbd_agents_lab, kept, "dcn1")["state"] == "failed"
    assert "permission denied" in job(rbd_agents_lab, kept, "dcn1")["reason"]
    assert_rbd_copies(rbd_agents_lab, kept, source, {"central", "dcn0"})
    # all must succeed: dcn0's finished copy is rolled back at dcn0
    assert rolled_image["status"] == "active" and stores_of(rolled_image) == {"central"}
    assert rolled_image["os_glance_failed_import"] == "dcn1"
    assert latest_task(rbd_agents_lab, rolled)["status"] == "failure"
    assert job(rbd_agents_lab, rolled, "dcn0")["state"] == "rolled_back"
    assert_rbd_copies(rbd_agents_lab, rolled, source, {"central"})


def test_allow_failure_when_a_site_stays_offline_past_the_deadline(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    source = images["small"]
    kept, rolled = (central_image(rbd_agents_lab, created, source) for _ in range(2))
    lab_agent(rbd_agents_lab, "stop", "dcn0")
    try:
        site_down(rbd_agents_lab, "dcn0")
        check(copy_to(rbd_agents_lab, kept, "dcn0,dcn1", allow_failure=True))
        check(copy_to(rbd_agents_lab, rolled, "dcn0,dcn1", allow_failure=False))
        kept_image = wait_import_done(rbd_agents_lab, kept, timeout=AGENTS_OFFLINE_DEADLINE_S + WAIT_S)
        rolled_image = wait_import_done(rbd_agents_lab, rolled, timeout=WAIT_S)
    finally:
        lab_agent(rbd_agents_lab, "start", "dcn0")

    assert stores_of(kept_image) == {"central", "dcn1"} and kept_image["os_glance_failed_import"] == "dcn0"
    assert job(rbd_agents_lab, kept, "dcn0")["state"] == "failed"
    assert job(rbd_agents_lab, kept, "dcn0")["reason"].startswith("site offline")
    assert stores_of(rolled_image) == {"central"} and rolled_image["os_glance_failed_import"] == "dcn0"
    assert job(rbd_agents_lab, rolled, "dcn1")["state"] == "rolled_back"
    # Back, dcn0 receives the copies queued for it while it was away: they must
    # not leave it holding copies the catalog doesn't know. The hub serves an
    # agent only the images its live copies name, so the copies it gave up on
    # are refused at their first read and the agent fails them (not retried).
    copies = {image_id: f"{latest_task(rbd_agents_lab, image_id)['id']}-dcn0" for image_id in (kept, rolled)}
    wait_until(lambda: all(f"task {task} failed: " in agent_log(rbd_agents_lab, "dcn0")
                           and f"Image {image_id} is not being copied to site dcn0" in agent_log(rbd_agents_lab, "dcn0")
                           for image_id, task in copies.items()), "dcn0 to be refused the copies it was too late for")
    wait_until(lambda: not pool_images(rbd_agents_lab, "dcn0") & set(copies), "dcn0 to drop the copies it was too late for")
    assert_rbd_copies(rbd_agents_lab, kept, source, {"central", "dcn1"})
    assert_rbd_copies(rbd_agents_lab, rolled, source, {"central"})


# --- 3. an image created at an edge goes to central first -----------------------------------


def test_an_image_created_at_an_edge_goes_to_central_before_any_other_edge(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    source = images["small"]
    image_id = str(uuid.uuid4())
    # A Nova snapshot at dcn1: an RBD image named by its id, with protected snapshot `snap`.
    rbd(rbd_agents_lab, "dcn1", "import", str(source.path), f"images/{image_id}")
    rbd(rbd_agents_lab, "dcn1", "snap", "create", f"images/{image_id}@snap")
    rbd(rbd_agents_lab, "dcn1", "snap", "protect", f"images/{image_id}@snap")
    created.append(image_id)

    with cluster_paused(rbd_agents_lab, "central"):  # the copy to central can't finish meanwhile
        registered = check(edgesync("agent", "register", "--config", str(site_file(rbd_agents_lab, "dcn1")),
                                    f"images/{image_id}@snap", "--name", "nova-snapshot"))
        assert f"{image_id} registered at dcn1 ({rbd_url(rbd_agents_lab, 'dcn1', image_id)})" in registered.stdout
        image = get_image(rbd_agents_lab, image_id)
        assert image is not None and image["stores"] == "dcn1"
        assert image["os_glance_importing_to_stores"] == "central"
        assert image["os_hash_value"] == source.sha512 and image["checksum"] == source.md5
        refused = copy_to(rbd_agents_lab, image_id, "dcn0", debug=True)
        assert status_of(refused, "POST", f"/v2/images/{image_id}/import") == 409
        assert "hub first" in refused.stderr and "central" in refused.stderr

    image = wait_import_done(rbd_agents_lab, image_id, timeout=WAIT_S)
    assert image["os_glance_failed_import"] == ""
    assert location_urls(rbd_agents_lab, image) == {s: rbd_url(rbd_agents_lab, s, image_id) for s in ("dcn1", "central")}
    assert_identical_and_sparse(rbd_agents_lab, "central", image_id, source)  # pulled from dcn1's agent
    check(copy_to(rbd_agents_lab, image_id, "dcn0"))  # central has it: now dcn0 may
    image = wait_import_done(rbd_agents_lab, image_id, timeout=WAIT_S)
    assert stores_of(image) == {"central", *EDGES} and image["os_glance_failed_import"] == ""
    assert_rbd_copies(rbd_agents_lab, image_id, source, {"central", *EDGES})


# --- 4. availability zones ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcn0_file_with(lab: Lab, tmp_path: Path, *, availability_zone: str = "dcn0", extra: str = "") -> Path:
    """dcn0's site file, with another zone, its own state, port and broker client id."""
    text = site_file(lab, "dcn0").read_text()
    text = text.replace('availability_zone = "dcn0"\n', f'availability_zone = "{availability_zone}"\n{extra}', 1)
    text = re.sub(r"(?m)^state_dir = .*$", f"state_dir = {json.dumps(str(tmp_path / 'state'))}", text)
    text = re.sub(r"(?m)^listen = .*$", f'listen = "127.0.0.1:{free_port()}"', text)
    text = text.replace("[agent.broker]\n", f'[agent.broker]\nclient_id = "{unique_id("e2e-dcn0")}"\n', 1)
    path = tmp_path / "dcn0.toml"
    path.write_text(text)
    return path


def test_an_agent_whose_nova_and_cinder_zones_differ_does_not_start(rbd_agents_lab: Lab, tmp_path: Path) -> None:
    config = dcn0_file_with(rbd_agents_lab, tmp_path, extra='compute_availability_zone = "nova-dcn0"\n')
    started = edgesync("agent", "--config", str(config), timeout=30)
    assert started.returncode != 0
    assert "must use one availability zone for Nova and Cinder" in started.stderr
    assert "'nova-dcn0'" in started.stderr and not (tmp_path / "state").exists()  # stopped before doing anything


def test_the_hub_stops_an_agent_announcing_another_sites_zone(rbd_agents_lab: Lab, tmp_path: Path) -> None:
    config = dcn0_file_with(rbd_agents_lab, tmp_path, availability_zone="dcn1")
    lab_agent(rbd_agents_lab, "stop", "dcn0")
    try:
        refused = edgesync("agent", "--config", str(config), timeout=30)
        view = site_view(rbd_agents_lab, "dcn0")
    finally:
        lab_agent(rbd_agents_lab, "start", "dcn0")
    assert refused.returncode != 0, refused.stderr
    assert "the hub refused this agent" in refused.stderr
    assert "announced availability zone 'dcn1', which is site dcn1's zone" in refused.stderr
    assert not view["up"] and "'dcn1'" in view["problem"]
    site_up(rbd_agents_lab, "dcn0")  # the agent with the right zone is taken back at once


# --- 5. an agent killed mid-copy resumes ----------------------------------------------------------


def test_an_agent_killed_mid_copy_resumes_and_fetches_only_what_it_lacked(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    source = images["slow"]
    image_id = central_image(rbd_agents_lab, created, source)
    # 64 Mbit/s: the 32 MiB of data take about four seconds to pull.
    with agent_settings(rbd_agents_lab, "dcn0", bandwidth_limit_mbps=64):
        check(copy_to(rbd_agents_lab, image_id, "dcn0"))
        seen: set[int] = set()

        def two_progress_reports() -> bool:
            done = job(rbd_agents_lab, image_id, "dcn0")["bytes_done"]
            if done:
                seen.add(done)
            return len(seen) >= 2

        wait_until(two_progress_reports, "two progress reports of the copy to dcn0")
        lab_agent(rbd_agents_lab, "stop", "dcn0", "--kill")
        assert job(rbd_agents_lab, image_id, "dcn0")["state"] == "running"
    # agent_settings starts it again, without the limit: the copy resumes
    image = wait_import_done(rbd_agents_lab, image_id, timeout=WAIT_S)

    assert stores_of(image) == {"central", "dcn0"} and image["os_glance_failed_import"] == ""
    task = f"{latest_task(rbd_agents_lab, image_id)['id']}-dcn0"
    log = agent_log(rbd_agents_lab, "dcn0")
    assert f"resuming task {task}" in log
    found = re.search(rf"task {task}: image {image_id} copied \((\d+) bytes read back locally, (\d+) fetched\)", log)
    assert found, f"the restarted agent did not report the copy:\n{log[-3000:]}"
    read_back, fetched = int(found[1]), int(found[2])
    assert read_back > 0 and fetched < source.data_bytes and read_back + fetched == source.data_bytes
    assert_rbd_copies(rbd_agents_lab, image_id, source, {"central", "dcn0"})


# --- 6. ranges corrupted in transit ------------------------------------------------------------------


def test_ranges_corrupted_in_transit_are_caught_and_fetched_again(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    source = images["small"]
    image_id = central_image(rbd_agents_lab, created, source)
    # The hub started again with the test-only hook armed for this image only.
    lab_cli(rbd_agents_lab, "hub", "stop")
    armed = {**os.environ, CORRUPT_CHUNKS_ENV: f"{CORRUPT_RANGES}:{image_id}"}
    check(edgesync("lab", "hub", "start", "--dir", str(rbd_agents_lab["lab_dir"]), env=armed))
    assert f"{CORRUPT_CHUNKS_ENV}={CORRUPT_RANGES}:{image_id}" in hub_log(rbd_agents_lab)
    site_up(rbd_agents_lab, "dcn0")
    check(copy_to(rbd_agents_lab, image_id, "dcn0"))
    image = wait_import_done(rbd_agents_lab, image_id, timeout=WAIT_S)

    assert stores_of(image) == {"central", "dcn0"} and image["os_glance_failed_import"] == ""
    # Caught by the range's sha256, or (a hub that makes manifests) by the
    # blocks' BLAKE3 in the image's chunk manifest.
    caught = re.findall(rf"of image {image_id}: (the bytes received don't match their sha256|"
                        rf"\d+ blocks don't match the manifest)", agent_log(rbd_agents_lab, "dcn0"))
    assert len(caught) == CORRUPT_RANGES  # each caught by the agent, and fetched again
    assert_rbd_copies(rbd_agents_lab, image_id, source, {"central", "dcn0"})


# --- 7. a site's credentials stay on its own topics ----------------------------------------------------


async def bus_settings(lab: Lab, user: str) -> BusSettings:
    """Credentials with `user`'s rights, never the daemons' own connection: over
    TLS a new identity beside `user`'s (its certificate's CN is its client id,
    so the daemon's would be replaced); over plaintext, `user`'s password."""
    broker_dir = Path(lab["lab_dir"]) / "mosquitto"
    host, port = lab["broker"]["host"], lab["broker"]["port"]
    if lab.get("ca_file"):
        name = unique_id(f"e2e-{user}")
        cert_file, key_file = await mosquitto.add_identity(broker_dir, name, like=user)
        return BusSettings(host=host, port=port, username=name, password=None, ca_file=Path(lab["ca_file"]),
                           cert_file=cert_file, key_file=key_file)
    password = (Path(lab["lab_dir"]) / "secrets" / f"{user}.mqtt").read_text().strip()
    return BusSettings(host=host, port=port, username=user, password=password, client_id=unique_id(f"e2e-{user}"))


async def test_a_sites_credentials_cannot_publish_on_another_sites_topics(rbd_agents_lab: Lab) -> None:
    forged = [
        (topics.event("dcn1"), DoneEvent(task_id="forged", image_id=str(uuid.uuid4()),
                                         location_url="rbd://forged/images/x/snap")),
        (topics.status("dcn1"), SiteStatus(site="dcn1", state=SiteState.OFFLINE, availability_zone="dcn1")),
    ]
    control = ProgressEvent(task_id=unique_id("e2e-control"), bytes_done=1, bytes_total=2)
    hub_rights, dcn0_rights = await bus_settings(rbd_agents_lab, "hub"), await bus_settings(rbd_agents_lab, "site-dcn0")
    async with BusClient(hub_rights) as hub, Inbox(hub) as inbox:
        await hub.subscribe(topics.HUB_ACL_FILTER)
        async with BusClient(dcn0_rights) as dcn0:
            for topic, message in forged:
                with pytest.raises(BusError):  # MQTT 5 says so in the PUBACK; delivery is what counts
                    await dcn0.publish(topic, message)
            await dcn0.publish(topics.event("dcn0"), control)  # same client, its own topic
        await inbox.wait_for_id(control.message_id, timeout_s=10)
    assert inbox.message_ids().isdisjoint(m.message_id for _, m in forged)
    assert site_view(rbd_agents_lab, "dcn1")["up"]  # the real hub never heard the forged "offline"


# --- 8. a copy waits for a site that is down ----------------------------------------------------------


def test_a_copy_to_a_site_whose_agent_is_down_waits_listed_and_completes_when_it_returns(
        rbd_agents_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    source = images["small"]
    image_id = central_image(rbd_agents_lab, created, source)
    lab_agent(rbd_agents_lab, "stop", "dcn0")
    try:
        site_down(rbd_agents_lab, "dcn0")
        check(copy_to(rbd_agents_lab, image_id, "dcn0"))
        for wait_s in (1.0, 0.0):  # nothing can move it along while dcn0 is down: it stays listed
            image = get_image(rbd_agents_lab, image_id)
            assert image is not None and image["os_glance_importing_to_stores"] == "dcn0"
            assert image["os_glance_failed_import"] == "" and job(rbd_agents_lab, image_id, "dcn0")["state"] == "running"
            time.sleep(wait_s)
    finally:
        lab_agent(rbd_agents_lab, "start", "dcn0")
    image = wait_import_done(rbd_agents_lab, image_id, timeout=WAIT_S)
    assert stores_of(image) == {"central", "dcn0"} and image["os_glance_failed_import"] == ""
    assert_rbd_copies(rbd_agents_lab, image_id, source, {"central", "dcn0"})
