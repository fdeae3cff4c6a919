"""Every Prometheus metric edgesync exposes; the one module importing prometheus_client.

Names start with `edgesync_` and carry their unit (`_bytes`, `_seconds`,
`_total` for counters). The label `site` is always the site whose store
receives a copy; `store` names a store (a store is named after its site).
Label values come from closed sets (sites, route templates, failure
reasons), never from request paths or image ids, so series stay few.

Two kinds of metric:

* Events, counted as they happen: API requests, copies and their outcome,
  bytes written and received, resumes, digest mismatches.
* Live state, read when Prometheus scrapes: in-memory state (site liveness,
  an agent's tasks) straight from its owner; slower sources (the catalog,
  a store's capacity) refreshed by `/metrics` before it renders, each bounded
  in time and run off the event loop (aiosqlite's thread, the store's
  executor), so a scrape never blocks the loop nor hangs on a slow cluster.

Each daemon object owns its `CollectorRegistry`: tests run several hubs in
one process, and a process-global registry would refuse the second one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgesync.errors import FailureReason

# The definitions (names, kinds, labels, buckets) live in specs.py; series_names and
# FAILURE_REASONS are re-exported for dashboards and tests.
from edgesync.metrics.specs import (
    AGENT_OUTBOX_DEPTH,
    API_DURATION,
    API_REQUESTS,
    BROKER_CONNECTED,
    COPIES_IN_FLIGHT,
    COPY_DURATION,
    COPY_FAILURES,
    COPY_OUTCOMES,
    COPY_RESUMES,
    DIGEST_KINDS,
    DIGEST_MISMATCHES,
    EGRESS_BYTES,
    EVENT_LAG,
    HEARTBEAT_AGE,
    OUTBOX_DEPTH,
    OUTBOX_OLDEST_AGE,
    REPLICATED_BYTES,
    REQUESTS_WAITED,
    SENT_BYTES,
    SERVED_BYTES,
    SERVED_RANGES,
    SHARED_RANGES,
    SITE_REQUESTS_IN_FLIGHT,
    SITE_REQUESTS_IN_FLIGHT_MAX,
    SITE_UP,
    STORE_COPIES,
    STORE_FREE,
    STORE_USED,
    TASKS_IN_FLIGHT,
    TASKS_QUEUED,
    TRANSFER_BYTES,
    Spec,
)
from edgesync.metrics.specs import (
    FAILURE_REASONS as FAILURE_REASONS,
)
from edgesync.metrics.specs import (
    series_names as series_names,
)
from edgesync.observer import CopyObserver
from edgesync.stores.base import StoreCapacity

if TYPE_CHECKING:
    from edgesync.catalog import Catalog
    from edgesync.hub.sites import SiteRegistry
    from edgesync.transfer.counters import ServedCounters
    from edgesync.transfer.serving_limits import ServingLimits

log = logging.getLogger(__name__)
T = TypeVar("T")

# A `_created` series beside every counter and histogram doubles the series
# for a timestamp Prometheus 2 doesn't use (process-wide, and only this
# module touches prometheus_client).
disable_created_metrics()

NAMESPACE = "edgesync"
METRICS_PATH = "/metrics"


# --- what a copy reports as it runs ------------------------------------------------------


class _SiteCopies(CopyObserver):
    """Counts into one site's series (children bound once: cheap per call)."""

    def __init__(self, metrics: Metrics, site: str, resumes: Counter | None) -> None:
        self._written = metrics.replicated_bytes.labels(site)
        self._received = metrics.transfer_bytes.labels(site)
        self._mismatches = {kind: metrics.digest_mismatches.labels(site, kind) for kind in DIGEST_KINDS}
        self._resumes = resumes.labels(site) if resumes is not None else None

    def written(self, nbytes: int) -> None:
        self._written.inc(nbytes)

    def received(self, nbytes: int) -> None:
        self._received.inc(nbytes)

    def digest_mismatch(self, kind: str) -> None:
        self._mismatches[kind].inc()

    def resumed(self) -> None:
        if self._resumes is not None:
            self._resumes.inc()


# --- live state ----------------------------------------------------------------------------

