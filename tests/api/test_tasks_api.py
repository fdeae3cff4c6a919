"""Glance's tasks API (/v2/tasks) over the hub's own import tasks: legacy
`import` tasks run as a web-download into central; every hub task is listed;
tasks_api_access (admin-only by default) guards it all; the schemas describe
what is served."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.api.conftest import Api, Source, default_image, direct, error_of, running_api, sha512, write_hub_files


def import_task(url: str, **image_properties: Any) -> dict[str, Any]:
    return {"type": "import", "input": {"import_from": url, "import_from_format": "raw",
                                        "image_properties": {"name": "legacy", **image_properties}}}


async def schema(api: Api, name: str) -> dict[str, Any]:
    async with api.admin.get(f"/v2/schemas/{name}") as resp:
        assert resp.status == 200
        return await resp.json()


async def image_ids(api: Api) -> list[str]:
    async with api.admin.get("/v2/images") as resp:
        return [i["id"] for i in (await resp.json())["images"]]


async def test_a_legacy_import_task_imports_into_central(api: Api, source: Source) -> None:
    data = default_image(seed=7)
    source.files["legacy.raw"] = data
    request_id = f"req-{uuid.uuid4()}"
    async with api.admin.post("/v2/tasks", json=import_task(source.url("legacy.raw"), os_distro="cirros"),
                              headers={"X-OpenStack-Request-ID": request_id}) as resp:
        assert resp.status == 201, await resp.text()
        created = await resp.json()
        assert resp.headers["Location"] == f"/v2/tasks/{created['id']}"
    assert created["type"] == "import" and created["status"] in ("pending", "processing")
    assert created["input"]["import_from"] == source.url("legacy.raw")
    jsonschema.validate(created, await schema(api, "task"))
    await api.wait_idle()
    async with api.admin.get(f"/v2/tasks/{created['id']}") as resp:
        task = await resp.json()
    assert task["status"] == "success", task
    assert task["request_id"] == request_id and task["owner"] == "admin"
    image = await api.admin.show(task["result"]["image_id"])
    assert image["status"] == "active" and image["stores"] == "central"
    assert image["os_distro"] == "cirros" and image["disk_format"] == "raw" and image["container_format"] == "bare"
    assert image["os_hash_value"] == sha512(data)
    jsonschema.validate(task, await schema(api, "task"))


async def test_a_legacy_task_records_its_source_without_credentials(api: Api, source: Source) -> None:
    source.files["legacy-private.raw"] = default_image(seed=8)
    uri = f"http://user:s3cret@127.0.0.1:{source.port}/files/legacy-private.raw"
    async with api.admin.post("/v2/tasks", json=import_task(uri)) as resp:
        assert resp.status == 201, await resp.text()
        created = await resp.json()
    assert created["input"]["import_from"] == f"http://***@127.0.0.1:{source.port}/files/legacy-private.raw"
    await api.wait_idle()
    async with api.admin.get(f"/v2/tasks/{created['id']}") as resp:
        task = await resp.json()
    assert task["status"] == "success" and "s3cret" not in str(task), task


@pytest.mark.parametrize("body, fragment", [
    ([], "JSON object"),
    ({"input": {}}, "Task 'type' is required"),
    ({"type": "import"}, "Task 'input' is required"),
    ({"type": "api_image_import", "input": {}}, "only 'import' tasks"),
    ({"type": "import", "input": {"import_from": "http://x/y"}}, "missing: import_from_format, image_properties"),
    ({"type": "import", "input": "x"}, "must be a JSON object"),
    ({"type": "import", "input": {}, "extra": 1}, "'extra'"),
    (import_task("ftp://127.0.0.1/x"), "scheme"),
    (import_task("http://127.0.0.1:1/x", disk_format="exe"), "disk_format"),
])
async def test_bad_task_requests_are_400_and_leave_no_image(api: Api, body: Any, fragment: str) -> None:
    async with api.admin.post("/v2/tasks", json=body) as resp:
        await error_of(resp, 400, fragment)
    assert await image_ids(api) == []


async def test_the_tasks_api_is_admin_only_by_default(api: Api, source: Source) -> None:
    async with api.p1.post("/v2/tasks", json=import_task(source.url("x"))) as resp:
        await error_of(resp, 403, "tasks_api_access")
    for path in ("/v2/tasks", f"/v2/tasks/{uuid.uuid4()}"):
        async with api.p1.get(path) as resp:
            await error_of(resp, 403, "tasks_api_access")
    assert await image_ids(api) == []


@pytest.fixture
async def open_tasks_api(tmp_path: Path, source: Source) -> AsyncIterator[Api]:
    """A hub whose policy file opens the tasks API to every user."""
    hub_toml = write_hub_files(tmp_path, source_port=source.port)
    (tmp_path / "policy.yaml").write_text('"tasks_api_access": ""\n')
    hub_toml.write_text(hub_toml.read_text().replace("[hub]\n", f'[hub]\npolicy_file = "{tmp_path / "policy.yaml"}"\n', 1))
    async with running_api(tmp_path) as running:
        yield running


async def test_with_the_policy_opened_members_see_only_their_projects_tasks(open_tasks_api: Api) -> None:
    api = open_tasks_api
    mine = await api.active_image(default_image(), caller=api.p1)
    await api.active_image(default_image(seed=1), caller=api.p2)
    async with api.p1.get("/v2/tasks") as resp:
        assert resp.status == 200, await resp.text()
        listed = (await resp.json())["tasks"]
    assert [t["owner"] for t in listed] == ["p1"]
    task_id = listed[0]["id"]
    async with api.p1.get(f"/v2/tasks/{task_id}") as resp:
        task = await resp.json()
    assert task["type"] == "api_image_import" and task["image_id"] == mine["id"]
    assert task["result"]["image_id"] == mine["id"] and task["result"]["stores"]["central"]["state"] == "done"
    async with api.p2.get(f"/v2/tasks/{task_id}") as resp:
        await error_of(resp, 404, task_id)


async def test_listing_filters_sorts_and_pages(api: Api, source: Source) -> None:
    source.files["l.raw"] = default_image(seed=3)
    async with api.admin.post("/v2/tasks", json=import_task(source.url("l.raw"))) as resp:
        legacy = (await resp.json())["id"]
    native = []
    for seed in range(3):
        image = await api.active_image(default_image(seed=seed))
        native.append((await api.last_task(image["id"]))["id"])
    await api.wait_idle()
    async with api.admin.get("/v2/tasks?type=import") as resp:
        assert [t["id"] for t in (await resp.json())["tasks"]] == [legacy]
    async with api.admin.get("/v2/tasks?type=api_image_import&sort_dir=asc") as resp:
        body = await resp.json()
    assert [t["id"] for t in body["tasks"]] == native
    stub_properties = set((await schema(api, "tasks"))["properties"]["tasks"]["items"]["properties"])
    assert all(set(t) <= stub_properties for t in body["tasks"])
    assert all("input" not in t and "result" not in t for t in body["tasks"])
    jsonschema.validate(body, await schema(api, "tasks"))
    seen, path = [], "/v2/tasks?limit=2&sort_dir=asc"
    while path:
        async with api.admin.get(path) as resp:
            page = await resp.json()
        assert len(page["tasks"]) <= 2
        seen += [t["id"] for t in page["tasks"]]
        path = page.get("next")
    assert seen == [legacy, *native]
    async with api.admin.get("/v2/tasks?status=success") as resp:
        assert len((await resp.json())["tasks"]) == 4


@pytest.mark.parametrize("query, fragment", [
    ("status=done", "Invalid status value"), ("type=copy", "Invalid type value"),
    ("sort_dir=up", "Invalid sort direction"), ("limit=x", "integer"), ("limit=-1", "positive"),
    ("sort_key=owner", "Invalid sort key"), (f"marker={uuid.uuid4()}", "marker"),
])
async def test_bad_listing_parameters_are_400(api: Api, query: str, fragment: str) -> None:
    async with api.admin.get(f"/v2/tasks?{query}") as resp:
        await error_of(resp, 400, fragment)


async def test_unknown_task_is_404_and_delete_is_405(api: Api) -> None:
    image = await api.active_image(default_image())
    task = await api.last_task(image["id"])
    async with api.admin.get(f"/v2/tasks/{uuid.uuid4()}") as resp:
        await error_of(resp, 404)
    async with api.admin.delete(f"/v2/tasks/{task['id']}") as resp:
        await error_of(resp, 405, "expires_at")
        assert resp.headers["Allow"] == "GET"


async def test_task_schemas_have_glances_shape(api: Api) -> None:
    task = await schema(api, "task")
    assert task["name"] == "task" and task["additionalProperties"] is False
    assert set(task["properties"]) == {"id", "type", "status", "input", "result", "owner", "message", "image_id",
                                       "request_id", "user_id", "expires_at", "created_at", "updated_at",
                                       "self", "schema"}
    assert task["properties"]["status"]["enum"] == ["pending", "processing", "success", "failure"]
    tasks = await schema(api, "tasks")
    assert tasks["name"] == "tasks" and set(tasks["properties"]) == {"tasks", "first", "next", "schema"}
    assert {"input", "result", "message"}.isdisjoint(tasks["properties"]["tasks"]["items"]["properties"])
    assert [link["rel"] for link in tasks["links"]] == ["first", "next", "describedby"]


async def test_glance_direct_task_is_listed_as_api_image_import(api: Api) -> None:
    image = await api.p1.create()
    await api.p1.stage(image["id"], default_image())
    await api.p1.import_(image["id"], direct(["central"]))
    await api.wait_idle()
    async with api.admin.get("/v2/tasks") as resp:
        assert [t["type"] for t in (await resp.json())["tasks"]] == ["api_image_import"]
