"""Image operations other than imports: create, read, list, update, delete,
delete from one store, stage, and reading the data back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

from edgesync.catalog import SORTABLE, Catalog, ImageQuery
from edgesync.config import CONTAINER_FORMATS, HubConfig
from edgesync.errors import BadRequest, Conflict, EdgesyncError, Forbidden, NotFound, StoreImageInUse, StoreUnavailable
from edgesync.hub.auth import Caller, can_see
from edgesync.hub.patch import (
    READ_ONLY,
    WRITABLE_CORE,
    check_core_value,
    check_extra_property,
    plan_patch,
)
from edgesync.hub.policy import Policy, image_target, new_image_target
from edgesync.hub.quota import StoredBytesQuota
from edgesync.hub.remote import SiteOffline
from edgesync.hub.sites import Site, Sites
from edgesync.hub.staging import Staging
from edgesync.model import Image, ImageStatus, Visibility
from edgesync.stores.base import Location

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024


class ImageService:
    def __init__(self, *, catalog: Catalog, sites: Sites, config: HubConfig, staging: Staging,
                 policy: Policy) -> None:
        self.catalog = catalog
        self.policy = policy
        self.sites = sites
        self.config = config
        self.central = config.central.name
        self.staging = staging
        self.quota = StoredBytesQuota(catalog, config.quota)  # the importer's too; /v2/info/usage's numbers

    def _formats(self) -> dict[str, tuple[str, ...]]:
        return {"disk_formats": self.config.imports.disk_formats, "container_formats": CONTAINER_FORMATS}

    # --- read -------------------------------------------------------------------

    async def get(self, caller: Caller, image_id: str) -> Image:
        """The image if the caller may see it (its project owns it, it is
        public or community, or the project is a member — Glance's database
        layer) and the policy's `get_image` allows it; else NotFound."""
        image = await self.catalog.get_image(image_id)
        if image is None or not can_see(caller, image):
            raise NotFound(f"No image found with ID {image_id}")
        self.policy.enforce_on_image("get_image", caller, image)
        return image

    async def get_for(self, rule: str, caller: Caller, image_id: str) -> Image:
        """The image, if the caller may see it and `rule` allows the caller on it (403 if not)."""
        image = await self.get(caller, image_id)
        self.policy.enforce_on_image(rule, caller, image)
        return image

    async def list(self, caller: Caller, query: ImageQuery) -> list[Image]:
        """The images the query finds that the caller may see; `get_images`
        refused is a 403. The caller filters each one by `get_image` (Glance
        does it after paging: a page may come out shorter, never wrong)."""
        self.policy.authorize("get_images", caller, {"project_id": caller.project})
        query.viewer_project = caller.project
        query.is_admin = caller.is_admin
        for key, _ in query.sort:
            if key not in SORTABLE:
                raise BadRequest(f"Can't sort on '{key}'; sortable keys: {', '.join(sorted(SORTABLE))}")
        return await self.catalog.list_images(query)

    # --- create / update / delete ---------------------------------------------

    async def create(self, caller: Caller, body: Any) -> Image:
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object describing the image")
        body = dict(body)
        image_id = body.pop("id", None) or str(uuid.uuid4())
        _check_uuid(image_id)
        if await self.catalog.get_image(image_id) is not None:
            raise Conflict(f"An image with id {image_id} already exists")
        image = Image(id=image_id, owner=caller.project)
        for key, value in body.items():
            self._apply_create_field(image, key, value)
        visibility = Visibility(image.visibility).value
        target = new_image_target(image.owner, visibility)
        if not self.policy.allows("add_image", caller, target):
            if image.owner != caller.project:
                raise Forbidden(f"You are not permitted to create images owned by another project "
                                f"({image.owner!r}); only an admin may (policy rule 'add_image')")
            self.policy.authorize("add_image", caller, target)
        self.policy.enforce_visibility(caller, visibility, target)
        return await self.catalog.insert_image(image)

    def _apply_create_field(self, image: Image, key: str, value: Any) -> None:
        if key in READ_ONLY:
            raise Forbidden(f"Attribute '{key}' is read-only.")
        if key in WRITABLE_CORE:
            value = check_core_value(key, value, **self._formats())
            setattr(image, key, list(dict.fromkeys(value)) if key == "tags" else value)
        else:
            image.properties[key] = check_extra_property(key, value)

    async def register_edge_image(self, caller: Caller, site: str, body: Any) -> Image:
        """Record an image whose data was created at an edge site (e.g. a Nova
        snapshot written into that site's pool): active, located at that site
        only, until the copy to central (started by the caller) lands. A
        queued record of that id (Nova creates one before it snapshots) is
        completed rather than refused."""
        site_cfg = self.config.site(site)
        if site_cfg is None or site_cfg.is_central:
            raise NotFound(f"No edge site named {site!r}")
        if not (caller.is_admin or caller.is_agent_of(site)):
            raise Forbidden(f"Only an admin or site {site}'s agent may register images created there")
        if not isinstance(body, dict):
            raise BadRequest("The body must be a JSON object describing the image")
        fields = _edge_image_fields(body, self._formats())
        owner = _edge_image_owner(caller, site_cfg.project, body.get("owner"))
        if not caller.is_admin and fields["visibility"] not in ("private", "shared"):
            raise Forbidden("An agent registers images private or shared; an admin may widen visibility after")
        self.policy.enforce_visibility(caller, fields["visibility"], new_image_target(owner, fields["visibility"]))
        image_id = fields.pop("id")
        _check_uuid(image_id)
        existing = await self.catalog.get_image(image_id)
        if existing is not None:
            await self._check_queued_record(existing)
        where = self.sites[site]
        if not await where.holds(image_id):
            raise NotFound(f"Store '{site}' holds no published copy of {image_id} (RBD image with "
                           "protected snapshot 'snap'); create it there first")
        location_url = where.registered_location(image_id, body.get("location_url"))
        if not isinstance(location_url, str) or image_id not in location_url:
            raise BadRequest("location_url must be the copy's location in that store, naming the image id")
        location = Location(site, location_url)
        if existing is not None:
            # The record its maker created (Nova, before its snapshot) keeps its
            # owner, name and formats; the copy brings the data.
            data = {k: fields[k] for k in ("size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value")}
            return await self.catalog.update_image(image_id, fields={**data, "status": ImageStatus.ACTIVE},
                                                   expect_status=[ImageStatus.QUEUED], location=location)
        image = Image(id=image_id, owner=owner,
                      status=ImageStatus.ACTIVE, **fields)
        await self.catalog.insert_image(image)
        await self.catalog.add_location(image_id, location)
        return await self.catalog.require_image(image_id)

    async def _check_queued_record(self, image: Image) -> None:
        """An edge copy may complete a record that waits for its data (queued,
        no location, no task on it), never replace an image that has some."""
        if image.status != ImageStatus.QUEUED or image.locations:
            raise Conflict(f"An image with id {image.id} already exists and is {image.status.value}; "
                           "only a queued image with no data can take a copy registered at a site")
        await self._refuse_if_locked(image.id, "registered")

    async def update(self, caller: Caller, image_id: str, ops: Any, *, dialect: str = "v2.1") -> Image:
        image = await self.get_for("modify_image", caller, image_id)
        changes = plan_patch(image, ops, dialect=dialect, **self._formats())
        if "visibility" in changes.fields:
            self.policy.enforce_visibility(caller, Visibility(changes.fields["visibility"]).value,
                                           image_target(image, caller))
        if "owner" in changes.fields and not caller.is_admin:
            raise Forbidden("Only an admin may change an image's owner")
        return await self.catalog.update_image(
            image_id, fields=changes.fields, set_properties=changes.set_properties,
            remove_properties=changes.remove_properties, tags=changes.tags,
        )

    async def delete(self, caller: Caller, image_id: str) -> None:
        """Delete the image and every copy of it.

        All or nothing with respect to clones: every copy is checked first (an
        edge site's agent is asked), and a copy in use anywhere refuses the
        delete (409) before any copy is removed. Then edge copies go first,
        central last, so a late refusal never leaves an image without its
        central copy.

        A site whose agent is offline can't be asked, and its copy can't be
        checked for clones: its delete is sent anyway and stays pending until
        the agent returns (GET /edgesync/v1/pending-deletes), and the image is
        deleted. Operators expect an image delete to succeed as Glance's does,
        not to wait on the slowest site; a clone made at that site while it
        was away makes its pending delete fail, which the listing shows.

        A location in a store no longer configured (its site was removed from
        the config) can't be reached: it goes with the image, with a warning.
        """
        image = await self.get_for("delete_image", caller, image_id)
        if image.protected:
            raise Forbidden(f"Image {image_id} is protected; set protected=false before deleting it")
        await self._refuse_if_locked(image_id, "deleted")
        stores = [s for s in image.stores if s in self.sites]
        for gone in sorted(set(image.stores) - set(stores)):
            log.warning("image %s: dropping its location in store %s, which is no longer configured",
                        image_id, gone)
        await self._refuse_if_in_use(image_id, stores)
        for store in sorted(stores, key=lambda s: s == self.central):
            await self._delete_copy(image_id, store, pending_ok=True)
        self.staging.discard(image_id)
        await self.catalog.delete_image(image_id)

    async def _refuse_if_in_use(self, image_id: str, stores: Sequence[str]) -> None:
        """Ask every store at once; StoreImageInUse if any copy has clones."""
        checks = [self._in_use_hint(image_id, s, self.sites[s].check_removable(image_id)) for s in stores]
        for store, outcome in zip(stores, await asyncio.gather(*checks, return_exceptions=True), strict=True):
            if isinstance(outcome, SiteOffline):
                log.warning("image %s: deleting without checking %s for clones: %s", image_id, store,
                            outcome.message)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def delete_from_store(self, caller: Caller, store: str, image_id: str) -> None:
        """Delete one store's copy. An edge site's agent must be up: a store
        delete is an operator's explicit request, answered with what happened
        (503, nothing changed, if the agent is offline), not queued. Should the
        agent go offline after the command went out, the delete stays pending
        and the location goes when the agent confirms. A location in a store
        no longer configured is simply dropped."""
        known = store in self.sites
        if not known and not await self._has_location(image_id, store):
            raise NotFound(f"Unknown store '{store}'; known stores: {', '.join(self.sites)}")
        # Glance's rules for a store delete (both must allow it); admin-only by default.
        image = await self.get_for("delete_image_location", caller, image_id)
        self.policy.enforce_on_image("get_image_location", caller, image)
        if store not in image.stores:
            raise NotFound(f"Image {image_id} has no copy in store '{store}'")
        if image.stores == [store]:
            raise Forbidden(
                f"Store '{store}' holds the last copy of image {image_id}; delete the image instead"
            )
        if store == self.central:
            raise Forbidden(
                f"Every image keeps a copy in the central store '{store}' (hub first); "
                "delete the image to remove it everywhere"
            )
        await self._refuse_if_locked(image_id, "changed")
        if not known:
            log.warning("image %s: dropping its location in store %s, which is no longer configured",
                        image_id, store)
            await self.catalog.remove_location(image_id, store)
            return
        if not self.sites[store].online():
            raise SiteOffline(
                f"Store '{store}' can't delete its copy of image {image_id} now: the agent of site {store} "
                "is offline. Nothing was changed; try again when it is up (GET /edgesync/v1/sites)")
        await self._delete_copy(image_id, store, pending_ok=False)

    async def _has_location(self, image_id: str, store: str) -> bool:
        image = await self.catalog.get_image(image_id)
        return image is not None and store in image.stores

    async def _delete_copy(self, image_id: str, store: str, *, pending_ok: bool) -> None:
        """Remove one copy and its location. With `pending_ok`, a site gone
        offline leaves its delete pending and the location goes now (the image
        is going); without, SiteOffline is raised and the location stays until
        the agent confirms."""
        try:
            await self._in_use_hint(image_id, store, self.sites[store].remove(image_id))
        except NotFound:
            pass  # already gone from the store: just forget the location
        except SiteOffline as exc:
            if not pending_ok:
                raise
            log.warning("image %s: %s", image_id, exc.message)
        await self.catalog.remove_location(image_id, store)

    @staticmethod
    async def _in_use_hint(image_id: str, store: str, work: Awaitable[None]) -> None:
        try:
            await work
        except StoreImageInUse as exc:
            raise StoreImageInUse(
                f"Image {image_id} is in use in store '{store}' ({exc.message}); delete or "
                "flatten the instances and volumes cloned from it, then try again"
            ) from exc

    async def _refuse_if_locked(self, image_id: str, what: str) -> None:
        holder = await self.catalog.lock_holder(image_id)
        if holder is not None:
            raise Conflict(f"Image {image_id} can't be {what} while import task {holder} runs; try again when it ends")

    # --- deactivate / reactivate (Glance's image_actions.py) ---------------------

    async def deactivate(self, caller: Caller, image_id: str) -> None:
        """active → deactivated (already deactivated: nothing to do). Its data
        is then refused to all but admins, and its locations shown to admins only."""
        await self._switch(caller, image_id, "deactivate", ImageStatus.ACTIVE, ImageStatus.DEACTIVATED)

    async def reactivate(self, caller: Caller, image_id: str) -> None:
        await self._switch(caller, image_id, "reactivate", ImageStatus.DEACTIVATED, ImageStatus.ACTIVE)

    async def _switch(self, caller: Caller, image_id: str, rule: str, before: ImageStatus,
                      after: ImageStatus) -> None:
        image = await self.get_for(rule, caller, image_id)
        if image.status == after:
            return
        if image.status != before:
            raise Forbidden(f"Not allowed to {rule} image in status '{image.status.value}': only an "
                            f"{before.value} image can be {rule}d")
        # Conditional: a status that changed since it was read is a 409, never overwritten.
        await self.catalog.update_image(image_id, fields={"status": after}, expect_status=[before])

    # --- data -----------------------------------------------------------------

    async def stage(self, caller: Caller, image_id: str, chunks: AsyncIterator[bytes],
                    expected_size: int | None) -> None:
        image = await self.get_for("modify_image", caller, image_id)  # Glance's rule for a stage
        await self.quota.enforce(image.owner, adding_bytes=expected_size or 0)
        # queued → uploading atomically: a second concurrent stage gets 409.
        await self.catalog.update_image(image_id, fields={"status": ImageStatus.UPLOADING},
                                        expect_status=[ImageStatus.QUEUED])
        try:
            await self.staging.receive(image_id, chunks, expected_size=expected_size,
                                       max_bytes=self.config.imports.max_image_size_bytes)
        except BaseException:
            await self.catalog.update_image(image_id, fields={"status": ImageStatus.QUEUED})
            raise

    async def open_data(self, caller: Caller, image_id: str) -> tuple[Image, Site | None]:
        """The image and the site to read it from; no site when the image
        has no data yet (queued, or staged and not imported), which Glance
        answers with 204 and no body."""
        image = await self.get_for("download_image", caller, image_id)
        if image.status == ImageStatus.DEACTIVATED and not caller.is_admin:
            raise Forbidden("The requested image has been deactivated. Image data download is forbidden.")
        if not image.locations:
            return image, None
        if image.status not in (ImageStatus.ACTIVE, ImageStatus.DEACTIVATED):
            raise Conflict(f"Image {image_id} is {image.status.value}; only active images have data to download")
        # Central first; a copy in a store no longer configured can't be read.
        known = [name for name in image.stores if name in self.sites]
        if not known:
            raise StoreUnavailable(
                f"Image {image_id} has copies only in stores this hub no longer has in its configuration "
                f"({', '.join(image.stores)}); add the site back or copy the image from elsewhere")
        store = self.central if self.central in known else known[0]
        return image, self.sites[store]

    @staticmethod
    async def read_range(site: Site, image_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a copy, in chunks (streamed, never whole)."""
        copy = site.reader(image_id)
        pos = start
        while pos < end:
            n = min(READ_CHUNK_BYTES, end - pos)
            data = await copy.read(pos, n)
            if len(data) != n:
                raise EdgesyncError(f"short read from store {site.name} at {pos}")
            yield data
            pos += n


_EDGE_REQUIRED = ("id", "size", "checksum", "os_hash_value")


def _edge_image_owner(caller: Caller, site_project: str | None, asked: Any) -> str:
    """An admin chooses the owner (its own project by default); an agent's
    registrations belong to its site's project (`project` in the site file,
    else the agent's own), whatever the body asks."""
    if caller.is_admin:
        if asked is not None and not (isinstance(asked, str) and 0 < len(asked) <= 255):
            raise BadRequest("owner must be a project id (a non-empty string)")
        return asked or caller.project
    mine = site_project or caller.project
    if asked not in (None, mine):
        raise Forbidden(f"An agent registers images for its site's project {mine!r}, not {asked!r}")
    return mine


def _edge_image_fields(body: dict[str, Any], formats: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    missing = [k for k in _EDGE_REQUIRED if not body.get(k)]
    if missing:
        raise BadRequest(f"Registering an edge image needs {', '.join(_EDGE_REQUIRED)}; missing: {', '.join(missing)}")
    if not isinstance(body["size"], int) or isinstance(body["size"], bool) or body["size"] < 0:
        raise BadRequest("size must be a non-negative integer (bytes)")
    optional = {"name": None, "disk_format": "raw", "container_format": "bare", "visibility": "shared"}
    # Checked as an image create checks them: a bad value is a 400 saying what to fix.
    checked = {key: check_core_value(key, body.get(key, default), **formats) for key, default in optional.items()}
    return {
        "id": body["id"], "size": body["size"], "virtual_size": body["size"],
        "checksum": body["checksum"], "os_hash_algo": "sha512", "os_hash_value": body["os_hash_value"],
        **checked,
    }


def _check_uuid(value: Any) -> None:
    """Canonical spelling only: `{…}`, upper case or no hyphens would be a
    second image with the same UUID."""
    try:
        canonical = str(uuid.UUID(value)) if isinstance(value, str) and len(value) == 36 else None
    except ValueError:
        canonical = None
    if canonical is None or canonical != value:
        raise BadRequest(f"Image id must be a UUID in canonical form (lower-case 8-4-4-4-12 hex), "
                         f"got {str(value)[:64]!r}")
