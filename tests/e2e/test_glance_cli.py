"""The real `glance` CLI (python-glanceclient) against a real running lab.

Every command under test is the glance CLI run as a subprocess; the hub's
HTTP API and the store directories on disk are only read to check what the
command really did. Stores fail for real (a store directory replaced by a
regular file) and a copy is held up for real (the central copy replaced by a
FIFO the copy blocks on), so every part here is the real one.
"""

from __future__ import annotations

import errno
import filecmp
import functools
import json
import os
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.lab import (
    SITES,
    ImageFile,
    Lab,
    api,
    assert_copies,
    broken_store,
    check,
    file_sha512,
    get_image,
    glance,
    image_tasks,
    make_striped_raw,
    parse_dict_table,
    parse_list_table,
    staged,
    status_of,
    store_dir,
    stores_of,
    wait_import_done,
)

pytestmark = pytest.mark.e2e

ALL = set(SITES)


# --- data and a web server -------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageFile]:
    root = tmp_path_factory.mktemp("images")
    striped = make_striped_raw(root / "striped.raw", 8)  # 32 MiB: 16 MiB data in 4 MiB stripes
    small = make_striped_raw(root / "small.raw", 3)  # 12 MiB: data, hole, data
    qcow2 = root / "small.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(small.path), str(qcow2)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return {"striped": striped, "small": small,
            # what the hub must make of the qcow2: the raw image it holds
            "small.qcow2": ImageFile(qcow2, small.size, small.data_bytes, small.md5, small.sha512)}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web_server(images: dict[str, ImageFile]) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 (random port) serving the test images."""
    handler = functools.partial(_QuietHandler, directory=str(images["striped"].path.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="e2e-web", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- images the tests create, deleted afterwards ---------------------------------------


@pytest.fixture
def created(file_lab: Lab) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    _delete_all(file_lab, ids)


def _delete_all(lab: Lab, ids: list[str]) -> None:
    for image_id in ids:
        image = get_image(lab, image_id)
        if image is None:
            continue
        if "os_glance_import_task" in image:
            wait_import_done(lab, image_id)
        status, body = api(lab, "DELETE", f"/v2/images/{image_id}")
        assert status in (204, 404), f"cleanup of {image_id}: {status} {body}"


def create_via_import(lab: Lab, ids: list[str], image: ImageFile, *extra: str,
                      stores: str = "central", name: str | None = None,
                      token: str | None = None) -> str:
    """`glance image-create-via-import --file` (glance-direct) and wait for the task."""
    image_id = str(uuid.uuid4())
    ids.append(image_id)
    proc = check(glance(
        lab, "image-create-via-import", "--id", image_id, "--name", name or f"e2e-{image_id[:8]}",
        "--disk-format", "raw", "--container-format", "bare", "--file", str(image.path),
        "--stores", stores, *extra, token=token,
    ))
    assert parse_dict_table(proc.stdout)["id"] == image_id
    return image_id


def active_image(lab: Lab, ids: list[str], image: ImageFile, *extra: str, **kwargs: Any) -> str:
    image_id = create_via_import(lab, ids, image, *extra, **kwargs)
    shown = wait_import_done(lab, image_id)
    assert shown["status"] == "active", shown
    return image_id


def latest_task(lab: Lab, image_id: str) -> dict[str, Any]:
    tasks = image_tasks(lab, image_id)
    assert tasks, f"image {image_id} has no tasks"
    return max(tasks, key=lambda t: (t["created_at"], t["updated_at"]))


def copy_image(lab: Lab, image_id: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return glance(lab, "image-import", image_id, "--import-method", "copy-image", *args, **kwargs)


@pytest.fixture(scope="module")
def shared_image(file_lab: Lab, images: dict[str, ImageFile]) -> Iterator[str]:
    """One active image in central, for tests that only read it."""
    ids: list[str] = []
    try:
        yield active_image(file_lab, ids, images["striped"], name="e2e-shared")
    finally:
        _delete_all(file_lab, ids)


# --- discovery ------------------------------------------------------------------------------


def test_stores_info_lists_the_sites_with_central_default(file_lab: Lab) -> None:
    stores = json.loads(parse_dict_table(check(glance(file_lab, "stores-info")).stdout)["stores"])
    assert [s["id"] for s in stores] == SITES
    assert stores[0]["default"] == "true"
    assert all("default" not in s for s in stores[1:])
    for s in stores:  # each store's description is its site file's
        site = tomllib.loads((Path(file_lab["lab_dir"]) / "sites" / f"{s['id']}.toml").read_text())
        assert s["description"] == site["store"]["description"]
    assert all("type" not in s and "properties" not in s for s in stores)


def test_stores_info_detail_is_admin_only(file_lab: Lab) -> None:
    out = check(glance(file_lab, "stores-info", "--detail")).stdout
    stores = json.loads(parse_dict_table(out)["stores"])
    assert [s["id"] for s in stores] == SITES
    for s in stores:
        assert s["type"] == "file"
        # The lab's paths hold no spaces, and where prettytable wrapped a long
        # path the JSON can't tell a split word from a space: drop any space.
        datadir = s["properties"]["datadir"].replace(" ", "")
        assert Path(datadir).resolve() == store_dir(file_lab, s["id"]).resolve()

    member = glance(file_lab, "stores-info", "--detail", token=file_lab["member_token"], debug=True)
    assert member.returncode != 0
    assert status_of(member, "GET", "/v2/info/stores/detail") == 403


def test_import_info_offers_the_three_methods(file_lab: Lab) -> None:
    methods = json.loads(parse_dict_table(check(glance(file_lab, "import-info")).stdout)["import-methods"])
    assert set(methods["value"]) == {"glance-direct", "web-download", "copy-image"}


# --- new imports ----------------------------------------------------------------------------


def test_glance_direct_import_to_central(file_lab: Lab, images: dict[str, ImageFile],
                                         created: list[str]) -> None:
    img = images["striped"]
    image_id = create_via_import(file_lab, created, img, stores="central")
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"
    assert stores_of(image) == {"central"}
    assert image["size"] == image["virtual_size"] == img.size
    assert image["checksum"] == img.md5
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == img.sha512
    assert image["os_glance_failed_import"] == image["os_glance_importing_to_stores"] == ""
    assert_copies(file_lab, image_id, img, {"central"})
    assert staged(file_lab, image_id) == []
    assert latest_task(file_lab, image_id)["status"] == "success"


def test_glance_direct_import_with_store_goes_there_after_central(file_lab: Lab, images: dict[str, ImageFile],
                                                                 created: list[str]) -> None:
    """`image-import --store S` is Glance's single-store form (the
    x-image-meta-store header on the import call)."""
    img = images["striped"]
    image_id = str(uuid.uuid4())
    created.append(image_id)
    check(glance(file_lab, "image-create", "--id", image_id, "--name", f"e2e-{image_id[:8]}",
                 "--disk-format", "raw", "--container-format", "bare"))
    check(glance(file_lab, "image-stage", "--file", str(img.path), image_id))
    check(glance(file_lab, "image-import", "--import-method", "glance-direct", "--store", "dcn0", image_id))
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active" and stores_of(image) == {"central", "dcn0"}, image
    assert_copies(file_lab, image_id, img, {"central", "dcn0"})


def test_image_show_prints_the_image(file_lab: Lab, images: dict[str, ImageFile], shared_image: str) -> None:
    img = images["striped"]
    out = check(glance(file_lab, "image-show", "--max-column-width", "2000", shared_image)).stdout
    shown = parse_dict_table(out, width=2000)
    assert shown["id"] == shared_image
    assert shown["name"] == "e2e-shared"
    assert shown["status"] == "active"
    assert shown["stores"] == "central"
    assert shown["size"] == shown["virtual_size"] == str(img.size)
    assert shown["disk_format"] == "raw" and shown["container_format"] == "bare"
    assert shown["checksum"] == img.md5
    assert shown["os_hash_algo"] == "sha512"
    assert shown["os_hash_value"] == img.sha512
    assert [loc["metadata"]["store"] for loc in json.loads(shown["locations"])] == ["central"]


def test_image_download_is_byte_identical(file_lab: Lab, images: dict[str, ImageFile],
                                          shared_image: str, tmp_path: Path) -> None:
    img = images["striped"]
    out = tmp_path / "download.raw"
    check(glance(file_lab, "image-download", "--file", str(out), shared_image))
    assert filecmp.cmp(out, img.path, shallow=False)
    assert subprocess.run(["cmp", str(out), str(img.path)], stdin=subprocess.DEVNULL).returncode == 0
    sha = file_sha512(out)
    assert sha == img.sha512
    assert sha == get_image(file_lab, shared_image)["os_hash_value"]  # type: ignore[index]


def test_image_download_of_a_queued_image_says_it_has_no_data(file_lab: Lab, created: list[str],
                                                              tmp_path: Path) -> None:
    """Glance answers 204 for an image without data; glanceclient then says so."""
    image_id = str(uuid.uuid4())
    created.append(image_id)
    check(glance(file_lab, "image-create", "--id", image_id, "--name", "e2e-empty",
                 "--disk-format", "raw", "--container-format", "bare"))
    proc = glance(file_lab, "image-download", "--file", str(tmp_path / "out"), image_id, debug=True)
    assert proc.returncode != 0
    assert f"Image {image_id} has no data." in proc.stderr
    assert status_of(proc, "GET", f"/v2/images/{image_id}/file") == 204


def test_stores_are_listed_central_first_then_by_name(file_lab: Lab, images: dict[str, ImageFile],
                                                      created: list[str]) -> None:
    image_id = active_image(file_lab, created, images["striped"])
    for store in ("dcn1", "dcn0"):  # dcn1's copy finishes first
        check(copy_image(file_lab, image_id, "--stores", store))
        wait_import_done(file_lab, image_id)
    shown = parse_dict_table(check(glance(file_lab, "image-show", image_id)).stdout)
    assert shown["stores"] == "central,dcn0,dcn1"


def test_web_download_to_central_and_an_edge(file_lab: Lab, images: dict[str, ImageFile],
                                             web_server: str, created: list[str]) -> None:
    img = images["striped"]
    image_id = str(uuid.uuid4())
    created.append(image_id)
    check(glance(file_lab, "image-create-via-import", "--id", image_id, "--name", "e2e-web",
                 "--disk-format", "raw", "--container-format", "bare",
                 "--import-method", "web-download", "--uri", f"{web_server}/striped.raw",
                 "--stores", "central,dcn0"))
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"
    assert stores_of(image) == {"central", "dcn0"}
    assert image["os_hash_value"] == img.sha512 and image["size"] == img.size
    assert image["os_glance_failed_import"] == ""
    assert_copies(file_lab, image_id, img, {"central", "dcn0"})
    assert staged(file_lab, image_id) == []


def test_task_create_import_then_task_list_and_show(file_lab: Lab, images: dict[str, ImageFile],
                                                   web_server: str, created: list[str]) -> None:
    """glanceclient's legacy tasks API: an import task runs as a web-download into central."""
    img = images["striped"]
    task_input = {"import_from": f"{web_server}/striped.raw", "import_from_format": "raw",
                  "image_properties": {"name": "e2e-task", "container_format": "bare"}}
    created_task = parse_dict_table(check(glance(
        file_lab, "task-create", "--type", "import", "--input", json.dumps(task_input))).stdout)
    task_id = created_task["id"]
    assert created_task["type"] == "import"
    deadline = time.monotonic() + 60
    while True:
        shown = parse_dict_table(check(glance(file_lab, "task-show", task_id)).stdout)
        if shown["status"] in ("success", "failure") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert shown["status"] == "success", shown
    image_id = json.loads(shown["result"])["image_id"]
    created.append(image_id)
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active" and image["stores"] == "central"
    assert image["os_hash_value"] == img.sha512 and image["name"] == "e2e-task"
    listed = check(glance(file_lab, "task-list", "--type", "import", "--sort-key", "status", "--page-size", "1")).stdout
    assert task_id in listed


