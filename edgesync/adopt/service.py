"""The hub's side of adoption: one source image in, its report out.

`Adopter.adopt` takes one image as the source (Glance) shows it, with its
members, and:

1. matches each of its locations to one of edgesync's sites: an RBD location
   whose pool is the site's pool and whose fsid is the site's cluster (where
   the hub knows it; otherwise the Glance store of the site's name, and the
   site's answer must name the same location);
2. checks each matched copy where it lies — central's in the hub, an edge's
   through its agent (the `verify` bus command), all sites at once: published
   (`<uuid>@snap` protected), the image's size, and with `verify="full"` its
   bytes against os_hash_value;
3. writes the image and the copies that passed in one transaction;
4. hub first: an active image with no good central copy gets one, copied
   from a good edge copy; with `copy_missing`, a store Glance had and
   edgesync has no good copy in gets one from central once central has it.

Idempotent: a copy adopted before (same store and URL, checked at least as
thoroughly) is not checked again, and an image whose source `updated_at` is
the one adopted is not rewritten. Nothing is written in a dry run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgesync.adopt.check import CopyCheck, CopyMismatch, check_copy
from edgesync.adopt.record import SourceCopy, parse_image, parse_members
from edgesync.catalog import AdoptedCopy, Adoption
from edgesync.catalog.members import ImageMember
from edgesync.errors import BadRequest, EdgesyncError, failure_code
from edgesync.hub.auth import Caller, require_admin
from edgesync.hub.imports.importer import ImportRequest
from edgesync.model import Image, ImageStatus
from edgesync.transfer.manifest import Manifest

if TYPE_CHECKING:
    from edgesync.hub.app import Hub

log = logging.getLogger(__name__)

# Statuses whose image has data to adopt, and those adopted as metadata only.
WITH_DATA = (ImageStatus.ACTIVE, ImageStatus.DEACTIVATED)
WITHOUT_DATA = (ImageStatus.QUEUED,)
CENTRAL_HASHES_AT_ONCE = 2  # central's checks read the hub's own cluster


@dataclass
class CopyReport:
    store: str | None  # the edgesync site (None: no site holds that location)
    url: str
    source_store: str | None
    state: str  # adopted | already_adopted | failed | not_in_edgesync | would_check
    reason: str = ""
    verified: str = "none"  # how it was checked: full (every byte hashed) or none
    code: str = ""  # a failed check's code (copy_missing, copy_mismatch, site_offline, …)
    manifest: Manifest | None = None  # the chunk manifest the hub made checking central's copy
    verified_bytes: int = 0
    read_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"store": self.store, "url": self.url, "source_store": self.source_store, "state": self.state,
                "reason": self.reason, "verified": self.verified, "verified_bytes": self.verified_bytes,
                "read_bytes": self.read_bytes}


@dataclass
class Report:
    image_id: str
    name: str | None
    action: str = ""  # adopted | updated | unchanged | skipped (would_… in a dry run)
    reason: str = ""
    copies: list[CopyReport] = field(default_factory=list)
    copy_tasks: list[dict[str, Any]] = field(default_factory=list)  # copies started (task id, stores, why)
    discrepancies: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "name": self.name, "action": self.action, "reason": self.reason,
                "copies": [c.as_json() for c in self.copies], "copy_tasks": self.copy_tasks,
                "discrepancies": self.discrepancies}


@dataclass(frozen=True)
class Request:
    image: Image
    copies: list[SourceCopy]
    members: list[ImageMember]
    source: str
    verify: str  # full | none
    copy_missing: bool
    dry_run: bool


def parse_request(body: Any) -> Request:
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object: {image, members, source, verify, copy_missing, dry_run}")
    image, copies = parse_image(body.get("image"))
    verify = body.get("verify", "full")
    if verify not in ("full", "none"):
        raise BadRequest(f"verify must be full or none, got {verify!r}")
    source = body.get("source", "")
    flags = {name: body.get(name, False) for name in ("copy_missing", "dry_run")}
    if not isinstance(source, str) or not all(isinstance(v, bool) for v in flags.values()):
        raise BadRequest("source must be a string; copy_missing and dry_run true or false")
    return Request(image, copies, parse_members(body.get("members"), image.id), source, verify, **flags)


class Adopter:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._central_slots = asyncio.Semaphore(CENTRAL_HASHES_AT_ONCE)

    async def adopt(self, caller: Caller, body: Any) -> dict[str, Any]:
        require_admin(caller, "adopt images from another image service")
        req = parse_request(body)
        report = Report(req.image.id, req.image.name)
        existing = await self.hub.catalog.get_image(req.image.id)
        adoption = await self.hub.catalog.adoption(req.image.id)
        if not self._adoptable(req, report, existing, adoption):
            return report.as_json()
        plans = [self._plan(req.image, c, existing, adoption, req.verify) for c in req.copies]
        report.copies = plans
        if req.dry_run:
            self._dry_run(req, report, existing, adoption)
            return report.as_json()
        await asyncio.gather(*(self._check(req, plan) for plan in plans if plan.state == "would_check"))
        await self._write(req, report, existing, adoption)
        if report.action != "skipped":
            await self._copies_owed(caller, req, report)
        report.discrepancies += [f"{c.store or c.source_store or '?'}: {c.reason}" for c in plans
                                 if c.state in ("failed", "not_in_edgesync")]
        return report.as_json()

    # --- what to do -----------------------------------------------------------------

    def _adoptable(self, req: Request, report: Report, existing: Image | None, adoption: Adoption | None) -> bool:
        status = req.image.status
        if status not in WITH_DATA + WITHOUT_DATA:
            report.action = "skipped"
            report.reason = (f"it is {status.value} in the source: nothing to adopt until it is active "
                             "(a later run picks it up)")
            return False
        if existing is not None and adoption is None:
            report.action = "skipped"
            report.reason = "an image with this id exists in edgesync and was not adopted: left as it is"
            report.discrepancies.append(f"id {req.image.id} is taken by an image created in edgesync")
            return False
        if status in WITH_DATA and not req.image.size:
            report.action = "skipped"
            report.reason = f"it is {status.value} but the source gives no size"
            report.discrepancies.append(report.reason)
            return False
        return True

    def _plan(self, image: Image, copy: SourceCopy, existing: Image | None, adoption: Adoption | None,
              verify: str) -> CopyReport:
        site, why = self._site_for(copy, image.id)
        plan = CopyReport(site, copy.url, copy.store, "would_check" if site else "not_in_edgesync", why)
        if site is None or existing is None or adoption is None:
            return plan
        before = adoption.copies.get(site)
        located = existing.location_in(site)
        if (before is not None and located is not None and located.url == copy.url == before.url
                and (before.verified == "full" or verify == "none")):
            plan.state, plan.reason = "already_adopted", f"adopted before (verified: {before.verified})"
        return plan

    def _site_for(self, copy: SourceCopy, image_id: str) -> tuple[str | None, str]:
        """The site that holds this location, or None and why none does."""
        if not copy.is_rbd:
            return None, f"not an RBD location ({copy.url.split(':', 1)[0]}): edgesync adopts RBD copies only"
        if copy.rbd_image != image_id or copy.snapshot != "snap":
            return None, f"names RBD image {copy.rbd_image}@{copy.snapshot}, not {image_id}@snap"
        for name, site in self.hub.sites.items():
            if site.store_type != "rbd":
                continue
            props = site.store_properties()
            fsid = props.get("fsid")
            if props.get("pool") != copy.pool:
                continue
            if fsid is not None and str(fsid).lower() == str(copy.fsid).lower():
                return name, ""
            if fsid is None and copy.store == name:
                return name, ""  # the site's answer must name this same location (see _check)
        return None, (f"no edgesync site has pool {copy.pool!r} on cluster {copy.fsid} "
                      f"(source store {copy.store!r})")

    def _dry_run(self, req: Request, report: Report, existing: Image | None, adoption: Adoption | None) -> None:
        changed = adoption is None or adoption.source_updated_at != req.image.updated_at
        to_check = [c for c in report.copies if c.state == "would_check"]
        report.action = ("would_adopt" if existing is None else "would_update" if changed or to_check
                         else "unchanged")
        for plan in to_check:
            plan.reason = f"would be checked ({req.verify})"
        if req.image.status in WITH_DATA and self.hub.central not in {c.store for c in report.copies if c.store}:
            report.copy_tasks.append({"task_id": None, "stores": [self.hub.central],
                                      "why": "hub first: no copy at central in the source"})
        report.discrepancies += [f"{c.source_store or '?'}: {c.reason}" for c in report.copies
                                 if c.state == "not_in_edgesync"]

    # --- checking copies where they lie ---------------------------------------------

    async def _check(self, req: Request, plan: CopyReport) -> None:
        assert plan.store is not None
        image = req.image
        full = req.verify == "full" and bool(image.os_hash_value or image.checksum)
        try:
            checked = await self._check_at(plan.store, image, plan.url, full)
        except EdgesyncError as exc:
            plan.state, plan.code = "failed", failure_code(exc)
            plan.reason = f"{plan.code}: {exc.message}"
            if plan.code == CopyMismatch.code:
                plan.reason += (" — edgesync leaves it where it is (Glance may still serve it, VMs may be cloned "
                                "from it); remove it and run adopt again with --copy-missing to have a good one")
            return
        if checked.location_url.lower() != plan.url.lower():
            plan.state = "failed"
            plan.reason = f"the site's copy is at {checked.location_url}, the source names {plan.url}"
            return
        plan.state, plan.reason = "adopted", "verified" if full else "published, size matches (bytes not verified)"
        plan.verified = "full" if full else "none"
        plan.verified_bytes = checked.verified_bytes
        if checked.manifest is not None:
            plan.manifest = checked.manifest

    async def _check_at(self, store: str, image: Image, url: str, full: bool) -> CopyCheck:
        site = self.hub.sites[store]
        job_id = f"adopt-{uuid.uuid4()}"
        if site is self.hub.sites.central:  # the hub reads its own cluster: a few at a time
            async with self._central_slots:
                return await check_copy(site, image, source_url=url, full=full, job_id=job_id)
        return await check_copy(site, image, source_url=url, full=full, job_id=job_id)

    # --- writing, then the copies hub first asks for ---------------------------------

    async def _write(self, req: Request, report: Report, existing: Image | None, adoption: Adoption | None) -> None:
        adopted = [c for c in report.copies if c.state == "adopted" and c.store]
        kept = [c for c in report.copies if c.state == "already_adopted"]
        if req.image.status in WITH_DATA and not adopted and not kept and existing is None:
            report.action = "skipped"
            report.reason = "no copy of it passed its checks: not adopted"
            report.discrepancies.append(report.reason)
            return
        unchanged = adoption is not None and adoption.source_updated_at == req.image.updated_at
        if unchanged and not adopted:
            report.action = "unchanged"
            return
        copies = [AdoptedCopy(c.store, c.url, c.verified) for c in adopted if c.store]
        image = _with_locations_of(req.image, existing)
        await self.hub.catalog.adopt_image(image, members=req.members, copies=copies, source=req.source,
                                           source_updated_at=req.image.updated_at, new=existing is None)
        made = next((c.manifest for c in adopted if c.manifest is not None), None)
        if made is not None:  # copies to agents then check blocks against it, without a pass of their own
            await self.hub.manifests.save(image.id, made)
        report.action = "adopted" if existing is None else "updated"

    async def _copies_owed(self, caller: Caller, req: Request, report: Report) -> None:
        image = await self.hub.catalog.require_image(req.image.id)
        if image.status is not ImageStatus.ACTIVE or not image.locations:
            return
        central = self.hub.central
        if central not in image.stores:
            await self._start(report, "hub first: no good copy at central", self.hub.importer.copy_to_central(
                image, caller, image.locations[0].store), [central])
            return
        if not req.copy_missing:
            return
        # Not where a copy that failed its check still lies: a copy there would collide with it.
        named = [c.source_store for c in report.copies
                 if c.source_store is not None and c.code != CopyMismatch.code]
        wanted = [s for s in dict.fromkeys(named)
                  if s in self.hub.sites and s not in image.stores and not self.hub.sites[s].read_only]
        if wanted:
            copy = ImportRequest("copy-image", None, wanted, False, False)
            await self._start(report, "--copy-missing: the source had a copy there edgesync could not adopt",
                              self.hub.importer.request_import(image, caller, copy), wanted)

    async def _start(self, report: Report, why: str, starting: Any, stores: list[str]) -> None:
        try:
            task = await starting
        except EdgesyncError as exc:  # e.g. another task holds the image: the next run tries again
            report.discrepancies.append(f"copy to {', '.join(stores)} not started: {exc.message}")
            return
        report.copy_tasks.append({"task_id": task.id if task else None, "stores": stores, "why": why})


def _with_locations_of(image: Image, existing: Image | None) -> Image:
    """The source's record; the catalog keeps the locations it already has."""
    if existing is not None:
        image.locations = list(existing.locations)
    return image
