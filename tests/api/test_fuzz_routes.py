"""The fuzzer in the suite (issue 11, item 6): seeded hostile requests over
every route of the hub and of an agent's data endpoint; none may answer 5xx
or hang. `EDGESYNC_FUZZ_CASES` raises the count (`make fuzz`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgesync.errors import NotFound
from edgesync.stores.file import FileStore
from edgesync.transfer.http import data_routes
from tests.api.conftest import Api, default_image
from tests.api.fuzz_cases import Case, cases

CASES = int(os.environ.get("EDGESYNC_FUZZ_CASES", "1500"))
SEED = int(os.environ.get("EDGESYNC_FUZZ_SEED", "11"))
PER_REQUEST_S = 10.0


async def send(client: TestClient, case: Case, token: str | None) -> int:
    headers = dict(case.headers)
    if token is not None:
        headers.setdefault("X-Auth-Token", token)
    async with asyncio.timeout(PER_REQUEST_S):  # no hang
        async with client.request(case.method, case.path, params=case.query, headers=headers,
                                  data=case.body, skip_auto_headers=["Content-Type"]) as resp:
            await resp.read()
            return resp.status


async def run(client: TestClient, all_cases: list[Case], tokens: list[str | None]) -> list[str]:
    failures = []
    for i, case in enumerate(all_cases):
        status = await send(client, case, tokens[i % len(tokens)])
        if status >= 500:
            failures.append(f"{status}: {case}")
    return failures


async def test_no_hub_route_answers_5xx_to_hostile_input(api: Api) -> None:
    image = await api.active_image(default_image(), stores=("central",))
    tokens = [api.admin.token, api.p1.token, api.agent0.token, None, "tok-\u00e9"]
    failures = await run(api.client, cases(api.client.app, image["id"], CASES, SEED), tokens)
    assert not failures, f"{len(failures)} of {CASES} cases got a 5xx:\n" + "\n".join(failures[:30])


@pytest.fixture
async def agent_data(tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    store = FileStore("dcn0", tmp_path / "store")

    async def lookup(image_id: str) -> FileStore:
        if not await store.exists(image_id):
            raise NotFound(f"no published copy of {image_id}")
        return store

    async def authorize(request: web.Request, image_id: str) -> None:
        return None  # the fuzzer is past auth: what it reaches must still never 5xx

    app = web.Application()
    app.add_routes(data_routes(lookup, authorize))
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_no_agent_data_route_answers_5xx_to_hostile_input(agent_data: TestClient) -> None:
    failures = await run(agent_data, cases(agent_data.app, "0" * 8 + "-0000-4000-8000-" + "0" * 12,
                                           CASES // 3, SEED), [None])
    assert not failures, f"{len(failures)} cases got a 5xx:\n" + "\n".join(failures[:30])