def test_web_download_qcow2_is_converted_to_raw(file_lab: Lab, images: dict[str, ImageFile],
                                                web_server: str, created: list[str],
                                                tmp_path: Path) -> None:
    raw = images["small.qcow2"]
    image_id = str(uuid.uuid4())
    created.append(image_id)
    check(glance(file_lab, "image-create-via-import", "--id", image_id, "--name", "e2e-qcow2",
                 "--disk-format", "qcow2", "--container-format", "bare",
                 "--import-method", "web-download", "--uri", f"{web_server}/small.qcow2",
                 "--stores", "central"))
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"
    assert image["disk_format"] == "raw"
    assert image["size"] == image["virtual_size"] == raw.size
    assert image["os_hash_value"] == raw.sha512 and image["checksum"] == raw.md5
    assert_copies(file_lab, image_id, raw, {"central"})  # byte-identical to small.raw, sparse
    out = tmp_path / "converted.raw"
    check(glance(file_lab, "image-download", "--file", str(out), image_id))
    assert filecmp.cmp(out, images["small"].path, shallow=False)
    assert staged(file_lab, image_id) == []


def test_web_download_failure_leaves_a_clean_queued_image_that_can_be_retried(
        file_lab: Lab, images: dict[str, ImageFile], web_server: str, created: list[str]) -> None:
    img = images["small"]
    image_id = str(uuid.uuid4())
    created.append(image_id)
    check(glance(file_lab, "image-create-via-import", "--id", image_id, "--name", "e2e-missing",
                 "--disk-format", "raw", "--container-format", "bare",
                 "--import-method", "web-download", "--uri", f"{web_server}/no-such-image.raw",
                 "--stores", "central,dcn0"))
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "queued"  # not stuck importing
    assert stores_of(image) == set()
    assert_copies(file_lab, image_id, img, set())
    assert staged(file_lab, image_id) == []
    tasks = parse_list_table(check(glance(file_lab, "image-tasks", image_id)).stdout)
    assert [t["Status"] for t in tasks] == ["failure"]
    assert "404" in tasks[0]["Message"], tasks[0]["Message"]

    check(glance(file_lab, "image-import", image_id, "--import-method", "web-download",
                 "--uri", f"{web_server}/small.raw", "--stores", "central,dcn0"))
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"
    assert image["os_hash_value"] == img.sha512
    assert_copies(file_lab, image_id, img, {"central", "dcn0"})


