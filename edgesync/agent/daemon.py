"""The agent daemon: one per edge site.

Lifecycle (`Agent`): `start()` opens the store and the journal, loads the
results still owed to the hub and serves HTTP (the data endpoint the hub
pulls edge copies from, `/healthz` and `/metrics`); `run()` resumes the journal's
unfinished tasks, keeps the broker connection and works until `stop()`;
then it shuts down in stages and returns. `serve()` wires SIGTERM/SIGINT.

Commands are journaled as they arrive and run in a TaskGroup (see `tasks`).

The broker. `run_forever` reconnects with backoff. After every connect the
agent subscribes to its command topic, publishes a retained `online` status
(with its availability zone; it replaces the `offline` will a crash left),
and runs three loops: command intake, the event outbox (results, progress,
inventory: see `events`) and the heartbeat. If the hub finds the announced
zone disagrees with its config, it answers with a refusal naming that zone:
the agent then stops as on SIGTERM and `run()` raises `AgentRefused`. Work does
not depend on the connection: copies go on while the broker is away and their events wait in the outbox.

Shutdown, in stages: commands still arriving are journaled but not started;
running tasks get `shutdown_grace_s`, then are cancelled (a cancelled copy
checkpoints and keeps its partial copy, and stays `running` in the journal,
so the next start resumes it); owed events get a short bounded flush; a
retained `offline` status goes out on the live connection, which then closes
cleanly (a clean disconnect discards the will); HTTP, journal and store close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from edgesync.agent.config import AgentConfig
from edgesync.agent.dedup import AgentManifests, SiteCopies
from edgesync.agent.events import EventOutbox
from edgesync.agent.hub_token import HubToken
from edgesync.agent.journal import Journal
from edgesync.agent.tasks import SourceFactory, TaskRunner
from edgesync.aio import cancel_and_wait
from edgesync.backoff import Backoff
from edgesync.bus import (
    BusClient,
    BusError,
    CheckDeletableCommand,
    CopyCommand,
    DeleteCommand,
    Heartbeat,
    LastWill,
    SiteRefused,
    SiteState,
    SiteStatus,
    VerifyCommand,
    run_forever,
    topics,
)
from edgesync.errors import ConfigError, EdgesyncError, NotFound, TransferError, Unauthorized
from edgesync.http_limits import guarded_runner
from edgesync.listen import start_site
from edgesync.logs import log_context
from edgesync.metrics import METRICS_PATH, AgentFigures, AgentMetrics, http_middleware
from edgesync.service import Service
from edgesync.stores import open_store
from edgesync.stores.base import ImageStore, ResumableStore, StoreCapacity
from edgesync.tls import http_session, serving_context, warn_plaintext
from edgesync.transfer.http import AUTH_HEADER, HttpSource, RateLimiter, ServedCounters, data_routes
from edgesync.transfer.pipeline import DataSource

log = logging.getLogger(__name__)

JOURNAL_RETENTION_S = 30 * 24 * 3600  # longer than any hub resends a command
EVENT_FLUSH_ON_STOP_S = 2.0


class AgentRefused(ConfigError):
    """The hub refused this agent: its site file disagrees with the hub's config."""


@dataclass
class _Runtime:
    """What exists between start() and the end of run()."""

    store: ResumableStore
    journal: Journal
    events: EventOutbox
    tasks: TaskRunner
    session: aiohttp.ClientSession
    limiter: RateLimiter | None