Reading = Iterable[tuple[Sequence[str], float]]
Refresh = Callable[[], Awaitable[None]]


class _LiveGauges(Collector):
    """Gauges (and counters kept as plain attributes elsewhere) whose values
    are read from their owners at each scrape."""

    def __init__(self) -> None:
        self._readers: dict[Spec, list[Callable[[], Reading]]] = {}

    def add(self, spec: Spec, read: Callable[[], Reading]) -> None:
        self._readers.setdefault(spec, []).append(read)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for spec, readers in list(self._readers.items()):
            kind = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            family = kind(spec.name, spec.help, labels=spec.labels)
            for read in readers:
                try:
                    for labels, value in read():
                        family.add_metric(list(labels), value)
                except Exception:  # one broken reader must not fail the whole scrape
                    log.exception("reading %s for /metrics failed", spec.name)
            yield family


class _Refreshed(Generic[T]):
    """A value read from a slow source (a store, the catalog) in a task of
    its own, at most every `ttl_s`. A scrape waits for a read at most
    `wait_s` and never cancels it halfway: a slow source shows its last
    answer instead of holding the scrape; a failed read shows nothing."""

    def __init__(self, read: Callable[[], Awaitable[T | None]], *, what: str, ttl_s: float, wait_s: float) -> None:
        self.value: T | None = None
        self._read = read
        self._what = what
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._read_at = float("-inf")
        self._reading: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        if self._reading is None and time.monotonic() - self._read_at >= self._ttl_s:
            self._reading = asyncio.create_task(self._read_once(), name=f"metrics-{self._what}")
        if self._reading is not None:
            await asyncio.wait([self._reading], timeout=self._wait_s)

    async def _read_once(self) -> None:
        try:
            self.value = await self._read()
        except Exception as exc:  # noqa: BLE001 — whatever the source raised, scrapes go on
            log.warning("%s for /metrics unavailable: %s", self._what, exc)
            self.value = None
        finally:
            self._read_at = time.monotonic()
            self._reading = None


# --- the registries ----------------------------------------------------------------------------


