"""x-openstack-request-id: on every response (errors, streamed downloads and
unauthenticated discovery too), kept when the client sends a well-formed one,
recorded by the tasks a request starts, and carried by its log lines."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

import pytest

from edgesync.logs import ContextFilter
from tests.api.conftest import Api, default_image, direct

REQUEST_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HEADER = "x-openstack-request-id"


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/", 300),
    ("GET", "/versions", 200),
    ("GET", "/v2/images", 200),
    ("GET", f"/v2/images/{uuid.uuid4()}", 404),
    ("GET", "/v2/no-such-thing", 404),
    ("DELETE", "/v2/schemas/image", 405),
])
async def test_every_response_carries_a_fresh_request_id(api: Api, method: str, path: str, status: int) -> None:
    seen = set()
    for _ in range(2):
        async with api.admin.request(method, path) as resp:
            assert resp.status == status
            assert REQUEST_ID.match(resp.headers[HEADER]), resp.headers.get(HEADER)
            seen.add(resp.headers[HEADER])
    assert len(seen) == 2, "each request gets its own id"


async def test_unauthenticated_answer_carries_one(api: Api) -> None:
    async with api.anon.get("/v2/images") as resp:
        assert resp.status == 401
        assert REQUEST_ID.match(resp.headers[HEADER])


async def test_a_well_formed_incoming_id_is_kept_a_malformed_one_replaced(api: Api) -> None:
    mine = f"req-{uuid.uuid4()}"
    async with api.admin.get("/v2/images", headers={"X-OpenStack-Request-ID": mine}) as resp:
        assert resp.headers[HEADER] == mine
    for bad in ("req-not-a-uuid", str(uuid.uuid4()), f"req-{uuid.uuid4()}\nINJECTED", f"REQ-{uuid.uuid4()}",
                f"req-{str(uuid.uuid4()).upper()}", f"req-{uuid.uuid4()}x"):
        async with api.admin.get("/v2/images", headers={"X-OpenStack-Request-ID": bad.replace("\n", " ")}) as resp:
            assert resp.headers[HEADER] != bad.replace("\n", " ")
            assert REQUEST_ID.match(resp.headers[HEADER])


async def test_a_streamed_download_carries_it(api: Api) -> None:
    image = await api.active_image(default_image())
    async with api.admin.get(f"/v2/images/{image['id']}/file") as resp:
        assert resp.status == 200
        assert REQUEST_ID.match(resp.headers[HEADER])
        await resp.read()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger("edgesync")
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_tasks_record_the_request_id_and_their_log_lines_carry_it(api: Api, records: _Records) -> None:
    image = await api.p1.create()
    await api.p1.stage(image["id"], default_image())
    mine = f"req-{uuid.uuid4()}"
    async with api.p1.post(f"/v2/images/{image['id']}/import", json=direct(["central", "dcn0"]),
                           headers={"X-OpenStack-Request-ID": mine}) as resp:
        assert resp.status == 202, await resp.text()
        assert resp.headers[HEADER] == mine
    await api.wait_idle()
    task = await api.last_task(image["id"])
    assert task["request_id"] == mine
    task_lines = [r for r in records.records if getattr(r, "task_id", None) == task["id"]]
    assert task_lines, "the import logged nothing under its task id"
    assert all(getattr(r, "request_id", None) == mine for r in task_lines)
