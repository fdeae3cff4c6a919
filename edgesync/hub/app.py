"""The hub daemon: lifecycle and wiring.

`Hub.start()` opens the catalog and the sites, recovers what a previous run
left unfinished, and serves the API; `Hub.stop()` stops taking requests,
gives running tasks a bounded time, then closes everything, in that order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from edgesync.adopt.service import Adopter
from edgesync.aio import cancel_and_wait
from edgesync.bus import BusClient, BusSettings
from edgesync.catalog import Catalog
from edgesync.config import HubConfig, SiteConfig
from edgesync.errors import ConfigError, Conflict
from edgesync.http_limits import guarded_runner
from edgesync.hub.api import adopt, discovery, edge, images, locations, members, metadefs, tasks
from edgesync.hub.api.context import HUB_KEY
from edgesync.hub.api.middleware import CALLER_KEY, auth_middleware, json_errors
from edgesync.hub.api.request_id import add_request_id_header, request_ids
from edgesync.hub.auth import Authenticator, Caller, TokenTable
from edgesync.hub.bus_bridge import EventRouter, OutboxPublisher, run_hub_bus
from edgesync.hub.images import ImageService
from edgesync.hub.imports import Importer
from edgesync.hub.manifests import HubManifests
from edgesync.hub.policy import Policy
from edgesync.hub.remote import AgentCommands
from edgesync.hub.sites import Site, SiteRegistry, Sites
from edgesync.hub.sites.agent import AgentSite
from edgesync.hub.sites.local import LocalSite
from edgesync.hub.staging import Staging
from edgesync.hub.transfer_auth import TransferAuthorizer
from edgesync.listen import start_site
from edgesync.metrics import METRICS_PATH, HubMetrics, http_middleware
from edgesync.model import Image
from edgesync.service import Service
from edgesync.stores import open_store
from edgesync.stores.base import ImageStore
from edgesync.tls import http_session, serving_context, warn_plaintext
from edgesync.transfer.http import ServedCopy, ServedCounters, data_routes
from edgesync.transfer.manifest import Manifest
from edgesync.transfer.serving_limits import ServingLimits

log = logging.getLogger(__name__)

# Uploads and stages stream; this only bounds JSON bodies read whole.
MAX_JSON_BODY_BYTES = 1024 * 1024
# At a stop, requests still running get this long, then are cancelled (an
# upload cut off leaves its image queued). With the imports' grace in
# close(), the hub stops within ~10 s (systemd's TimeoutStopSec is 30 s).
HTTP_DRAIN_S = 3.0
# How often the policy file is checked for an operator's edit.
POLICY_CHECK_INTERVAL_S = 5.0


@dataclass
class Hub:
    config: HubConfig
    catalog: Catalog = field(init=False)
    sites: Sites = field(init=False)
    stores: dict[str, ImageStore] = field(init=False)  # the drivers this process writes (its LocalSites')
    images: ImageService = field(init=False)
    importer: Importer = field(init=False)
    manifests: HubManifests = field(init=False)
    adopter: Adopter = field(init=False)  # images taken over from a Glance (edgesync adopt)
    runner: web.AppRunner | None = field(init=False, default=None)
    agents: AgentCommands | None = field(init=False, default=None)
    registry: SiteRegistry | None = field(init=False, default=None)
    publisher: OutboxPublisher | None = field(init=False, default=None)
    metrics: HubMetrics = field(init=False)
    policy: Policy = field(init=False)
    served: ServedCounters = field(init=False, default_factory=ServedCounters)  # what agents pulled from central
    serving_limits: ServingLimits = field(init=False)  # [transfers]: per site and egress
    _bus_task: asyncio.Task[None] | None = field(init=False, default=None)
    _policy_task: asyncio.Task[None] | None = field(init=False, default=None)

    @property
    def central(self) -> str:
        return self.config.central.name

    async def open(self) -> None:
        """Everything but the HTTP server (tests drive `app()` directly)."""
        cfg = self.config
        self.metrics = HubMetrics(sites=[site.name for site in cfg.sites])
        self.serving_limits = ServingLimits(cfg.transfers.per_site_concurrency, cfg.transfers.egress_bytes_per_s)
        self.policy = await asyncio.to_thread(Policy, cfg.policy_file)  # a bad file stops the start
        self.catalog = await Catalog.open(cfg.catalog_path)
        self.stores = {}
        opened: list[Site] = []
        try:
            central: LocalSite | None = None
            for site in cfg.sites:  # in config order, as the API lists them
                if site.is_central:
                    opened.append(central := self._local_site(site))
                else:
                    opened.append(self._site_for(site))
            assert central is not None, "the config has exactly one central site"
            self.sites = Sites(opened, central)
            self._watch()
            staging = Staging(cfg.staging_dir)
            self.manifests = HubManifests(self.catalog, central.store)
            self.images = ImageService(catalog=self.catalog, sites=self.sites, config=cfg, staging=staging,
                                       policy=self.policy)
            self.importer = Importer(catalog=self.catalog, sites=self.sites, staging=staging,
                                     config=cfg.imports, metrics=self.metrics, quota=self.images.quota,
                                     policy=self.policy)
            self.adopter = Adopter(self)
            await self.importer.recover()
        except BaseException:
            # Release what was opened: an open catalog's thread would keep a
            # hub that failed to start from exiting.
            await self._close_sites_and_catalog(opened)
            raise

    def _local_site(self, site: SiteConfig) -> LocalSite:
        """A site whose store this process opens and writes."""
        store = self.stores[site.name] = open_store(site)
        # Central keeps the manifest of what it is given (an edge-created image copied in).
        keep = self._keep_manifest if site.is_central else None
        return LocalSite(store, self.metrics.for_site(site.name), keep_manifest=keep)

    def _site_for(self, site: SiteConfig) -> Site:
        """An edge site: with a bus, its agent serves it; without one, the hub
        writes its store itself (in-hub mode)."""
        if self.config.bus is None:
            return self._local_site(site)
        if self.agents is None:
            bus = self.config.bus
            self.registry = SiteRegistry(self.config.sites, stale_after_s=bus.stale_after_s)
            self.publisher = OutboxPublisher(self.catalog)
            self.agents = AgentCommands(self.catalog, self.publisher, self.registry,
                                        offline_deadline_s=bus.offline_deadline_s)
        token = site.agent_token_file.read_text().strip() if site.agent_token_file else None
        return AgentSite(site, self.agents, hub_url=self.config.public_url,
                         session_factory=lambda: http_session(self.config.tls),
                         agent_url=site.agent_url, agent_token=token,
                         observer=self.metrics.for_site(self.central), manifest_for=self._manifest_for)

    async def _manifest_for(self, image: Image) -> str | None:
        """The chunk manifest a copy to an agent names (made now if missing)."""
        return await self.manifests.for_copy(image)

    async def _keep_manifest(self, image_id: str, manifest: Manifest) -> None:
        await self.manifests.save(image_id, manifest)

    def _watch(self) -> None:
        """What /metrics reads live: the catalog, the site registry, and the
        capacity of the sites' stores where the hub can measure it (an agent
        reports its own)."""
        self.metrics.watch_catalog(self.catalog, list(self.sites))
        self.metrics.watch_served(self.served)
        self.metrics.watch_serving_limits(self.serving_limits)
        if self.registry is not None:
            self.metrics.watch_sites(self.registry)
        for name, site in self.sites.items():
            self.metrics.watch_capacity(name, site.capacity)

    async def _start_bus(self) -> None:
        bus = self.config.bus
        if bus is None or self.agents is None or self.registry is None or self.publisher is None:
            return  # no edge site is served by an agent: nothing to talk to
        password = bus.password_file.read_text().strip() if bus.password_file else None
        settings = BusSettings(host=bus.host, port=bus.port, username=bus.username, password=password,
                               ca_file=bus.ca_file, cert_file=bus.cert_file, key_file=bus.key_file)
        if not settings.tls:
            log.warning("the hub's MQTT connection to %s:%s is PLAINTEXT (no ca_file in [bus])", bus.host, bus.port)
        router = EventRouter(self.registry, self.agents.on_event, self.agents.refuse,
                             on_heartbeat=self.metrics.heartbeat)
        self._bus_task = asyncio.create_task(
            run_hub_bus(BusClient(settings), self.publisher, router), name="hub-bus")

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(POLICY_CHECK_INTERVAL_S)
            await asyncio.to_thread(self.policy.reload_if_changed)

    async def _central_copy(self, image_id: str) -> ServedCopy:
        """For agents pulling: central's copy, if it has one. Its sha512 names
        its content, so agents pulling it at once share each range's read."""
        held, os_hash_value = await self.catalog.copy_facts(image_id, self.central)
        if not held:
            raise Conflict(f"Image {image_id} has no copy in the central store")
        return ServedCopy(self.sites.central.store, content_id=os_hash_value or None)

    def _tokens_file(self) -> Path:
        # load_hub refuses auth = "token" without one; a HubConfig built by hand may still lack it.
        if self.config.tokens_file is None:
            raise ConfigError('auth = "token" needs a tokens_file')
        return self.config.tokens_file

    def _agent_tokens(self) -> dict[str, str]:
        """Each edge agent's token (its site file's [agent] token_file) -> its site."""
        return {site.agent_token_file.read_text().strip(): site.name
                for site in self.config.sites if site.agent_token_file is not None and not site.is_central}

    def _authenticator(self) -> Authenticator | None:
        if self.config.auth == "noauth":
            return None
        if self.config.auth == "keystone":
            from edgesync.hub.keystone_auth import keystone_authenticator  # keystoneauth1 only when asked for

            return keystone_authenticator(self.config)
        return TokenTable.load(self._tokens_file(), self._agent_tokens())

    def app(self) -> web.Application:
        tokens = self._authenticator()
        # Metrics outermost: they see the status the client gets, errors included.
        # The request id next: error lines logged by json_errors carry it.
        middlewares = [http_middleware(self.metrics), request_ids, json_errors, auth_middleware(tokens)]
        app = web.Application(middlewares=middlewares, client_max_size=MAX_JSON_BODY_BYTES)
        app.on_response_prepare.append(add_request_id_header)
        app[HUB_KEY] = self
        app.router.add_get(METRICS_PATH, self.metrics.handle_scrape)
        app.add_routes(discovery.routes)
        app.add_routes(images.routes)
        app.add_routes(edge.routes)
        app.add_routes(locations.routes)
        app.add_routes(members.routes)
        app.add_routes(tasks.routes)
        app.add_routes(metadefs.routes)
        app.add_routes(adopt.routes)
        # Agents pull central's copies here: each only the images it is
        # copying (the auth middleware has checked the token itself).
        app.add_routes(data_routes(self._central_copy, TransferAuthorizer(self.catalog), counters=self.served,
                                   manifests=self.manifests.body, limits=self.serving_limits,
                                   requester=_agent_site))
        return app

    async def start(self) -> None:
        await self.open()
        try:
            await self._start_bus()
            if self.config.policy_file is not None:
                self._policy_task = asyncio.create_task(self._watch_policy(), name="hub-policy")
            runner = guarded_runner(self.app(), self.config.read_timeouts, access_log=None,
                                    handle_signals=False, shutdown_timeout=HTTP_DRAIN_S)
            await runner.setup()
            self.runner = runner
            await start_site(runner, self.config.host, self.config.port, serving_context(self.config.tls))
        except BaseException:  # a bad tokens file or certificate, the port in use: don't hang on exit
            await self.close()
            raise
        warn_plaintext(log, "the hub", self.config.tls)
        log.info("hub serving %s on %s:%s", self.config.tls.scheme, self.config.host, self.config.port)

    async def close(self, grace_s: float = 5.0) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        # Running tasks get their grace with the bus still up (a copy at an
        # edge finishes through its agent's events); what is cut off after it
        # stays open in the catalog and the next start's recovery finishes it.
        await self.importer.shutdown(grace_s)
        if self._policy_task is not None:
            await cancel_and_wait([self._policy_task])
        if self._bus_task is not None:
            await cancel_and_wait([self._bus_task])  # it may swallow one cancel (gh-86296)
        await self._close_sites_and_catalog(list(self.sites.values()))

    async def _close_sites_and_catalog(self, sites: list[Site]) -> None:
        for site in sites:
            try:
                await site.close()
            except Exception as exc:  # noqa: BLE001 — the catalog must still be closed
                log.error("closing site %s failed: %s", site.name, exc)
        await self.catalog.close()


def _agent_site(request: web.Request) -> str | None:
    """The site whose agent sent `request` (None: not an agent), for the serving limits."""
    caller = request.get(CALLER_KEY)
    return caller.agent_site if isinstance(caller, Caller) else None


async def serve(config: HubConfig) -> None:
    """Run the hub until SIGTERM or SIGINT. READY=1 (systemd) once the catalog
    is open, unfinished tasks are recovered, the bus loop is started (the
    broker may still be away: commands wait in the outbox) and the API listens."""
    hub = Hub(config)
    async with Service("hub") as service:
        await hub.start()
        service.ready(f"serving on {config.host}:{config.port}")
        await service.stop_requested()
        await hub.close()