class Metrics:
    """What both daemons expose: API traffic, bytes copied, store capacity."""

    CAPACITY_TTL_S = 15.0
    SCRAPE_WAIT_S = 2.0

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(namespace=NAMESPACE, registry=self.registry)
        self._live = _LiveGauges()
        self.registry.register(self._live)
        self._refreshers: list[Refresh] = []
        self.api_requests = self._counter(API_REQUESTS)
        self.api_duration = self._histogram(API_DURATION)
        self.replicated_bytes = self._counter(REPLICATED_BYTES)
        self.transfer_bytes = self._counter(TRANSFER_BYTES)
        self.digest_mismatches = self._counter(DIGEST_MISMATCHES)
        self._resumes: Counter | None = None

    def _counter(self, spec: Spec) -> Counter:
        return Counter(spec.name, spec.help, spec.labels, registry=self.registry)

    def _gauge(self, spec: Spec) -> Gauge:
        return Gauge(spec.name, spec.help, spec.labels, registry=self.registry)

    def _histogram(self, spec: Spec) -> Histogram:
        return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=self.registry)

    def live(self, spec: Spec, read: Callable[[], Reading]) -> None:
        """Expose `spec` with the values `read()` returns at each scrape."""
        self._live.add(spec, read)

    def for_site(self, site: str) -> CopyObserver:
        """The observer of copies into `site`'s store (its series start at 0)."""
        return _SiteCopies(self, site, self._resumes)

    def watch_capacity(self, store: str, read: Callable[[], Awaitable[StoreCapacity | None]]) -> None:
        """Expose a store's used and free bytes, as `read()` (its `capacity()`)
        tells them; nothing while it can't."""
        capacity = _Refreshed(read, what=f"capacity of store {store}",
                              ttl_s=self.CAPACITY_TTL_S, wait_s=self.SCRAPE_WAIT_S)
        self._refreshers.append(capacity.refresh)
        label = (store,)
        self.live(STORE_USED, lambda: [] if capacity.value is None else [(label, capacity.value.used_bytes)])
        self.live(STORE_FREE, lambda: [] if capacity.value is None else [(label, capacity.value.free_bytes)])

    def watch_served(self, counters: ServedCounters) -> None:
        """Expose what the daemon's data routes served (their plain counters)."""
        self.live(SERVED_BYTES, lambda: [((), counters.served_bytes_total)])
        self.live(SERVED_RANGES, lambda: [((), counters.served_ranges_total)])
        self.live(SHARED_RANGES, lambda: [((), counters.shared_ranges_total)])
        self.live(SENT_BYTES, lambda: [((), counters.sent_bytes_total)])

    def watch_serving_limits(self, limits: ServingLimits) -> None:
        """Expose what the hub's serving limits count (see transfer/serving_limits.py)."""
        self.live(SITE_REQUESTS_IN_FLIGHT, lambda: [((site,), n) for site, n in limits.in_flight.items()])
        self.live(SITE_REQUESTS_IN_FLIGHT_MAX, lambda: [((site,), n) for site, n in limits.peak_in_flight.items()])
        self.live(REQUESTS_WAITED, lambda: [((), limits.waited_total)])
        self.live(EGRESS_BYTES, lambda: [((), limits.sent_bytes)])

    def observe_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        self.api_requests.labels(route, method, str(status)).inc()
        self.api_duration.labels(route, method, str(status)).observe(duration_s)

    async def render(self) -> bytes:
        """The exposition text, live sources refreshed first (each bounded)."""
        await asyncio.gather(*(refresh() for refresh in self._refreshers))
        return generate_latest(self.registry)

    async def handle_scrape(self, _request: web.Request) -> web.Response:
        return web.Response(body=await self.render(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


class HubMetrics(Metrics):
    """The hub: copies by site, site liveness, catalog and outbox."""

    CATALOG_WAIT_S = 2.0

    def __init__(self, sites: Sequence[str], registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.sites = tuple(sites)
        self.copy_duration = self._histogram(COPY_DURATION)
        self.copy_failures = self._counter(COPY_FAILURES)
        self.copies_in_flight = self._gauge(COPIES_IN_FLIGHT)
        self.event_lag = self._histogram(EVENT_LAG)
        for site in self.sites:  # every site's series exist from the start, at 0
            for outcome in COPY_OUTCOMES:
                self.copy_duration.labels(site, outcome)
            for reason in FAILURE_REASONS:
                self.copy_failures.labels(site, reason)
            self.copies_in_flight.labels(site)

    def copy(self, site: str) -> CopyTiming:
        """Time one copy to `site`: `with metrics.copy(site) as copy: … copy.failed(reason)`."""
        return CopyTiming(self, site)

    def heartbeat(self, site: str, stamped_at: float) -> None:
        """A heartbeat `site`'s agent stamped at `stamped_at` (unix time) is handled now."""
        self.event_lag.labels(site).observe(max(0.0, time.time() - stamped_at))

    def watch_sites(self, registry: SiteRegistry) -> None:
        for entry in registry.snapshot():
            self.event_lag.labels(entry["name"])

        def up() -> Reading:
            return [((s["name"],), 1.0 if s["up"] else 0.0) for s in registry.snapshot()]

        def age() -> Reading:
            return [((s["name"],), s["heartbeat_age_s"]) for s in registry.snapshot()
                    if s["heartbeat_age_s"] is not None]

        self.live(SITE_UP, up)
        self.live(HEARTBEAT_AGE, age)

    def watch_catalog(self, catalog: Catalog, stores: Sequence[str]) -> None:
        snapshot = _CatalogSnapshot(catalog, tuple(stores), wait_s=self.CATALOG_WAIT_S)
        self._refreshers.append(snapshot.refresh)
        self.live(STORE_COPIES, snapshot.copies)
        self.live(OUTBOX_DEPTH, snapshot.outbox_depth)
        self.live(OUTBOX_OLDEST_AGE, snapshot.outbox_age)


class CopyTiming:
    """One copy to a site: counted in flight while it runs; its duration
    recorded with its outcome when it ends (not when it is cancelled, as at
    shutdown: the restarted hub finishes that copy)."""

    def __init__(self, metrics: HubMetrics, site: str) -> None:
        self._metrics = metrics
        self._site = site
        self._reason: str | None = None
        self._started = 0.0

    def failed(self, reason: str) -> None:
        self._reason = reason if reason in FAILURE_REASONS else FailureReason.INTERNAL

    def __enter__(self) -> CopyTiming:
        self._started = time.monotonic()
        self._metrics.copies_in_flight.labels(self._site).inc()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        m, site = self._metrics, self._site
        m.copies_in_flight.labels(site).dec()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            return
        if exc_type is not None and self._reason is None:
            self._reason = FailureReason.INTERNAL
        outcome = "success" if self._reason is None else "failure"
        m.copy_duration.labels(site, outcome).observe(time.monotonic() - self._started)
        if self._reason is not None:
            m.copy_failures.labels(site, self._reason).inc()


@dataclass(frozen=True)
class _CatalogFigures:
    copies: dict[str, int]
    outbox_depth: int
    outbox_oldest: float | None  # unix time the oldest waiting command was written


class _CatalogSnapshot:
    """What the catalog says, read at each scrape (in aiosqlite's thread)."""

    def __init__(self, catalog: Catalog, stores: tuple[str, ...], *, wait_s: float) -> None:
        self._catalog = catalog
        self._stores = stores
        self._figures = _Refreshed(self._read, what="catalog figures", ttl_s=0.0, wait_s=wait_s)
        self.refresh = self._figures.refresh

    async def _read(self) -> _CatalogFigures:
        depth, oldest = await self._catalog.outbox_stats()
        return _CatalogFigures(await self._catalog.copies_per_store(), depth, oldest)

    def copies(self) -> Reading:
        figures = self._figures.value
        return [] if figures is None else [((store,), figures.copies.get(store, 0)) for store in self._stores]

    def outbox_depth(self) -> Reading:
        figures = self._figures.value
        return [] if figures is None else [((), figures.outbox_depth)]

    def outbox_age(self) -> Reading:
        figures = self._figures.value
        if figures is None:
            return []
        oldest = figures.outbox_oldest
        return [((), 0.0 if oldest is None else max(0.0, time.time() - oldest))]


class AgentMetrics(Metrics):
    """An agent: its tasks, what it owes the hub, its broker link."""

    def __init__(self, site: str, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.site = site
        self._resumes = self._counter(COPY_RESUMES)
        self.copies = self.for_site(site)

    def watch_agent(self, figures: Callable[[], AgentFigures | None]) -> None:
        """Expose what `figures()` says at each scrape (None: not running)."""
        site = (self.site,)

        def reader(value: Callable[[AgentFigures], float]) -> Callable[[], Reading]:
            def read() -> Reading:
                now = figures()
                return [] if now is None else [(site, value(now))]
            return read

        self.live(TASKS_QUEUED, reader(lambda f: f.tasks_queued))
        self.live(TASKS_IN_FLIGHT, reader(lambda f: f.tasks_in_flight))
        self.live(AGENT_OUTBOX_DEPTH, reader(lambda f: f.owed_results))
        self.live(BROKER_CONNECTED, reader(lambda f: 1.0 if f.broker_connected else 0.0))


@dataclass(frozen=True)
class AgentFigures:
    tasks_queued: int
    tasks_in_flight: int
    owed_results: int
    broker_connected: bool


# --- HTTP ----------------------------------------------------------------------------------------

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_template(request: web.Request) -> str:
    """The matched route's template (`/v2/images/{image_id}`), never the raw
    path: one series per route, whatever ids clients send."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def http_middleware(metrics: Metrics) -> Middleware:
    """Counts and times every request. Outermost, so it sees the status the
    client gets, error bodies included; a request cancelled (the client went
    away) is not counted."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_template(request)
        method = request.method if request.method in _METHODS else "OTHER"
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.observe_request(route, method, exc.status, time.perf_counter() - started)
            raise
        except Exception:
            metrics.observe_request(route, method, 500, time.perf_counter() - started)
            raise
        metrics.observe_request(route, method, response.status, time.perf_counter() - started)
        return response

    return observe
