"""edgesync.metrics on its own: registries per daemon, live gauges read at
scrape time, slow sources that can't hold a scrape, copy outcomes, failure
reasons, and the HTTP middleware's route templates."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgesync.bus import Heartbeat, SiteState, SiteStatus
from edgesync.config import load_site
from edgesync.errors import (
    BadRequest,
    ChecksumMismatch,
    SizeMismatch,
    StoreError,
    StoreFull,
    StoreImageExists,
    StoreImageInUse,
    StoreUnavailable,
    failure_reason,
)
from edgesync.hub.remote import AgentTaskFailed, SiteOffline
from edgesync.hub.sites import SiteRegistry
from edgesync.metrics import (
    FAILURE_REASONS,
    AgentFigures,
    AgentMetrics,
    HubMetrics,
    Metrics,
    http_middleware,
)
from edgesync.stores.base import StoreCapacity
from edgesync.transfer.http import ChunkDigestMismatch, ServedCounters, TransferError
from tests.fixtures.metrics_text import Scrape

SITES = ("central", "dcn0", "dcn1")


async def scrape(metrics: Metrics) -> Scrape:
    async with asyncio.timeout(10):  # a guard against hanging, not a speed check
        return Scrape.parse((await metrics.render()).decode())


# --- registries ---------------------------------------------------------------------------


async def test_daemons_in_one_process_count_apart() -> None:
    first, second = HubMetrics(SITES), HubMetrics(SITES)
    AgentMetrics("dcn0")
    first.observe_request("/v2/images", "GET", 200, 0.01)
    assert (await scrape(first)).value("edgesync_api_requests_total", route="/v2/images", method="GET",
                                       status="200") == 1
    assert (await scrape(second)).series("edgesync_api_requests_total") == []


async def test_every_site_series_exists_from_the_start() -> None:
    m = await scrape(HubMetrics(SITES))
    for site in SITES:
        assert m.value("edgesync_copies_in_flight", site=site) == 0
        assert m.value("edgesync_copy_duration_seconds_count", site=site, outcome="success") == 0
        assert m.value("edgesync_copy_duration_seconds_count", site=site, outcome="failure") == 0
        assert {s["reason"] for s in m.series("edgesync_copy_failures_total") if s["site"] == site} == set(
            FAILURE_REASONS)


async def test_series_names_carry_their_units() -> None:
    m = await scrape(HubMetrics(SITES))
    for family, kind in m.types.items():
        assert family.startswith("edgesync_"), family
        if kind == "counter":
            assert family.endswith("_total") or f"{family}_total" in {n for n, _ in m.samples}, family


# --- copies -------------------------------------------------------------------------------


async def test_a_copy_is_in_flight_while_it_runs_then_timed_with_its_outcome() -> None:
    metrics = HubMetrics(SITES)
    with metrics.copy("dcn0"):
        m = await scrape(metrics)
        assert m.value("edgesync_copies_in_flight", site="dcn0") == 1
    with metrics.copy("dcn1") as timing:
        timing.failed("site_offline")
    m = await scrape(metrics)
    assert m.value("edgesync_copies_in_flight", site="dcn0") == 0
    assert m.value("edgesync_copy_duration_seconds_count", site="dcn0", outcome="success") == 1
    assert m.value("edgesync_copy_duration_seconds_count", site="dcn1", outcome="failure") == 1
    assert m.value("edgesync_copy_failures_total", site="dcn1", reason="site_offline") == 1


async def test_a_copy_cancelled_at_shutdown_has_no_outcome() -> None:
    metrics = HubMetrics(SITES)
    with pytest.raises(asyncio.CancelledError), metrics.copy("dcn0"):
        raise asyncio.CancelledError()
    m = await scrape(metrics)
    assert m.value("edgesync_copies_in_flight", site="dcn0") == 0
    assert m.total("edgesync_copy_duration_seconds_count", site="dcn0") == 0


async def test_a_copy_that_raises_unexpectedly_is_an_internal_failure() -> None:
    metrics = HubMetrics(SITES)
    with pytest.raises(KeyError), metrics.copy("dcn0"):
        raise KeyError("bug")
    assert (await scrape(metrics)).value("edgesync_copy_failures_total", site="dcn0", reason="internal") == 1


@pytest.mark.parametrize(("exc", "reason"), [
    (SiteOffline("site offline: …"), "site_offline"),
    (ChecksumMismatch("copy does not match"), "checksum_mismatch"),
    (ChunkDigestMismatch("range"), "transfer"),
    (TransferError("HTTP 503"), "transfer"),
    (StoreImageInUse("clones"), "in_use"),
    (StoreImageExists("there"), "image_exists"),
    (SizeMismatch("short"), "size_mismatch"),
    (StoreFull("full"), "store_full"),
    (StoreUnavailable("mons"), "store_unavailable"),
    (StoreError("ENOTDIR"), "store_error"),
    (BadRequest("odd"), "store_error"),
    (RuntimeError("bug"), "internal"),
    (AgentTaskFailed("dcn0: …", code="checksum_mismatch", retryable=False), "checksum_mismatch"),
    (AgentTaskFailed("dcn0: …", code="store_full", retryable=False), "store_full"),
    (AgentTaskFailed("dcn0: …", code="transfer_error", retryable=True), "transfer"),
    (AgentTaskFailed("dcn0: …", code="chunk_digest_mismatch", retryable=True), "transfer"),
    (AgentTaskFailed("dcn0: …", code="internal", retryable=False), "internal"),
    (AgentTaskFailed("dcn0: …", code="something_new", retryable=False), "store_error"),
    (AgentTaskFailed("dcn0: …", code=None, retryable=False), "store_error"),
])
def test_failure_reasons_are_a_closed_set(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason
    assert reason in FAILURE_REASONS


async def test_an_observer_counts_into_its_site() -> None:
    metrics = AgentMetrics("dcn0")
    observer = metrics.copies
    observer.written(4096)
    observer.received(8192)
    observer.digest_mismatch("chunk")
    observer.resumed()
    m = await scrape(metrics)
    assert m.value("edgesync_replicated_bytes_total", site="dcn0") == 4096
    assert m.value("edgesync_transfer_bytes_total", site="dcn0") == 8192
    assert m.value("edgesync_digest_mismatches_total", site="dcn0", kind="chunk") == 1
    assert m.value("edgesync_digest_mismatches_total", site="dcn0", kind="image") == 0
    assert m.value("edgesync_copy_resumes_total", site="dcn0") == 1


async def test_what_the_data_routes_served_is_read_at_scrape_time() -> None:
    metrics, served = HubMetrics(SITES), ServedCounters()
    metrics.watch_served(served)
    served.served_bytes_total, served.served_ranges_total, served.shared_ranges_total = 8 << 20, 2, 1
    m = await scrape(metrics)
    assert m.types["edgesync_transfer_served_bytes_total"] == "counter"
    assert m.value("edgesync_transfer_served_bytes_total") == 8 << 20
    assert m.value("edgesync_transfer_served_ranges_total") == 2
    assert m.value("edgesync_transfer_shared_ranges_total") == 1


# --- live state ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_site_liveness_is_read_from_the_registry_at_scrape_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sites = []
    for name in ("central", "dcn0", "dcn1"):
        path = tmp_path / f"{name}.toml"
        role = "central" if name == "central" else "edge"
        path.write_text(f'name = "{name}"\nrole = "{role}"\navailability_zone = "{name}"\n'
                        f'[store]\ntype = "file"\npath = "{tmp_path / name}"\n')
        sites.append(load_site(path))
    clock = Clock()
    registry = SiteRegistry(tuple(sites), stale_after_s=5, clock=clock)
    metrics = HubMetrics(SITES)
    metrics.watch_sites(registry)

    registry.on_status("dcn0", SiteStatus(site="dcn0", state=SiteState.ONLINE, availability_zone="dcn0"))
    clock.now += 2
    m = await scrape(metrics)
    assert (m.value("edgesync_site_up", site="dcn0"), m.value("edgesync_site_up", site="dcn1")) == (1, 0)
    assert m.value("edgesync_site_heartbeat_age_seconds", site="dcn0") == 2
    assert m.value("edgesync_site_heartbeat_age_seconds", site="dcn1") is None  # never heard

    clock.now += 10  # no heartbeat for longer than stale_after_s
    assert (await scrape(metrics)).value("edgesync_site_up", site="dcn0") == 0
    registry.on_heartbeat("dcn0", Heartbeat(site="dcn0", ts=clock.now))
    m = await scrape(metrics)
    assert m.value("edgesync_site_up", site="dcn0") == 1
    assert m.value("edgesync_site_heartbeat_age_seconds", site="dcn0") == 0


async def test_heartbeat_lag_is_observed_per_site() -> None:
    import time

    metrics = HubMetrics(SITES)
    metrics.heartbeat("dcn0", time.time() - 3.0)
    metrics.heartbeat("dcn0", time.time() + 60.0)  # an agent's clock ahead: counted as no lag
    m = await scrape(metrics)
    assert m.value("edgesync_event_lag_seconds_count", site="dcn0") == 2
    assert m.value("edgesync_event_lag_seconds_bucket", site="dcn0", le="1.0") == 1
    assert m.value("edgesync_event_lag_seconds_bucket", site="dcn0", le="5.0") == 2


async def test_an_agent_shows_its_figures_only_while_running() -> None:
    figures: list[AgentFigures | None] = [None]
    metrics = AgentMetrics("dcn1")
    metrics.watch_agent(lambda: figures[0])
    assert (await scrape(metrics)).series("edgesync_tasks_in_flight") == []
    figures[0] = AgentFigures(tasks_queued=3, tasks_in_flight=2, owed_results=1, broker_connected=True)
    m = await scrape(metrics)
    assert m.value("edgesync_tasks_queued", site="dcn1") == 3
    assert m.value("edgesync_tasks_in_flight", site="dcn1") == 2
    assert m.value("edgesync_agent_outbox_depth", site="dcn1") == 1
    assert m.value("edgesync_broker_connected", site="dcn1") == 1


async def test_a_broken_reader_leaves_the_rest_of_the_scrape_intact() -> None:
    metrics = AgentMetrics("dcn1")

    def broken() -> AgentFigures:
        raise RuntimeError("bug")

    metrics.watch_agent(broken)
    m = await scrape(metrics)
    assert m.series("edgesync_tasks_in_flight") == []
    assert m.value("edgesync_replicated_bytes_total", site="dcn1") == 0


class SlowCapacity:
    """A store capacity read that waits until released (a slow cluster)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.fail = False

    async def __call__(self) -> StoreCapacity | None:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise StoreUnavailable("no answer from the monitors")
        return StoreCapacity(used_bytes=10, free_bytes=90)