def test_image_create_with_file_uploads_hub_first(file_lab: Lab, images: dict[str, ImageFile],
                                                  created: list[str]) -> None:
    """`image-create --file --store dcn0`: PUT /file with X-Image-Meta-Store; the
    hub keeps central first, so the image lands in central and dcn0."""
    img = images["small"]
    image_id = str(uuid.uuid4())
    created.append(image_id)
    shown = parse_dict_table(check(glance(
        file_lab, "image-create", "--id", image_id, "--name", "e2e-upload", "--disk-format", "raw",
        "--container-format", "bare", "--file", str(img.path), "--store", "dcn0")).stdout)
    assert shown["status"] == "active"  # the upload returns when the image is active
    image = get_image(file_lab, image_id) or {}
    assert stores_of(image) == {"central", "dcn0"}
    assert image["os_hash_value"] == img.sha512 and image["checksum"] == img.md5
    assert_copies(file_lab, image_id, img, {"central", "dcn0"})


# --- copy-image -----------------------------------------------------------------------------


def test_copy_to_named_stores_then_delete_one_and_list(file_lab: Lab, images: dict[str, ImageFile],
                                                       created: list[str]) -> None:
    img = images["striped"]
    image_id = active_image(file_lab, created, img)

    printed = parse_dict_table(check(copy_image(file_lab, image_id, "--stores", "dcn0,dcn1")).stdout)
    assert printed["id"] == image_id and printed["status"] == "active"  # copy-image keeps it active
    image = wait_import_done(file_lab, image_id)
    assert stores_of(image) == ALL
    assert image["os_glance_failed_import"] == image["os_glance_importing_to_stores"] == ""
    assert_copies(file_lab, image_id, img, ALL)
    task = latest_task(file_lab, image_id)
    assert task["status"] == "success"
    assert task["input"]["import_req"]["stores"] == ["dcn0", "dcn1"]

    rows = parse_list_table(check(glance(file_lab, "image-list", "--include-stores")).stdout)
    row = next(r for r in rows if r["ID"] == image_id)
    assert set(row["Stores"].split(",")) == ALL

    again = copy_image(file_lab, image_id, "--stores", "dcn0", debug=True)
    assert again.returncode != 0
    assert status_of(again, "POST", f"/v2/images/{image_id}/import") == 400
    assert "already present at store 'dcn0'" in again.stderr

    check(glance(file_lab, "stores-delete", "--store", "dcn0", image_id))
    assert stores_of(get_image(file_lab, image_id) or {}) == {"central", "dcn1"}
    assert_copies(file_lab, image_id, img, {"central", "dcn1"})

    gone = glance(file_lab, "stores-delete", "--store", "dcn0", image_id, debug=True)
    assert gone.returncode != 0
    assert status_of(gone, "DELETE", f"/v2/stores/dcn0/{image_id}") == 404


