"""`edgesync metadefs load DIR`: Glance's metadef JSON files (one namespace
each) loaded through the hub's API; existing namespaces skipped or, with
--replace, loaded again; a bad file refused without stopping the others."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from edgesync.admin.client import AdminError, Connection, HubClient
from edgesync.admin.metadefs import load
from tests.api.conftest import TOKENS, Api
from tests.api.test_metadefs import WATCHDOG

OS_FILE = {  # as Glance's etc/metadefs/operating-system.json is laid out
    "display_name": "Common Operating System Properties", "namespace": "OS::OperatingSystem",
    "description": "os", "protected": True,
    "resource_type_associations": [{"name": "OS::Glance::Image"},
                                   {"name": "OS::Cinder::Volume", "properties_target": "image"}],
    "properties": {"os_distro": {"title": "OS Distro", "description": "d", "type": "string"},
                   "os_version": {"title": "OS Version", "type": "string"}},
}


async def run_load(api: Api, directory: Path, *, replace: bool = False,
                   token: str = TOKENS["admin"][0]) -> tuple[int, str]:
    out = io.StringIO()
    conn = Connection(str(api.client.make_url("")).rstrip("/"), token)
    async with HubClient(conn) as hub:
        status = await load(hub, argparse.Namespace(dir=str(directory), replace=replace), out)
    return status, out.getvalue()


def write(directory: Path, name: str, body: object) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps(body) if not isinstance(body, str) else body)


async def test_loads_glance_files_then_skips_or_replaces(api: Api, tmp_path: Path) -> None:
    defs = tmp_path / "metadefs"
    write(defs, "compute-watchdog.json", WATCHDOG)
    write(defs, "operating-system.json", OS_FILE)
    status, out = await run_load(api, defs)
    assert status == 0, out
    assert "namespace OS::Compute::Watchdog created" in out and "2 of 2" in out
    async with api.p1.get("/v2/metadefs/namespaces/OS::OperatingSystem") as resp:
        assert resp.status == 404, "private (the file names no visibility): not another project's to see"
    async with api.admin.get("/v2/metadefs/namespaces/OS::OperatingSystem") as resp:
        shown = await resp.json()
    assert shown["protected"] is True and sorted(shown["properties"]) == ["os_distro", "os_version"]
    assert shown["visibility"] == "private" and shown["owner"] == "admin"
    status, out = await run_load(api, defs)
    assert status == 0 and out.count("skipped") == 2
    write(defs, "operating-system.json", {**OS_FILE, "properties": {"os_distro": {"title": "D", "type": "string"}}})
    status, out = await run_load(api, defs, replace=True)
    assert status == 0 and "namespace OS::OperatingSystem replaced" in out
    async with api.admin.get("/v2/metadefs/namespaces/OS::OperatingSystem") as resp:
        shown = await resp.json()
    assert list(shown["properties"]) == ["os_distro"] and shown["protected"] is True


async def test_a_bad_file_is_refused_and_the_others_load(api: Api, tmp_path: Path) -> None:
    defs = tmp_path / "metadefs"
    write(defs, "a-broken.json", "{not json")
    write(defs, "b-nameless.json", {"display_name": "x"})
    write(defs, "c-invalid.json", {"namespace": "n", "properties": {"p": {"type": "string"}}})
    write(defs, "d-good.json", {"namespace": "good"})
    status, out = await run_load(api, defs)
    assert status == 2
    assert "a-broken.json: refused" in out and "b-nameless.json: refused" in out
    assert "c-invalid.json: refused" in out and "title" in out
    assert "1 of 4" in out
    async with api.admin.get("/v2/metadefs/namespaces") as resp:
        assert [n["namespace"] for n in (await resp.json())["namespaces"]] == ["good"]


async def test_a_member_is_refused_by_the_default_policy(api: Api, tmp_path: Path) -> None:
    write(tmp_path / "d", "x.json", {"namespace": "x"})
    status, out = await run_load(api, tmp_path / "d", token=TOKENS["p1"][0])
    assert status == 2 and "add_metadef_namespace" in out


async def test_an_empty_directory_says_so(api: Api, tmp_path: Path) -> None:
    with pytest.raises(AdminError, match=r"no \*\.json"):
        await run_load(api, tmp_path)