@pytest.fixture
def quick_metrics(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    monkeypatch.setattr(Metrics, "SCRAPE_WAIT_S", 0.05)
    monkeypatch.setattr(Metrics, "CAPACITY_TTL_S", 0.0)
    return Metrics()


async def test_a_slow_capacity_read_does_not_hold_the_scrape(quick_metrics: Metrics) -> None:
    read = SlowCapacity()
    quick_metrics.watch_capacity("dcn0", read)
    m = await scrape(quick_metrics)  # returns although the read is still waiting
    assert m.series("edgesync_store_free_bytes") == []
    await scrape(quick_metrics)
    assert read.calls == 1  # one read at a time, not one more per scrape
    read.release.set()
    await asyncio.sleep(0)
    m = await scrape(quick_metrics)
    assert (m.value("edgesync_store_used_bytes", store="dcn0"), m.value("edgesync_store_free_bytes", store="dcn0")) \
        == (10, 90)


async def test_a_failed_capacity_read_shows_nothing(quick_metrics: Metrics) -> None:
    read = SlowCapacity()
    read.release.set()
    quick_metrics.watch_capacity("dcn0", read)
    assert (await scrape(quick_metrics)).value("edgesync_store_free_bytes", store="dcn0") == 90
    read.fail = True
    await scrape(quick_metrics)  # starts the failing read
    await asyncio.sleep(0)
    assert (await scrape(quick_metrics)).series("edgesync_store_free_bytes") == []


# --- HTTP -----------------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, Metrics]]:
    metrics = Metrics()

    async def item(request: web.Request) -> web.Response:
        if request.match_info["item_id"] == "bug":
            raise RuntimeError("bug")
        if request.match_info["item_id"] == "gone":
            raise web.HTTPGone()
        return web.json_response({"id": request.match_info["item_id"]})

    app = web.Application(middlewares=[http_middleware(metrics)])
    app.router.add_get("/items/{item_id}", item)
    app.router.add_get("/metrics", metrics.handle_scrape)
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    try:
        yield test_client, metrics
    finally:
        await test_client.close()


async def test_requests_are_labelled_by_route_template_never_by_path(client: tuple[TestClient, Metrics]) -> None:
    http, metrics = client
    for item_id in ("a", "b", "c", "bug", "gone"):
        async with http.get(f"/items/{item_id}") as resp:
            await resp.read()
    async with http.get("/elsewhere/x") as resp:
        assert resp.status == 404
    async with http.request("PROPFIND", "/items/a") as resp:  # a method outside the usual set
        assert resp.status == 405
    m = await scrape(metrics)
    counts = {(s["route"], s["method"], s["status"]): m.value("edgesync_api_requests_total", **s)
              for s in m.series("edgesync_api_requests_total")}
    assert counts == {
        ("/items/{item_id}", "GET", "200"): 3,
        ("/items/{item_id}", "GET", "500"): 1,
        ("/items/{item_id}", "GET", "410"): 1,
        ("unmatched", "GET", "404"): 1,
        ("unmatched", "OTHER", "405"): 1,
    }
    assert m.total("edgesync_api_request_duration_seconds_count", route="/items/{item_id}", method="GET") == 5
    assert m.value("edgesync_api_request_duration_seconds_count", route="/items/{item_id}", method="GET",
                   status="200") == 3


async def test_the_metrics_page_is_prometheus_text(client: tuple[TestClient, Metrics]) -> None:
    http, _ = client
    async with http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        Scrape.parse(await resp.text())


async def test_prometheus_own_linter_finds_nothing_to_fix() -> None:
    """`promtool check metrics`: naming, units, _total on counters, help texts."""
    hub = HubMetrics(SITES)
    with hub.copy("dcn0") as timing:
        timing.failed("transfer")
    hub.observe_request("/v2/images/{image_id}", "GET", 200, 0.02)
    hub.heartbeat("dcn0", 0.0)
    hub.watch_served(ServedCounters(served_bytes_total=1, served_ranges_total=1))
    agent = AgentMetrics("dcn0")
    agent.watch_agent(lambda: AgentFigures(tasks_queued=1, tasks_in_flight=1, owed_results=0, broker_connected=True))
    agent.watch_capacity("dcn0", lambda: _capacity(StoreCapacity(used_bytes=1, free_bytes=2)))
    for metrics, live in ((hub, b"edgesync_copy_failures_total"), (agent, b"edgesync_store_free_bytes")):
        page = await metrics.render()
        assert live in page  # the lint saw the series, not an empty page
        lint = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=page,
                                       capture_output=True, timeout=30)
        assert lint.returncode == 0 and not lint.stdout.strip(), (lint.stdout + lint.stderr).decode()


async def _capacity(value: StoreCapacity) -> StoreCapacity:
    return value
