"""The hub daemon: lifecycle and wiring.

`Hub.start()` opens the catalog and the stores, recovers what a previous run
left unfinished, and serves the API; `Hub.stop()` stops taking requests,
gives running tasks a bounded time, then closes everything, in that order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from aiohttp import web

from edgesync.catalog import Catalog
from edgesync.config import HubConfig
from edgesync.hub.api import discovery, images
from edgesync.hub.api.context import HUB_KEY
from edgesync.hub.api.middleware import auth_middleware, json_errors
from edgesync.hub.auth import TokenTable
from edgesync.hub.images import ImageService
from edgesync.hub.imports import Importer
from edgesync.hub.replicator import InHubReplicator
from edgesync.hub.staging import Staging
from edgesync.stores import open_store
from edgesync.stores.base import ImageStore

log = logging.getLogger(__name__)

# Uploads and stages stream; this only bounds JSON bodies read whole.
MAX_JSON_BODY_BYTES = 1024 * 1024


@dataclass
class Hub:
    config: HubConfig
    catalog: Catalog = field(init=False)
    stores: dict[str, ImageStore] = field(init=False)
    images: ImageService = field(init=False)
    importer: Importer = field(init=False)
    runner: web.AppRunner | None = field(init=False, default=None)

    @property
    def central(self) -> str:
        return self.config.central.name

    async def open(self) -> None:
        """Everything but the HTTP server (tests drive `app()` directly)."""
        cfg = self.config
        self.catalog = await Catalog.open(cfg.catalog_path)
        self.stores = {}
        try:
            for site in cfg.sites:
                self.stores[site.name] = open_store(site)
            staging = Staging(cfg.staging_dir)
            replicator = InHubReplicator(self.stores)
            self.images = ImageService(catalog=self.catalog, stores=self.stores, config=cfg,
                                       staging=staging, replicator=replicator)
            self.importer = Importer(catalog=self.catalog, stores=self.stores, central=self.central,
                                     staging=staging, config=cfg.imports, replicator=replicator)
            await self.importer.recover()
        except BaseException:
            # Release what was opened: an open catalog's thread would keep a
            # hub that failed to start from exiting.
            await self._close_stores_and_catalog()
            raise

    def app(self) -> web.Application:
        tokens = None if self.config.auth == "noauth" else TokenTable.load(self.config.tokens_file)  # type: ignore[arg-type]
        app = web.Application(middlewares=[json_errors, auth_middleware(tokens)],
                              client_max_size=MAX_JSON_BODY_BYTES)
        app[HUB_KEY] = self
        app.add_routes(discovery.routes)
        app.add_routes(images.routes)
        return app

    async def start(self) -> None:
        await self.open()
        try:
            runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
            await runner.setup()
            self.runner = runner
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except BaseException:  # a bad tokens file, the port in use: don't hang on exit
            await self.close()
            raise
        log.info("hub serving on %s:%s", self.config.host, self.config.port)

    async def close(self, grace_s: float = 5.0) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.importer.shutdown(grace_s)
        await self._close_stores_and_catalog()

    async def _close_stores_and_catalog(self) -> None:
        for store in self.stores.values():
            try:
                await store.close()
            except Exception as exc:  # the catalog must still be closed
                log.error("closing store %s failed: %s", store.name, exc)
        await self.catalog.close()


async def serve(config: HubConfig) -> None:
    """Run the hub until SIGTERM or SIGINT."""
    hub = Hub(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await hub.close()