def test_copy_to_all_stores_skips_those_that_have_it(file_lab: Lab, images: dict[str, ImageFile],
                                                     created: list[str]) -> None:
    img = images["striped"]
    image_id = active_image(file_lab, created, img, stores="central,dcn1")
    assert_copies(file_lab, image_id, img, {"central", "dcn1"})

    check(copy_image(file_lab, image_id, "--all-stores", "True"))
    image = wait_import_done(file_lab, image_id)
    assert stores_of(image) == ALL
    assert latest_task(file_lab, image_id)["input"]["import_req"]["stores"] == ["dcn0"]
    assert_copies(file_lab, image_id, img, ALL)

    # nothing left to copy: accepted, and no task runs
    tasks_before = len(image_tasks(file_lab, image_id))
    check(copy_image(file_lab, image_id, "--all-stores", "True"))
    assert len(image_tasks(file_lab, image_id)) == tasks_before


def test_copy_allow_failure_true_lists_the_failed_store(file_lab: Lab, images: dict[str, ImageFile],
                                                        created: list[str]) -> None:
    img = images["striped"]
    image_id = active_image(file_lab, created, img)
    with broken_store(file_lab, "dcn1"):
        check(copy_image(file_lab, image_id, "--stores", "dcn0,dcn1"))  # --allow-failure True: the default
        image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"
    assert stores_of(image) == {"central", "dcn0"}
    assert image["os_glance_failed_import"] == "dcn1"
    assert image["os_glance_importing_to_stores"] == ""
    assert_copies(file_lab, image_id, img, {"central", "dcn0"})
    task = latest_task(file_lab, image_id)
    assert task["status"] == "success"
    assert task["result"]["stores"]["dcn0"]["state"] == "done"
    assert task["result"]["stores"]["dcn1"]["state"] == "failed"
    assert "Not a directory" in task["result"]["stores"]["dcn1"]["reason"]