class Agent:
    def __init__(self, config: AgentConfig, *, store: ResumableStore | None = None,
                 sources: SourceFactory | None = None, reconnect_backoff: Backoff | None = None) -> None:
        """`store` and `sources` replace the configured store and the HTTP
        pulls from the hub (tests); `reconnect_backoff` the broker's backoff."""
        self.config = config
        self.site = config.name
        self._given_store = store
        self._sources = sources or self._http_source
        self.hub_token = HubToken(config)
        self._reconnect_backoff = reconnect_backoff or Backoff(initial_s=0.5, max_s=30.0)
        self._rt: _Runtime | None = None
        self._http: web.AppRunner | None = None
        self._stopping = asyncio.Event()  # stop() was called
        self._leaving = asyncio.Event()  # the tasks are stopped: say goodbye to the broker
        self._bus: BusClient | None = None
        self._refusal: AgentRefused | None = None
        self.http_port: int | None = None
        self.on_running: Callable[[], None] | None = None  # run() has resumed its tasks (systemd's READY)
        self.metrics = AgentMetrics(self.site)
        self.metrics.watch_agent(self._figures)
        self.metrics.watch_capacity(self.site, self._capacity)
        self.served = ServedCounters()  # what the hub pulled from this site (edge-created images)
        self.metrics.watch_served(self.served)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open store and journal, load owed results, serve HTTP. Raises (having
        closed what it opened) if any of it fails."""
        cfg = self.config
        async with contextlib.AsyncExitStack() as opened:
            store = self._given_store or open_store(cfg.site)
            opened.push_async_callback(store.close)
            journal = await Journal.open(cfg.journal_path)
            opened.push_async_callback(journal.close)
            await journal.prune(finished_before=time.time() - JOURNAL_RETENTION_S)
            events = EventOutbox(self.site, journal, store.image_ids)
            await events.load()
            session = http_session(cfg.tls)  # verifies the hub against [agent.tls] ca_file
            opened.push_async_callback(session.close)
            limiter = RateLimiter(cfg.bandwidth_limit_bytes_per_s) if cfg.bandwidth_limit_mbps else None
            tasks = TaskRunner(store, journal, events, self._sources, max_concurrent_copies=cfg.max_concurrent_copies,
                               retry_window_s=cfg.copy_retry_window_s, observer=self.metrics.copies,
                               site_copies=await _site_copies(cfg.state_dir, store))
            self._rt = _Runtime(store, journal, events, tasks, session, limiter)
            opened.callback(setattr, self, "_rt", None)
            self._http = await self._serve_http()
            await self._first_hub_token()
            opened.pop_all()  # started: run() owns them now
        log.info("agent of site %s (AZ %s) started; store %s, data endpoint on %s:%s", self.site,
                 cfg.site.availability_zone, store.name, cfg.listen_host, self.http_port)

    async def run(self) -> None:
        """Work until stop() (or a fatal bus error), then shut down in stages."""
        rt = self._runtime()
        bus_task = asyncio.create_task(self._bus_forever(), name="bus")
        token_task = asyncio.create_task(self.hub_token.refresh_forever(), name="hub-token")
        try:
            async with asyncio.TaskGroup() as work:
                await rt.tasks.start(work)
                if self.on_running is not None:
                    self.on_running()
                stopping = asyncio.create_task(self._stopping.wait(), name="stopping")
                await asyncio.wait([bus_task, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                await rt.tasks.drain(self.config.shutdown_grace_s)
            await self._leave_bus(bus_task)
        finally:
            bus_task.cancel()
            token_task.cancel()
            await asyncio.gather(bus_task, token_task, return_exceptions=True)
            await self._close()
        bus_failure = None if bus_task.cancelled() else bus_task.exception()
        if bus_failure is not None:
            raise bus_failure  # e.g. the broker refused our credentials
        if self._refusal is not None:
            raise self._refusal

    def describe(self) -> str:
        """One line on how it is doing (systemd's STATUS=)."""
        if self._rt is None:
            return "not running"
        broker = "connected" if self._bus is not None else "disconnected"
        return (f"data endpoint on port {self.http_port}, broker {broker}, "
                f"{len(self._rt.tasks.in_flight)} task(s) in flight")

    @property
    def broker_connected(self) -> bool:
        return self._bus is not None

    def stop(self) -> None:
        """Ask run() to shut down (safe from a signal handler)."""
        self._stopping.set()

    async def _leave_bus(self, bus_task: asyncio.Task[None]) -> None:
        """Flush owed events and say offline on the live connection, if there is
        one (without, the will said offline when the connection died)."""
        if bus_task.done() or self._bus is None:
            return
        self._leaving.set()
        try:
            async with asyncio.timeout(EVENT_FLUSH_ON_STOP_S + 2.0):
                await asyncio.shield(bus_task)
        except TimeoutError:
            log.warning("leaving the broker: no clean goodbye within %.0f s", EVENT_FLUSH_ON_STOP_S + 2.0)
        except BusError as exc:
            log.warning("leaving the broker: %s", exc.message)

    async def _close(self) -> None:
        rt, self._rt = self._rt, None
        if rt is None:
            return
        closers = [("http client", rt.session.close), ("journal", rt.journal.close), ("store", rt.store.close)]
        if self._http is not None:
            closers.insert(0, ("http server", self._http.cleanup))
            self._http = None
        for what, close in closers:
            try:
                await close()
            except Exception:  # the rest must still be closed
                log.exception("closing the %s failed", what)
        log.info("agent of site %s stopped", self.site)

    def _runtime(self) -> _Runtime:
        if self._rt is None:
            raise RuntimeError("Agent.start() first")
        return self._rt

    # --- HTTP: data endpoint, health and metrics -------------------------------------------

    async def _serve_http(self) -> web.AppRunner:
        app = web.Application(middlewares=[http_middleware(self.metrics)])
        app.add_routes(data_routes(self._published_store, self._authorize, counters=self.served))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get(METRICS_PATH, self.metrics.handle_scrape)
        runner = guarded_runner(app, self.config.read_timeouts, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await start_site(runner, self.config.listen_host, self.config.listen_port,
                             serving_context(self.config.tls))
        except BaseException:
            await runner.cleanup()
            raise
        warn_plaintext(log, f"the agent of site {self.site}", self.config.tls)
        self.http_port = runner.addresses[0][1]
        return runner

    async def _published_store(self, image_id: str) -> ImageStore:
        store = self._runtime().store
        if not await store.exists(image_id):
            raise NotFound(f"site {self.site} holds no published copy of image {image_id}")
        return store

    async def _authorize(self, request: web.Request, image_id: str) -> None:
        # The hub pulls with this site's token (the one it lists for this agent).
        token = request.headers.get(AUTH_HEADER, "")
        if not hmac.compare_digest(token.encode(), self.config.token.encode()):
            raise Unauthorized(f"{AUTH_HEADER} must carry site {self.site}'s token")

    def _figures(self) -> AgentFigures | None:
        rt = self._rt
        if rt is None:
            return None
        return AgentFigures(tasks_queued=len(rt.tasks.queued), tasks_in_flight=len(rt.tasks.in_flight),
                            owed_results=rt.events.owed_results, broker_connected=self._bus is not None)

    async def _capacity(self) -> StoreCapacity | None:
        return await self._rt.store.capacity() if self._rt is not None else None

    async def _healthz(self, _request: web.Request) -> web.Response:
        rt = self._runtime()
        return web.json_response({
            "site": self.site, "availability_zone": self.config.site.availability_zone,
            "broker": "connected" if self._bus is not None else "disconnected",
            "in_flight": list(rt.tasks.in_flight), "owed_results": rt.events.owed_results,
            "stopping": rt.tasks.draining,
        })

    # --- the broker ---------------------------------------------------------------------

    def _status(self, state: SiteState) -> SiteStatus:
        fsid = self._rt.store.properties().get("fsid") if self._rt is not None else None
        return SiteStatus(site=self.site, state=state, availability_zone=self.config.site.availability_zone,
                          store_fsid=str(fsid) if fsid else None)

    async def _bus_forever(self) -> None:
        will = LastWill(topics.status(self.site), self._status(SiteState.OFFLINE))
        settings = self.config.broker.settings()
        if not settings.tls:
            log.warning("the broker connection to %s:%s is PLAINTEXT (no ca_file in [agent.broker])",
                        settings.host, settings.port)
        client = BusClient(settings, will=will)
        await run_forever(client, self._connected, backoff=self._reconnect_backoff)

    async def _connected(self, bus: BusClient) -> None:
        """One connection's life: announce, subscribe, loop until it fails or we leave."""
        rt = self._runtime()
        # Set first: a stop from here on says goodbye on this connection (see _leave_bus).
        self._bus = bus
        try:
            # Subscribed before saying online: the hub may answer "online"
            # at once (a refusal), and a new session only gets what comes
            # after its subscription.
            await bus.subscribe(topics.cmd(self.site))
            await bus.publish(topics.status(self.site), self._status(SiteState.ONLINE), retain=True)
        except BaseException:
            self._bus = None
            raise
        log.info("connected to the broker as %s", bus.settings.username)
        rt.events.connected()
        loops = [asyncio.create_task(self._intake(bus), name="intake"),
                 asyncio.create_task(rt.events.run(bus), name="events"),
                 asyncio.create_task(self._heartbeats(bus), name="heartbeat")]
        leaving = asyncio.create_task(self._leaving.wait(), name="leaving")
        try:
            done, _ = await asyncio.wait([*loops, leaving], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {leaving}:
                task.result()  # a BusError: run_forever reconnects
                raise BusError(f"{task.get_name()} loop ended unexpectedly")
        finally:
            self._bus = None
            await cancel_and_wait([*loops, leaving])
        await self._say_goodbye(bus)

    async def _say_goodbye(self, bus: BusClient) -> None:
        rt = self._runtime()
        try:
            async with asyncio.timeout(EVENT_FLUSH_ON_STOP_S):
                await rt.events.publish_once(bus)
        except TimeoutError:
            log.warning("stopping with %d result(s) unsent; they go out at the next start",
                        rt.events.owed_results)
        await bus.publish(topics.status(self.site), self._status(SiteState.OFFLINE), retain=True)

    async def _intake(self, bus: BusClient) -> None:
        async for delivery in bus.messages():
            message = delivery.message
            if isinstance(message, (CopyCommand, DeleteCommand)):
                await self._runtime().tasks.accept(message)
            elif isinstance(message, SiteRefused):
                self._on_refused(message)
            elif isinstance(message, CheckDeletableCommand):
                self._runtime().tasks.probe(message)
            elif isinstance(message, VerifyCommand):
                self._runtime().tasks.verify(message)
            else:
                log.warning("ignored a %s message on the command topic", message.TYPE)

    def _on_refused(self, refused: SiteRefused) -> None:
        """Stop (and have run() raise) if the hub refused an agent configured
        as this one is; a refusal of an earlier, since fixed config is stale."""
        mine = self.config.site.availability_zone
        if refused.availability_zone != mine:
            log.info("the hub refused an agent of %s announcing availability zone %r; this one "
                     "announces %r: not about this configuration", self.site, refused.availability_zone, mine)
            return
        if self._refusal is None:
            self._refusal = AgentRefused(f"the hub refused this agent: {refused.reason}")
            log.error("%s; stopping", self._refusal.message)
            self.stop()

    async def _heartbeats(self, bus: BusClient) -> None:
        while True:
            await self.heartbeat_once(bus)
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def heartbeat_once(self, bus: BusClient) -> None:
        tasks = self._runtime().tasks
        beat = Heartbeat(site=self.site, ts=time.time(), in_flight=tasks.in_flight, queued=tasks.queued,
                         free_bytes=await self._free_bytes())
        await bus.publish(topics.event(self.site), beat)

    async def _free_bytes(self) -> int | None:
        try:
            async with asyncio.timeout(self.config.heartbeat_interval_s):
                capacity = await self._runtime().store.capacity()
        except (EdgesyncError, TimeoutError) as exc:
            log.debug("free space unknown: %s", exc)
            return None
        return capacity.free_bytes if capacity is not None else None

    async def _first_hub_token(self) -> None:
        """With a Keystone credential: a token before resumed copies pull (Keystone down: they retry)."""
        try:
            await self.hub_token.refresh()
        except EdgesyncError as exc:
            log.warning("no Keystone token for the hub at start: %s", exc.message)

    def _http_source(self, command: CopyCommand) -> DataSource:
        # The token goes only to the hub this agent is configured with: a
        # command naming any other source (a forged or replayed message) fails.
        if not same_origin(command.source_url, self.config.hub_url):
            raise TransferError(f"copy {command.task_id}: source {command.source_url!r} is not this agent's hub "
                                f"({self.config.hub_url}); refusing to send it the site's token", retryable=False)
        rt = self._runtime()
        return HttpSource(rt.session, command.source_url, command.image_id, token=self.hub_token.current,
                          limiter=rt.limiter, observer=self.metrics.copies)


def same_origin(url: str, base: str) -> bool:
    """Same scheme, host and port, and `url` under `base`'s path."""
    try:
        a, b = urlsplit(url), urlsplit(base)
        ports = (a.port or _DEFAULT_PORTS.get(a.scheme), b.port or _DEFAULT_PORTS.get(b.scheme))
    except ValueError:
        return False
    return (a.scheme.lower(), (a.hostname or "").lower(), ports[0]) == \
        (b.scheme.lower(), (b.hostname or "").lower(), ports[1]) and \
        (a.path.rstrip("/") + "/").startswith(b.path.rstrip("/") + "/") and not a.username and not a.password


_DEFAULT_PORTS = {"http": 80, "https": 443}


async def _site_copies(state_dir: Path, store: ImageStore) -> SiteCopies:
    """The manifests of the site's copies, for dedup. A store that can't be
    listed now (its cluster away) costs dedup only, never the start."""
    manifests = AgentManifests(state_dir / "manifests")
    try:
        return await SiteCopies.load(manifests, store)
    except EdgesyncError as exc:
        log.warning("the site's copies can't be listed (%s); copies fetch every block until they can",
                    exc.message)
        return SiteCopies(manifests)


async def serve(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT. READY=1 (systemd) once store and
    journal are open, the data endpoint listens, the journal's unfinished
    tasks are resumed and the broker loop is started (the broker may still be
    away: copies go on and their events wait)."""
    agent = Agent(config)
    with log_context(site=config.name):  # every line of this process is about this site
        async with Service(f"agent of site {config.name}", describe=agent.describe) as service:
            agent.on_running = lambda: service.ready(agent.describe())
            service.on_stop(agent.stop)
            await agent.start()
            await agent.run()
