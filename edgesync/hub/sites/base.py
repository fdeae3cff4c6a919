"""A site as the hub's orchestration sees it: a place that holds copies.

Imports, copies, deletes and recovery talk to sites only, in these verbs;
how a site does the work is its own business. Two kinds exist:

* `LocalSite` (sites/local.py): the hub writes the site's store itself, in
  its own process — central always, and every site in in-hub mode (no bus).
* `AgentSite` (sites/agent.py): the site's agent does the work; the hub
  sends it commands over the bus and reads its copies over HTTP.

A store driver (`ImageStore`, stores/base.py) is the narrow interface below a
`LocalSite`; an `AgentSite` has none at the hub.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edgesync.importer.hashing import ImageDigest
from edgesync.model import Image
from edgesync.stores.base import ImageStore, Location, StoreCapacity
from edgesync.transfer.manifest import Manifest
from edgesync.transfer.pipeline import CopyProgressFn, DataSource, MeasuredSource


@dataclass(frozen=True)
class VerifiedCopy:
    """A published copy someone else made at a site, checked and hashed there."""

    location_url: str
    size: int
    checksum: str  # md5, as Glance's `checksum`
    os_hash_value: str  # sha512
    manifest: Manifest | None = None  # where the site made it in the same pass (a store the hub runs)


class Site(Protocol):
    name: str
    description: str
    read_only: bool
    store_type: str  # "file" or "rbd": the driver that keeps the site's copies
    # True when the site's own agent makes and removes its copies through the
    # bus: a copy there goes on while the hub is down, so after a restart it
    # is re-attached rather than failed, and the site can only be reached once
    # the bus runs (it starts after recovery).
    copies_outlive_hub: bool

    def online(self) -> bool:
        """Whether the site can be asked to do something now."""

    async def replicate(self, image: Image, source: Site, on_progress: CopyProgressFn,
                        *, job_id: str, resume: bool = False) -> Location:
        """Make a verified, published copy of the active `image` here from
        `source`'s copy, reporting (data bytes done, data bytes in all) as it
        goes. `job_id` names this copy: repeating it is harmless. `resume`: a
        previous hub run started this copy (it may still be under way)."""

    async def remove(self, image_id: str) -> None:
        """Remove the site's copy (StoreImageInUse if clones depend on it;
        NotFound if there is none; SiteOffline if the site can't be reached
        now — the removal then happens when it can)."""

    async def check_removable(self, image_id: str) -> None:
        """Return if `remove` would not be refused because of clones; else
        StoreImageInUse (SiteOffline if the site can't be asked)."""

    async def holds(self, image_id: str) -> bool:
        """Whether the site has a published copy of `image_id`."""

    async def verify(self, image_id: str, *, job_id: str) -> VerifiedCopy:
        """Check that the site holds a published copy of `image_id` (RBD:
        image `<uuid>` with protected snapshot `snap`) and hash it where it
        is (StoreImageNotFound if there is none; SiteOffline if the site
        can't be asked). `job_id` names the check."""

    def registered_location(self, image_id: str, reported: Any) -> Any:
        """The location URL of a copy created at the site (a Nova snapshot),
        given what the registering caller `reported`; the caller checks it."""

    def reader(self, image_id: str) -> DataSource:
        """The site's published copy of `image_id`, as a source to read."""

    async def capacity(self) -> StoreCapacity | None:
        """Used and free bytes, where the hub can measure them (None otherwise)."""

    async def status(self, hub_jobs: list[str]) -> dict[str, Any]:
        """What `GET /edgesync/v1/sites` shows of the site beside its config:
        `agent`, `up`, `problem`, `heartbeat_age_s`, `in_flight`, free space.
        `hub_jobs`: the copy jobs to the site the catalog has unfinished."""

    def store_properties(self) -> dict[str, Any]:
        """The site's store for `GET /v2/info/stores/detail` (`properties`)."""

    async def clean_after_crash(self, image_id: str, *, recorded: bool) -> None:
        """Remove what an interrupted copy of `image_id` left here, and a
        published copy no location records (`recorded` false)."""

    async def close(self) -> None:
        """Release connections; the site is unusable afterwards."""


class CentralSite(Site, Protocol):
    """The central site: its store is the hub's own, so new imports are
    written there from the staging area, and agents pull its copies."""

    store: ImageStore  # the driver, for the data routes agents pull from

    async def ingest(self, image_id: str, source: MeasuredSource,
                     on_progress: CopyProgressFn) -> tuple[ImageDigest, Location]:
        """Write a new image from `source` (the staged, vetted file) and
        publish it; its digest is computed on the way. Leftovers of an
        earlier attempt (the image is not active: nothing refers to them)
        are removed first."""


class Sites(Mapping[str, Site]):
    """Every configured site by name, in config order, and which is central."""

    def __init__(self, sites: list[Site], central: CentralSite) -> None:
        self._sites: dict[str, Site] = {s.name: s for s in sites}
        assert self._sites.get(central.name) is central, "central is one of the sites"
        self.central = central

    def __getitem__(self, name: str) -> Site:
        return self._sites[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    def writable(self) -> list[str]:
        """The sites a copy may go to (not read-only), in config order."""
        return [name for name, site in self._sites.items() if not site.read_only]