def test_copy_allow_failure_false_rolls_back(file_lab: Lab, images: dict[str, ImageFile],
                                             created: list[str]) -> None:
    img = images["striped"]
    image_id = active_image(file_lab, created, img)
    with broken_store(file_lab, "dcn1"):
        check(copy_image(file_lab, image_id, "--stores", "dcn0,dcn1", "--allow-failure", "False"))
        image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"  # the central copy was never at stake
    assert stores_of(image) == {"central"}
    assert image["os_glance_failed_import"] == "dcn1"
    assert_copies(file_lab, image_id, img, {"central"})  # dcn0 was written, then rolled back
    task = latest_task(file_lab, image_id)
    assert task["status"] == "failure"
    assert task["input"]["import_req"]["all_stores_must_succeed"] is True
    assert task["result"]["stores"]["dcn0"]["state"] == "rolled_back"
    assert task["result"]["stores"]["dcn1"]["state"] == "failed"


def test_new_import_allow_failure_true_keeps_the_good_stores(file_lab: Lab, images: dict[str, ImageFile],
                                                             created: list[str]) -> None:
    img = images["striped"]
    with broken_store(file_lab, "dcn1"):
        image_id = create_via_import(file_lab, created, img, stores="central,dcn0,dcn1")
        image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"
    assert stores_of(image) == {"central", "dcn0"}
    assert image["os_glance_failed_import"] == "dcn1"
    assert_copies(file_lab, image_id, img, {"central", "dcn0"})
    assert staged(file_lab, image_id) == []


