"""A site served by its agent: the hub never opens its store.

Copies and removals are commands to the site's agent (`AgentCommands`, in
hub/remote.py: through the catalog's outbox, at-least-once, answered by the
agent's events); the agent pulls the image from the hub's data endpoint,
which serves central's copy. Reads of a copy at the site (to bring an
edge-created image to central) go over HTTP to the agent's data endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from edgesync.bus import CopyCommand
from edgesync.config import SiteConfig
from edgesync.errors import BadRequest, StoreError
from edgesync.hub.remote import AgentCommands
from edgesync.hub.sites.base import Site, VerifiedCopy
from edgesync.model import Image
from edgesync.observer import NO_OBSERVER, CopyObserver
from edgesync.stores.base import Location, StoreCapacity
from edgesync.stores.ceph_conf import conf_fsid
from edgesync.transfer.http import HttpSource, TransferError
from edgesync.transfer.pipeline import CopyProgressFn, DataSource

# The digest of the chunk manifest a copy of an image names (None: no manifest,
# the agent verifies the whole image's sha512).
ManifestForFn = Callable[[Image], Awaitable[str | None]]


async def _no_manifest(_image: Image) -> str | None:
    return None


class AgentSite:
    copies_outlive_hub = True  # the agent goes on copying while the hub is away

    def __init__(self, site: SiteConfig, commands: AgentCommands, *, hub_url: str,
                 agent_url: str | None, agent_token: str | None,
                 observer: CopyObserver = NO_OBSERVER, manifest_for: ManifestForFn = _no_manifest,
                 session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession) -> None:
        """`observer` counts what reads of this site's copies bring over HTTP;
        `manifest_for(image)` names the manifest the agent checks a copy against;
        `session_factory` makes the HTTP session (the hub's: verifying agents'
        certificates against its CA bundle)."""
        self.name = site.name
        self.store_type = site.store.type
        self.description = site.store.description
        self.read_only = site.store.read_only
        self._site = site
        self._commands = commands
        self._hub_url = hub_url
        self._agent_url = agent_url
        self._agent_token = agent_token
        self._observer = observer
        self._manifest_for = manifest_for
        self._session: aiohttp.ClientSession | None = None
        self._session_factory = session_factory
        # One HttpSource per image: it caches the extent map between reads.
        self._sources: dict[str, HttpSource] = {}

    def online(self) -> bool:
        return self._commands.registry.is_up(self.name)

    async def replicate(self, image: Image, source: Site, on_progress: CopyProgressFn,
                        *, job_id: str, resume: bool = False) -> Location:
        """The agent pulls from the hub (central's copy: hub first, so that is
        the only source an edge copies from). `resume`: the hub restarted
        while this copy was under way; wait for the agent's answer rather
        than sending the command again."""
        assert image.size is not None and image.os_hash_value
        done = await self._commands.call(self.name, CopyCommand(
            task_id=job_id, image_id=image.id, size_bytes=image.size, os_hash_value=image.os_hash_value,
            source_url=self._hub_url, manifest_digest=await self._manifest_for(image)), on_progress, resume=resume)
        if not done.location_url:
            raise StoreError(f"{self.name}: the agent reported a copy without a location")
        if not location_fits(self._site, image.id, done.location_url):
            raise StoreError(f"{self.name}: the agent reported a location outside its store: {done.location_url!r}")
        return Location(self.name, done.location_url)

    async def remove(self, image_id: str) -> None:
        """SiteOffline if the agent is (or goes) down: the delete then stays pending."""
        self._forget(image_id)
        await self._commands.delete(self.name, image_id)

    async def check_removable(self, image_id: str) -> None:
        """The agent checks its store; SiteOffline if it can't be asked."""
        await self._commands.probe(self.name, image_id)

    async def holds(self, image_id: str) -> bool:
        try:
            await self.reader(image_id).size()
        except TransferError as exc:
            if exc.status == 404:
                self._forget(image_id)
                return False
            raise
        return True

    async def verify(self, image_id: str, *, job_id: str) -> VerifiedCopy:
        """The agent hashes its copy where it is (no image data crosses the
        WAN for it); what it reports must be its store's own location form."""
        done = await self._commands.verify(self.name, image_id, job_id)
        if done.size_bytes is None or not done.checksum or not done.os_hash_value or not done.location_url:
            raise StoreError(f"{self.name}: the agent's answer to the check of image {image_id} lacks its "
                             "digest (an agent older than the location API?)")
        if not location_fits(self._site, image_id, done.location_url):
            raise StoreError(f"{self.name}: the agent reported a location outside its store: {done.location_url!r}")
        return VerifiedCopy(done.location_url, done.size_bytes, done.checksum, done.os_hash_value)

    def registered_location(self, image_id: str, reported: Any) -> Any:
        """The agent reports the locations of its copies (the hub can't know
        the cluster's fsid), but only in its store's own form: that site's
        pool (or directory) and exactly this image, never an arbitrary URL."""
        if not isinstance(reported, str) or not location_fits(self._site, image_id, reported):
            raise BadRequest(f"location_url must be the copy's location in store '{self.name}' "
                             f"({_expected_form(self._site, image_id)}), got {reported!r}")
        return reported

    def reader(self, image_id: str) -> DataSource:
        if self._agent_url is None:
            raise StoreError(f"site {self.name} has no agent data endpoint configured")
        if self._session is None:
            self._session = self._session_factory()
        if image_id not in self._sources:
            self._sources[image_id] = HttpSource(self._session, self._agent_url, image_id,
                                                 token=self._agent_token, observer=self._observer)
        return self._sources[image_id]

    def _forget(self, image_id: str) -> None:
        """Drop the cached source (after a delete, or a copy found gone)."""
        self._sources.pop(image_id, None)

    async def capacity(self) -> StoreCapacity | None:
        """Not measured by the hub: the agent's heartbeats carry its free space
        (`status`) and its own /metrics its store's capacity."""
        return None

    async def status(self, hub_jobs: list[str]) -> dict[str, Any]:
        """As the agent's last heartbeat said (its own in-flight list, not the catalog's)."""
        live = self._commands.registry.describe(self.name)
        return {"agent": True, **{k: v for k, v in live.items() if k != "name"}}

    def store_properties(self) -> dict[str, Any]:
        """What the site file says of the agent's store (the hub never opens it)."""
        cfg = self._site.store
        props: dict[str, Any] = {"agent_url": self._agent_url, "thin_provisioning": True}
        if cfg.type == "file":
            props["datadir"] = str(cfg.path)
        else:
            props.update(pool=cfg.pool, chunk_size=4, user=cfg.user)
            if cfg.ceph_conf is not None and cfg.ceph_conf.is_file():
                props["fsid"] = conf_fsid(cfg.ceph_conf)
            if not props.get("fsid") and self.name in self._commands.registry:
                # The hub has no ceph.conf of the site's: what its agent announced.
                props["fsid"] = self._commands.registry.view(self.name).store_fsid
        return props

    async def clean_after_crash(self, image_id: str, *, recorded: bool) -> None:
        """The agent cleans its own unpublished copies (its journal knows them)."""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


_FSID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _expected_form(site: SiteConfig, image_id: str) -> str:
    if site.store.type == "rbd":
        return f"rbd://<fsid>/{site.store.pool}/{image_id}/snap"
    return f"file://{site.store.path}/{image_id}"


def location_fits(site: SiteConfig, image_id: str, url: str) -> bool:
    """Whether `url` names `image_id` in the site's store as the store
    itself writes locations (rbd: the site's pool, and its cluster's fsid
    where the hub can read the site's ceph.conf)."""
    store = site.store
    if store.type != "rbd":
        return store.path is not None and url == f"file://{store.path / image_id}"
    match = re.fullmatch(rf"rbd://({_FSID})/{re.escape(store.pool)}/{re.escape(image_id)}/snap", url)
    if match is None:
        return False
    known = conf_fsid(store.ceph_conf)
    return known is None or known.lower() == match.group(1).lower()
