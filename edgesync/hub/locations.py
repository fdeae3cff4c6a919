"""Glance's location API (v2.17) over edgesync's stores.

* `GET /v2/images/{id}/locations` (`fetch_image_location`: the service
  persona or an admin): the image's locations as Glance lists them,
  `[{"url", "metadata"}]`. Cinder's `get_location` uses it.
* `POST /v2/images/{id}/locations` (`add_image_location`) with `url` and
  optional `validation_data` (`os_hash_algo`, `os_hash_value`, and
  `checksum`, which Glance's schema lacks but its PATCH path takes) on a
  queued image: 202, and the copy the URL names is checked where it is.
  Nova's direct snapshot calls it for the snapshot it wrote into a site's
  pool; PATCH `add /locations/-` is its older way, and `remove
  /locations/N` removes a store's copy (as a store delete, with its rules).

A location names a copy in one of the hub's stores: `rbd://<fsid>/<pool>/
<image id>/snap` is matched to the store whose Ceph cluster has that fsid
and whose pool it is (a file store: `file://<its directory>/<image id>`).
The copy must be named after the image (every store keeps an image as
`<uuid>`, and Nova names its snapshot so). Only the service persona and
admins add or remove locations: a location points at data in a store, and
users write data through uploads and imports, not by naming it.

Adding one starts a `location-import` task (importer.py): the site checks
that the copy is published (RBD: the protected snapshot `snap`) and hashes
it — an edge site's agent over the bus, a store the hub runs in the hub —
the image goes active in that store with its size, md5 and sha512, and an
edge store's copy goes on to central by itself (hub first: copies to other
edges are refused until central has it). A copy that isn't there, or whose
hash differs from `validation_data`, fails the task: the image is queued
again with no location, as Glance reverts its flow, and the task's message
says why (`GET /v2/images/{id}/tasks`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from edgesync.errors import BadRequest, Conflict, Forbidden
from edgesync.hub.auth import Caller
from edgesync.hub.patch import PatchOp, parse_ops
from edgesync.model import Image, ImageStatus
from edgesync.stores.base import Location

if TYPE_CHECKING:
    from edgesync.hub.app import Hub

HASH_ALGO = "sha512"  # the one the hub computes and every copy is checked against
PUBLISHED_SNAPSHOT = "snap"
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class StoreIdentity:
    """What a location URL must name to be in a store."""

    store: str
    type: str
    fsid: str | None = None  # rbd
    pool: str | None = None  # rbd
    directory: str | None = None  # file

    def describe(self) -> str:
        if self.type == "rbd":
            return f"{self.store} (fsid {self.fsid or 'unknown to the hub'}, pool {self.pool})"
        return f"{self.store} (file://{self.directory}/<image id>)"


def authorize(hub: Hub, rule: str, caller: Caller, image: Image) -> None:
    """Glance's policy `rule` on `image`, with Glance's image target (403
    naming the rule; 404 to a caller the policy doesn't let see the image)."""
    hub.policy.enforce_on_image(rule, caller, image)


def require_service_or_admin(caller: Caller, action: str) -> None:
    """Glance lets only its service persona (and edgesync admins) name store
    locations: anyone else could point an image at data they don't own."""
    if not (caller.is_admin or "service" in caller.roles):
        raise Forbidden(f"Only the service persona (Nova, Cinder: a service token) or an admin may {action}")


def store_identities(hub: Hub) -> list[StoreIdentity]:
    out = []
    for name, site in hub.sites.items():
        props = site.store_properties()
        if site.store_type == "rbd":
            fsid = props.get("fsid")
            out.append(StoreIdentity(name, "rbd", fsid=str(fsid).lower() if fsid else None, pool=props.get("pool")))
        else:
            out.append(StoreIdentity(name, site.store_type, directory=str(props.get("datadir", "")).rstrip("/")))
    return out


def store_for_location(hub: Hub, image_id: str, url: Any) -> str:
    """The store `url` names a copy of `image_id` in; BadRequest saying which
    stores exist if none does."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise BadRequest("The location needs a 'url' string, e.g. rbd://<fsid>/<pool>/<image id>/snap")
    stores = store_identities(hub)
    known = "; ".join(s.describe() for s in stores)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "rbd":
        fsid, pool, name = _rbd_parts(url)
        store = next((s for s in stores if s.type == "rbd" and s.fsid == fsid.lower() and s.pool == pool), None)
        where = f"Ceph cluster {fsid}, pool {pool!r}"
    elif scheme == "file":
        directory, _, name = unquote(urlsplit(url).path).rpartition("/")
        store = next((s for s in stores if s.type != "rbd" and s.directory == directory), None)
        where = f"directory {directory}"
    else:
        raise BadRequest(f"Location {url[:200]!r}: edgesync's stores take rbd:// locations "
                         f"(file:// for file stores), not {scheme or 'a URL without scheme'}; stores: {known}")
    if store is None:
        raise BadRequest(f"No store of this hub is in {where} (location {url[:200]}); stores: {known}")
    if name != image_id:
        raise BadRequest(f"Location {url[:200]} names {name!r}: a store keeps image {image_id} as {image_id} "
                         "(Nova's direct snapshot names its RBD image after the image id)")
    return store.store


def _rbd_parts(url: str) -> tuple[str, str, str]:
    """fsid, pool and image of `rbd://fsid/pool/image/snap` (Nova's and
    Cinder's parse_url: four non-empty, URL-quoted parts)."""
    parts = [unquote(p) for p in url[len("rbd://"):].split("/")]
    if len(parts) != 4 or not all(parts):
        raise BadRequest(f"Location {url[:200]!r} is not rbd://<fsid>/<pool>/<image>/<snapshot>")
    fsid, pool, name, snap = parts
    if snap != PUBLISHED_SNAPSHOT:
        raise BadRequest(f"Location {url[:200]} names snapshot {snap!r}: copies are cloned from their "
                         f"protected snapshot {PUBLISHED_SNAPSHOT!r}, so a location must name it")
    return fsid, pool, name


def validation_data(raw: Any) -> dict[str, str]:
    """Glance's `validation_data`: os_hash_algo with os_hash_value, and checksum (md5)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("validation_data must be an object with os_hash_algo, os_hash_value (and checksum)")
    unknown = sorted(set(raw) - {"os_hash_algo", "os_hash_value", "checksum"})
    if unknown:
        raise BadRequest(f"validation_data takes os_hash_algo, os_hash_value and checksum, not {', '.join(unknown)}")
    if ("os_hash_algo" in raw) != ("os_hash_value" in raw):
        raise BadRequest("validation_data: os_hash_algo and os_hash_value go together")
    out = {}
    if "os_hash_algo" in raw:
        if raw["os_hash_algo"] != HASH_ALGO:
            raise BadRequest(f"validation_data: os_hash_algo must be {HASH_ALGO} (the hash this hub computes "
                             f"and checks every copy against), got {str(raw['os_hash_algo'])[:64]!r}")
        out["os_hash_value"] = _hex(raw["os_hash_value"], "os_hash_value", hashlib.sha512().digest_size)
    if "checksum" in raw:
        out["checksum"] = _hex(raw["checksum"], "checksum", hashlib.md5().digest_size)
    return out


def _hex(value: Any, key: str, size: int) -> str:
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        raise BadRequest(f"validation_data: {key} must be {2 * size} hexadecimal digits "
                         f"({size} bytes), got {str(value)[:140]!r}")
    return value.lower()


class LocationService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def locations(self, caller: Caller, image_id: str) -> list[dict[str, Any]]:
        """The service persona sees any image's: Cinder asks with its own
        service credentials (not the user's token) for whatever image a user
        makes a volume from, and `fetch_image_location` admits only it."""
        image = await self.hub.catalog.get_image(image_id) if "service" in caller.roles else None
        if image is None:
            image = await self.hub.images.get(caller, image_id)
        authorize(self.hub, "fetch_image_location", caller, image)
        return [loc.as_glance() for loc in self._ordered(image)]

    async def add(self, caller: Caller, image_id: str, url: Any, raw_validation: Any) -> None:
        """Start checking the copy `url` names (the image must be queued)."""
        image = await self.hub.images.get(caller, image_id)
        authorize(self.hub, "add_image_location", caller, image)
        require_service_or_admin(caller, "add a location")
        expected = validation_data(raw_validation)
        if image.status != ImageStatus.QUEUED:
            raise Conflict(f"It's not allowed to add locations if image status is {image.status.value}: "
                           "a location can be added only to a queued image (one with no data yet)")
        store = store_for_location(self.hub, image.id, url)
        await self.hub.importer.request_location_import(image, caller, store, url, expected)

    async def patch(self, caller: Caller, image_id: str, ops: list[PatchOp]) -> None:
        """PATCH's `/locations` operations, in order."""
        for op in ops:
            if not self.hub.config.show_locations:
                raise Forbidden("It's not allowed to change locations if locations are invisible "
                                "(the hub's show_locations is off); use POST /v2/images/{id}/locations")
            if op.op == "add":
                value = op.value if isinstance(op.value, dict) else {}
                await self.add(caller, image_id, value.get("url"), value.get("validation_data"))
            elif op.op == "remove":
                await self._remove(caller, image_id, op.path[1])
            else:
                raise Forbidden("Replacing all of an image's locations is not supported: add a location to a "
                                "queued image, or remove one by its index (/locations/N)")

    async def _remove(self, caller: Caller, image_id: str, index: str) -> None:
        image = await self.hub.images.get(caller, image_id)
        authorize(self.hub, "delete_image_location", caller, image)
        require_service_or_admin(caller, "remove a location")
        if image.status != ImageStatus.ACTIVE:
            raise Conflict(f"It's not allowed to remove locations if image status is {image.status.value}")
        ordered = self._ordered(image)
        if not (index.isascii() and index.isdigit() and int(index) < len(ordered)):
            raise BadRequest(f"Invalid position for removing a location: {index[:20]!r} (the image has "
                             f"{len(ordered)}; /locations/0 is the first, as GET /v2/images/{image_id} lists them)")
        await self.hub.images.delete_from_store(caller, ordered[int(index)].store, image_id)

    def _ordered(self, image: Image) -> list[Location]:
        """Central first, then by store name: the order image JSON lists them in."""
        return sorted(image.locations, key=lambda loc: (loc.store != self.hub.central, loc.store))


def split_location_ops(body: Any, dialect: str) -> tuple[Any, list[PatchOp]]:
    """A PATCH body without its `/locations` operations, and those (parsed):
    the image service applies the rest, the location service these."""
    ops = parse_ops(body, dialect)  # a malformed body is a 400 here already
    rest = [raw for raw, op in zip(body, ops, strict=True) if op.key != "locations"]
    return rest, [op for op in ops if op.key == "locations"]