def test_new_import_allow_failure_false_rolls_back_and_can_be_retried(
        file_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    img = images["striped"]
    with broken_store(file_lab, "dcn1"):
        image_id = create_via_import(file_lab, created, img, "--allow-failure", "False",
                                     stores="central,dcn0,dcn1")
        image = wait_import_done(file_lab, image_id)
    # nothing kept anywhere, nothing left in staging, and not stuck `importing`
    assert image["status"] == "queued"
    assert stores_of(image) == set()
    assert image["os_glance_failed_import"] == "dcn1"
    assert image["size"] is None and image["os_hash_value"] is None
    assert_copies(file_lab, image_id, img, set())
    assert staged(file_lab, image_id) == []
    assert latest_task(file_lab, image_id)["status"] == "failure"

    # with the store back, the same image imports from scratch
    check(glance(file_lab, "image-stage", "--file", str(img.path), image_id))
    check(glance(file_lab, "image-import", image_id, "--import-method", "glance-direct",
                 "--stores", "central,dcn0,dcn1", "--allow-failure", "False"))
    image = wait_import_done(file_lab, image_id)
    assert image["status"] == "active"
    assert stores_of(image) == ALL
    assert image["os_glance_failed_import"] == ""
    assert_copies(file_lab, image_id, img, ALL)


def test_second_copy_while_one_runs_gets_409(file_lab: Lab, images: dict[str, ImageFile],
                                             created: list[str]) -> None:
    """Deterministic: the central copy is swapped for a FIFO, so the first copy
    blocks opening its source (in a hub worker thread) until the test lets it go."""
    img = images["striped"]
    image_id = active_image(file_lab, created, img)
    source = store_dir(file_lab, "central") / image_id
    held = source.with_name(image_id + ".held")
    source.rename(held)
    os.mkfifo(source)
    try:
        check(copy_image(file_lab, image_id, "--stores", "dcn0"))
        holder = (get_image(file_lab, image_id) or {}).get("os_glance_import_task")
        assert holder, "the first copy-image did not start a task"

        second = copy_image(file_lab, image_id, "--stores", "dcn1", debug=True)
        code = status_of(second, "POST", f"/v2/images/{image_id}/import")
        still = (get_image(file_lab, image_id) or {}).get("os_glance_import_task")
        assert code == 409 and still == holder, (
            f"the second copy-image got {code}; the image's import task was {holder} before it "
            f"and {still} after (had the first ended, the FIFO would no longer hold it up)"
        )
        assert second.returncode != 0
        assert holder in second.stderr  # the message names the task holding the lock

        # while it runs: progress is visible, and the image can't be deleted under it
        assert (get_image(file_lab, image_id) or {})["os_glance_importing_to_stores"] == "dcn0"
        refused = glance(file_lab, "image-delete", image_id, debug=True)
        assert status_of(refused, "DELETE", f"/v2/images/{image_id}") == 409
        assert get_image(file_lab, image_id) is not None and held.is_file()
    finally:
        _let_go(file_lab, image_id, source)
        os.replace(held, source)

    image = wait_import_done(file_lab, image_id)
    # the held copy read an empty source: its digest check refused to publish it
    assert stores_of(image) == {"central"}
    assert image["os_glance_failed_import"] == "dcn0"
    assert_copies(file_lab, image_id, img, {"central"})

    # and the lock is free again: the copy the loser wanted now runs
    check(copy_image(file_lab, image_id, "--stores", "dcn0,dcn1"))
    image = wait_import_done(file_lab, image_id)
    assert stores_of(image) == ALL
    assert_copies(file_lab, image_id, img, ALL)


def _let_go(lab: Lab, image_id: str, fifo: Path, timeout: float = 15.0) -> None:
    """Open the FIFO for writing once the hub is blocked reading it, then close
    it: the hub's open returns and it reads end-of-file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            image = get_image(lab, image_id)
            if image is None or "os_glance_import_task" not in image:
                return  # nobody will read it
            time.sleep(0.02)
            continue
        os.close(fd)
        return
    raise AssertionError(f"the hub never opened the FIFO for image {image_id}")


# --- update, list, delete ---------------------------------------------------------------------


def _listed(lab: Lab, *args: str) -> set[str]:
    return {r["ID"] for r in parse_list_table(check(glance(lab, "image-list", *args)).stdout)}


def test_image_list_core_filters_operators_and_paging(file_lab: Lab,
                                                      created: list[str]) -> None:
    """glanceclient's --property-filter on core fields (Glance treats them as
    fields, not properties), the in: operator, and paging one image a page."""
    run = uuid.uuid4().hex[:8]
    made = {}
    for fmt, name in (("raw", "a"), ("qcow2", "b"), ("iso", "c")):
        image_id = str(uuid.uuid4())
        created.append(image_id)
        check(glance(file_lab, "image-create", "--id", image_id, "--name", f"{name}-{run}", "--disk-format", fmt,
                     "--container-format", "bare", "--property", f"e2e_run={run}"))
        made[fmt] = image_id
    mine = ("--property-filter", f"e2e_run={run}")
    assert _listed(file_lab, *mine, "--property-filter", "disk_format=qcow2") == {made["qcow2"]}
    assert _listed(file_lab, *mine, "--property-filter", "disk_format=in:raw,iso") == {made["raw"], made["iso"]}
    assert _listed(file_lab, *mine, "--property-filter", "created_at=lt:2000-01-01T00:00:00Z") == set()
    rows = parse_list_table(check(glance(file_lab, "image-list", *mine, "--page-size", "1",
                                         "--sort-key", "name", "--sort-dir", "desc")).stdout)
    assert [r["ID"] for r in rows] == [made["iso"], made["qcow2"], made["raw"]]


def test_hidden_images_and_properties(file_lab: Lab, images: dict[str, ImageFile],
                                      created: list[str]) -> None:
    image_id = active_image(file_lab, created, images["striped"])
    assert image_id in _listed(file_lab)

    shown = parse_dict_table(check(glance(
        file_lab, "image-update", image_id, "--hidden", "true", "--property", "edge_team=dcn")).stdout)
    assert shown["os_hidden"] == "True" and shown["edge_team"] == "dcn"
    image = get_image(file_lab, image_id) or {}
    assert image["os_hidden"] is True and image["edge_team"] == "dcn"

    assert image_id not in _listed(file_lab)
    assert image_id in _listed(file_lab, "--hidden", "true")

    reserved = glance(file_lab, "image-update", image_id, "--property", "os_glance_failed_import=dcn0",
                      debug=True)
    assert reserved.returncode != 0
    assert status_of(reserved, "PATCH", f"/v2/images/{image_id}") == 403
    assert (get_image(file_lab, image_id) or {})["os_glance_failed_import"] == ""

    check(glance(file_lab, "image-update", image_id, "--hidden", "false", "--remove-property", "edge_team"))
    image = get_image(file_lab, image_id) or {}
    assert image["os_hidden"] is False and "edge_team" not in image
    assert image_id in _listed(file_lab)


def test_image_delete_removes_every_copy(file_lab: Lab, images: dict[str, ImageFile],
                                         created: list[str]) -> None:
    img = images["striped"]
    image_id = active_image(file_lab, created, img, stores="central,dcn0,dcn1")
    assert_copies(file_lab, image_id, img, ALL)

    check(glance(file_lab, "image-update", image_id, "--protected", "True"))
    refused = glance(file_lab, "image-delete", image_id, debug=True)
    assert refused.returncode != 0
    assert status_of(refused, "DELETE", f"/v2/images/{image_id}") == 403
    assert "not permitted to delete" in refused.stderr
    assert_copies(file_lab, image_id, img, ALL)
    check(glance(file_lab, "image-update", image_id, "--protected", "False"))

    check(glance(file_lab, "image-delete", image_id))
    assert get_image(file_lab, image_id) is None
    assert_copies(file_lab, image_id, img, set())
    assert staged(file_lab, image_id) == []

    show = glance(file_lab, "image-show", image_id, debug=True)
    assert show.returncode != 0
    assert status_of(show, "GET", f"/v2/images/{image_id}") == 404


def test_member_cannot_see_private_admin_images_but_copies_public_ones(
        file_lab: Lab, images: dict[str, ImageFile], created: list[str]) -> None:
    """The DCN policy: copy_image is allowed on any image the caller may see
    (Glance's default: admin only), so a member's boot at a site lacking an
    image can copy it there."""
    member = file_lab["member_token"]
    img = images["striped"]
    image_id = active_image(file_lab, created, img, "--visibility", "private")

    hidden = glance(file_lab, "image-show", image_id, token=member, debug=True)
    assert hidden.returncode != 0
    assert status_of(hidden, "GET", f"/v2/images/{image_id}") == 404
    assert image_id not in _listed_as(file_lab, member)
    denied = copy_image(file_lab, image_id, "--stores", "dcn0", token=member, debug=True)
    assert denied.returncode != 0
    # glanceclient reads the image before it imports: its 404 ends the command
    assert status_of(denied, "GET", f"/v2/images/{image_id}") == 404
    # and the import itself, sent anyway, is a 404 too (not a 403 that would say it exists)
    status, body = api(file_lab, "POST", f"/v2/images/{image_id}/import", token=member,
                       body={"method": {"name": "copy-image"}, "stores": ["dcn0"]})
    assert status == 404, body
    assert stores_of(get_image(file_lab, image_id) or {}) == {"central"}

    # made public, the member sees it and may copy it to a site's store
    check(glance(file_lab, "image-update", image_id, "--visibility", "public"))
    assert image_id in _listed_as(file_lab, member)
    check(copy_image(file_lab, image_id, "--stores", "dcn0", token=member))
    assert stores_of(wait_import_done(file_lab, image_id)) == {"central", "dcn0"}
    assert_copies(file_lab, image_id, img, {"central", "dcn0"})


def _listed_as(lab: Lab, token: str) -> set[str]:
    return {r["ID"] for r in parse_list_table(check(glance(lab, "image-list", token=token)).stdout)}
