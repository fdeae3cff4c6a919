"""Nothing a client sends to the list filters, the tasks API or the metadefs
API is answered with a 5xx: odd query strings and bodies are 4xx, and a
refused task leaves no image behind."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api

PATHS = ["/v2/images?id=in:", "/v2/images?name=in:", "/v2/images?sort=,", "/v2/images?sort=:asc",
         "/v2/images?sort_key=", "/v2/images?disk_format=in:,", "/v2/images?size_min=", "/v2/images?created_at=",
         "/v2/images?limit=99999999999999999999", "/v2/images?marker=", "/v2/tasks?limit=1&marker=x",
         "/v2/tasks?sort_key=", "/v2/metadefs/namespaces?sort_key=", "/v2/metadefs/namespaces?limit=x",
         "/v2/metadefs/namespaces?marker=nope", "/v2/metadefs/namespaces/x/objects/y", "/v2/metadefs/namespaces?resource_types=,",
         "/v2/schemas/metadefs/nope", "/v2/images?created_at=gt:2020-13-45T00:00:00Z", "/v2/images?os_hidden=",
         "/v2/images?visibility=", "/v2/images?tag=", "/v2/images?sort_dir=", "/v2/images?name=eq:"]


@pytest.mark.parametrize("path", PATHS)
async def test_no_5xx(api: Api, path: str) -> None:
    await api.p1.create(name="x")
    async with api.admin.get(path) as resp:
        assert resp.status < 500, (path, resp.status, await resp.text())


BODIES = [None, "", "[]", "{}", '{"namespace": null}', '{"namespace": "a", "properties": []}',
          '{"namespace": "a", "objects": [1]}', '{"namespace": "a", "tags": [1]}', '{"namespace": "a", "resource_type_associations": [{}]}',
          '{"namespace": "a", "resource_type_associations": [{"name": "r"}, {"name": "r"}]}',
          '{"namespace": "a", "properties": {"p": {"title": "t", "type": "string", "pattern": "("}}}',
          '{"namespace": "a", "owner": 5}', '{"namespace": "' + "x"*80 + '"}']


@pytest.mark.parametrize("body", BODIES)
async def test_ns_no_5xx(api: Api, body: str | None) -> None:
    async with api.admin.post("/v2/metadefs/namespaces", data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status < 500, (body, resp.status, await resp.text())


SUB = [("POST", "/objects", '{"name": 5}'), ("POST", "/objects", '{"name": "o", "properties": {"p": 1}}'),
       ("POST", "/properties", '{"name": "p"}'), ("POST", "/properties", '{"name": "p", "title": "t", "type": "string", "default": {"a": [1]}}'),
       ("PUT", "/properties/zz", '{"name": "p", "title": "t", "type": "string"}'), ("POST", "/tags", '{"tags": "x"}'),
       ("POST", "/tags", '{"tags": [{"name": 1}]}'), ("PUT", "/tags/none", '{"name": "x"}'), ("POST", "/tags/" + "t"*100, None),
       ("POST", "/resource_types", '{"name": ""}'), ("PUT", "", '{"namespace": "b", "bogus": 1}'), ("PUT", "", '[]'),
       ("DELETE", "/resource_types/none", None), ("DELETE", "/objects/none", None)]


@pytest.mark.parametrize("method, sub, body", SUB)
async def test_sub_no_5xx(api: Api, method: str, sub: str, body: str | None) -> None:
    async with api.admin.post("/v2/metadefs/namespaces", json={"namespace": "n"}) as resp:
        assert resp.status == 201
    async with api.admin.request(method, "/v2/metadefs/namespaces/n" + sub, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status < 500, (method, sub, body, resp.status, await resp.text())


TASKS = ['{"type": "import", "input": {"import_from": "http://127.0.0.1:1/x", "import_from_format": "raw", "image_properties": {"id": "nope"}}}',
         '{"type": "import", "input": {"import_from": "http://127.0.0.1:1/x", "import_from_format": "raw", "image_properties": {"os_glance_x": "1"}}}',
         '{"type": "import", "input": {"import_from": "http://127.0.0.1:1/x", "import_from_format": 5, "image_properties": {}}}',
         '{"type": 5, "input": {}}']


@pytest.mark.parametrize("body", TASKS)
async def test_tasks_no_5xx(api: Api, body: str) -> None:
    async with api.admin.post("/v2/tasks", data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status < 500, (body, resp.status, await resp.text())
    async with api.admin.get("/v2/images") as resp:
        assert (await resp.json())["images"] == []
