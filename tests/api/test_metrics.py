"""The hub's /metrics, in process on real file stores: what a copy, a failed
copy and API traffic leave in it."""

from __future__ import annotations

from tests.api.conftest import (
    Api,
    break_store,
    copy,
    data_bytes,
    default_image,
    repair_store,
    running_api,
    write_hub_files,
)
from tests.fixtures.metrics_text import Scrape


async def scrape(api: Api) -> Scrape:
    async with api.anon.get("/metrics") as resp:  # Prometheus sends no token
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.content_type == "text/plain"
    return Scrape.parse(text)


async def test_a_copy_is_counted_by_site_with_its_bytes_and_the_copies_held(api: Api) -> None:
    content = default_image()
    image = await api.active_image(content, stores=("central", "dcn0"))
    m = await scrape(api)
    assert m.value("edgesync_copy_duration_seconds_count", site="dcn0", outcome="success") == 1
    assert m.value("edgesync_copy_duration_seconds_count", site="dcn1", outcome="success") == 0
    assert m.total("edgesync_copy_failures_total") == 0
    assert m.value("edgesync_copies_in_flight", site="dcn0") == 0
    # Only data crosses: the holes of the 8 MiB image are never written.
    assert m.value("edgesync_replicated_bytes_total", site="dcn0") == data_bytes(content)
    assert m.value("edgesync_replicated_bytes_total", site="dcn1") == 0
    assert {s: m.value("edgesync_store_copies", store=s) for s in ("central", "dcn0", "dcn1")} == {
        "central": 1, "dcn0": 1, "dcn1": 0}
    assert m.value("edgesync_outbox_depth") == 0  # no bus: nothing waits for agents
    for store in ("central", "dcn0", "dcn1"):  # file stores: statvfs of their filesystem
        free = m.value("edgesync_store_free_bytes", store=store)
        used = m.value("edgesync_store_used_bytes", store=store)
        assert free is not None and free > 0 and used is not None and used > 0
    assert image["id"] not in str(m.samples)  # ids never become label values


async def test_a_failed_copy_is_counted_with_its_reason(api: Api) -> None:
    image = await api.active_image(default_image(seed=2))
    break_store(api, "dcn1")
    try:
        await api.admin.import_(image["id"], copy(["dcn0", "dcn1"], must_succeed=False))
        await api.wait_idle()
    finally:
        repair_store(api, "dcn1")
    m = await scrape(api)
    assert m.value("edgesync_copy_duration_seconds_count", site="dcn1", outcome="failure") == 1
    assert m.value("edgesync_copy_failures_total", site="dcn1", reason="store_error") == 1
    assert m.total("edgesync_copy_failures_total", site="dcn0") == 0
    assert m.value("edgesync_copy_duration_seconds_count", site="dcn0", outcome="success") == 1


async def test_requests_are_counted_by_route_template_method_and_status(api: Api) -> None:
    first = await api.p1.create()
    second = await api.p1.create()
    for image in (first, second):
        await api.p1.show(image["id"])
    async with api.anon.get(f"/v2/images/{first['id']}") as resp:
        assert resp.status == 401
    async with api.p1.get("/v2/no/such/thing") as resp:
        assert resp.status == 404
    m = await scrape(api)
    route = "/v2/images/{image_id}"
    assert m.value("edgesync_api_requests_total", route="/v2/images", method="POST", status="201") == 2
    assert m.value("edgesync_api_requests_total", route=route, method="GET", status="200") == 2
    assert m.value("edgesync_api_requests_total", route=route, method="GET", status="401") == 1
    assert m.value("edgesync_api_requests_total", route="unmatched", method="GET", status="404") == 1
    assert m.value("edgesync_api_request_duration_seconds_count", route=route, method="GET", status="200") == 2
    assert m.value("edgesync_api_request_duration_seconds_count", route=route, method="GET", status="401") == 1
    routes = {labels["route"] for labels in m.series("edgesync_api_requests_total")}
    assert not any(first["id"] in r or second["id"] in r for r in routes), routes


async def test_each_hub_has_its_own_registry(api: Api) -> None:
    """Two hubs in one process (as these tests run them) count apart."""
    await api.p1.create()
    other_dir = api.dir / "second"
    other_dir.mkdir()
    write_hub_files(other_dir, source_port=1)
    async with running_api(other_dir) as other:
        m = await scrape(other)
    assert m.value("edgesync_api_requests_total", route="/v2/images", method="POST", status="201") is None
    assert (await scrape(api)).value("edgesync_api_requests_total", route="/v2/images", method="POST",
                                     status="201") == 1
