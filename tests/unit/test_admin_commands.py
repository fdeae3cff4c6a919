"""The admin CLI's pure parts: where the hub is and which token to send, each
store's state for `image show`, and the one-cell store summary of `tasks`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgesync.admin.client import AdminError, resolve_connection
from edgesync.admin.commands import store_states, task_stores

ENV = {"EDGESYNC_URL": "http://env:1", "EDGESYNC_TOKEN": "env-token",
       "OS_IMAGE_URL": "http://os:2/v2/", "OS_AUTH_TOKEN": "os-token"}


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    (tmp_path / "lab.json").write_text(json.dumps({"hub_url": "http://lab:3", "admin_token": "lab-token"}))
    return tmp_path


def test_options_win_then_the_lab_then_edgesync_env_then_openstack_env(lab_dir: Path) -> None:
    assert resolve_connection("http://opt:4", "opt-token", str(lab_dir), ENV) == \
        resolve_connection("http://opt:4", "opt-token", None, {})
    conn = resolve_connection(None, None, str(lab_dir), ENV)
    assert (conn.url, conn.token) == ("http://lab:3", "lab-token")
    conn = resolve_connection(None, None, None, ENV)
    assert (conn.url, conn.token) == ("http://env:1", "env-token")
    os_only = {k: v for k, v in ENV.items() if k.startswith("OS_")}
    conn = resolve_connection(None, None, None, os_only)
    assert (conn.url, conn.token) == ("http://os:2", "os-token")  # glanceclient's /v2 dropped


def test_no_url_anywhere_says_where_to_give_one() -> None:
    with pytest.raises(AdminError, match=r"--url.*--lab-dir.*EDGESYNC_URL"):
        resolve_connection(None, "t", None, {})


def test_a_token_is_optional_for_a_noauth_hub() -> None:
    assert resolve_connection("http://h:1", None, None, {}).token is None


@pytest.mark.parametrize("url", ["hub:9292", "ftp://hub/", "http://"])
def test_a_url_that_is_no_http_url_is_refused(url: str) -> None:
    with pytest.raises(AdminError, match="http://host:port"):
        resolve_connection(url, None, None, {})


def test_a_missing_lab_names_the_command_that_makes_one(tmp_path: Path) -> None:
    with pytest.raises(AdminError, match="edgesync lab up"):
        resolve_connection(None, None, str(tmp_path / "nolab"), {})


# --- image show: each store's state ------------------------------------------------------------


def _task(task_id: str, status: str, **jobs: dict[str, Any]) -> dict[str, Any]:
    return {"id": task_id, "status": status, "result": {"stores": jobs}}


def _job(state: str, done: int = 0, total: int = 0, reason: str = "") -> dict[str, Any]:
    return {"state": state, "bytes_done": done, "bytes_total": total, "reason": reason}


def test_store_states_present_copying_and_absent_with_the_last_failure() -> None:
    image = {"stores": "central,dcn0",
             "locations": [{"url": "file:///c/x", "metadata": {"store": "central"}},
                           {"url": "file:///0/x", "metadata": {"store": "dcn0"}}]}
    tasks = [  # newest first
        _task("t3", "processing", dcn2=_job("running", 5, 10), dcn3=_job("pending")),
        _task("t2", "success", dcn0=_job("done", 10, 10), dcn1=_job("failed", reason="Not a directory")),
        _task("t1", "success", dcn1=_job("done", 10, 10)),
    ]
    rows = {r["store"]: r for r in store_states(image, ["central", "dcn0", "dcn1", "dcn2", "dcn3"], tasks)}
    assert rows["central"]["state"] == "present" and rows["central"]["location"] == "file:///c/x"
    assert rows["dcn0"]["state"] == "present" and rows["dcn0"]["task_id"] == "t2"
    # the newest task that touched dcn1 says why it has no copy, not the older success
    assert rows["dcn1"]["state"] == "absent" and rows["dcn1"]["reason"] == "last copy failed: Not a directory"
    assert (rows["dcn2"]["state"], rows["dcn2"]["bytes_done"], rows["dcn2"]["bytes_total"]) == ("copying", 5, 10)
    assert rows["dcn3"]["state"] == "pending" and rows["dcn3"]["task_id"] == "t3"


def test_a_copy_deleted_since_is_absent_without_a_reason() -> None:
    _, row = store_states({"stores": "central"}, ["central", "dcn0"],
                          [_task("t1", "success", dcn0=_job("done", 1, 1))])
    assert (row["store"], row["state"], row["reason"]) == ("dcn0", "absent", None)


def test_a_store_no_longer_configured_but_holding_a_copy_is_still_shown() -> None:
    rows = store_states({"stores": "central,old"}, ["central"], [])
    assert [(r["store"], r["state"]) for r in rows] == [("central", "present"), ("old", "present")]


def test_task_stores_in_one_cell() -> None:
    task = _task("t", "processing", dcn0=_job("done", 8, 8), dcn1=_job("running", 2, 8),
                 dcn2=_job("rolled_back"))
    assert task_stores(task) == "dcn0 done, dcn1 running 25%, dcn2 rolled back"
