"""The admin CLI's HTTP client against the real hub (in-process): the hub's
refusals come back as errors carrying its status and message, and a hub that
isn't there says where the client looked."""

from __future__ import annotations

import socket
import uuid

import pytest

from edgesync.admin.client import ApiError, Connection, HubClient, HubUnreachable
from tests.api.conftest import TOKENS, Api, default_image


def _conn(api: Api, token: str | None = TOKENS["admin"][0]) -> Connection:
    return Connection(str(api.client.make_url("")).rstrip("/"), token)


async def test_answers_are_json(api: Api) -> None:
    image = await api.active_image(default_image())
    async with HubClient(_conn(api)) as hub:
        shown = await hub.get(f"/v2/images/{image['id']}")
        listed = await hub.get("/v2/images", name=image["name"])
    assert shown["id"] == image["id"] and image["id"] in [i["id"] for i in listed["images"]]


async def test_a_refusal_carries_the_hubs_status_and_message(api: Api) -> None:
    missing = str(uuid.uuid4())
    async with HubClient(_conn(api)) as hub:
        with pytest.raises(ApiError) as refused:
            await hub.get(f"/v2/images/{missing}")
    assert refused.value.http_status == 404
    assert refused.value.message == f"Not Found (404): No image found with ID {missing}"


async def test_a_wrong_token_is_401_with_what_to_do(api: Api) -> None:
    async with HubClient(_conn(api, token="not-a-token")) as hub:
        with pytest.raises(ApiError) as refused:
            await hub.get("/edgesync/v1/sites")
    assert refused.value.http_status == 401 and "check the token" in refused.value.message


async def test_no_hub_at_the_url_says_where_it_looked() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with HubClient(Connection(f"http://127.0.0.1:{port}", None)) as hub:
        with pytest.raises(HubUnreachable, match=f"127.0.0.1:{port}.*--url"):
            await hub.get("/v2/images")
