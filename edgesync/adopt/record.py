"""A Glance image record as edgesync keeps it, and its locations as copies to adopt.

Glance's image JSON (what `GET /v2/images/{id}` shows an admin with
`show_multiple_locations`) is taken as it is: the same id, status, owner,
visibility, flags, core attributes, checksum and os_hash_*, sizes,
timestamps, tags, and every extra property. Glance's own bookkeeping
(`os_glance_*`: its import tasks) and what follows from the rest (`self`,
`file`, `schema`, `stores`, `direct_url`, `locations`) are not properties.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgesync.catalog.members import MEMBER_STATUSES, ImageMember
from edgesync.errors import BadRequest
from edgesync.model import RESERVED_PREFIX, Image, ImageStatus, Visibility, utcnow

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RBD_URL_RE = re.compile(r"rbd://([^/]+)/([^/]+)/([^/]+)/([^/]+)")
_INT_FIELDS = ("size", "virtual_size", "min_ram", "min_disk")
_TEXT_FIELDS = ("name", "disk_format", "container_format", "checksum", "os_hash_algo", "os_hash_value", "owner")
_NOT_PROPERTIES = frozenset({
    "id", "name", "status", "disk_format", "container_format", "visibility", "size", "virtual_size",
    "checksum", "os_hash_algo", "os_hash_value", "protected", "os_hidden", "owner", "min_ram", "min_disk",
    "created_at", "updated_at", "tags", "self", "file", "schema", "stores", "direct_url", "locations",
})


@dataclass(frozen=True)
class SourceCopy:
    """One location of the image in the source: a Glance store's copy."""

    store: str | None  # the Glance store it is in (location metadata), if it says
    url: str
    fsid: str | None = None  # for rbd://FSID/POOL/IMAGE/SNAP
    pool: str | None = None
    rbd_image: str | None = None
    snapshot: str | None = None

    @property
    def is_rbd(self) -> bool:
        return self.fsid is not None


def parse_image(body: Any) -> tuple[Image, list[SourceCopy]]:
    """The image and its source copies; BadRequest saying what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("image must be the source's image JSON (an object)")
    image_id = body.get("id")
    if not isinstance(image_id, str) or not UUID_RE.fullmatch(image_id):
        raise BadRequest(f"image.id must be a canonical lower-case UUID, got {image_id!r}")
    image = Image(id=image_id, owner=_text(body, "owner"), status=_enum(body, "status", ImageStatus),
                  visibility=_enum(body, "visibility", Visibility), protected=_flag(body, "protected"),
                  os_hidden=_flag(body, "os_hidden"), created_at=_stamp(body, "created_at"),
                  updated_at=_stamp(body, "updated_at"), properties=_properties(body), tags=_tags(body))
    for name in _TEXT_FIELDS:
        setattr(image, name, _text(body, name))
    for name in _INT_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise BadRequest(f"image.{name} must be a whole number of at least 0 or null, got {value!r}")
        if value is not None or name in ("size", "virtual_size"):
            setattr(image, name, value)
    return image, _copies(body)


def parse_members(body: Any, image_id: str) -> list[ImageMember]:
    """Glance's `members` list (member_id, status, created_at, updated_at), kept as Glance has them."""
    if body is None:
        return []
    if not isinstance(body, list):
        raise BadRequest("members must be a list of {member_id, status, created_at, updated_at}")
    members = []
    for entry in body:
        fields = {k: entry.get(k) if isinstance(entry, dict) else None
                  for k in ("member_id", "status", "created_at", "updated_at")}
        if not isinstance(fields["member_id"], str) or not fields["member_id"] \
                or fields["status"] not in MEMBER_STATUSES:
            raise BadRequest(f"each member needs a member_id and a status ({', '.join(MEMBER_STATUSES)}); "
                             f"got {entry!r}"[:300])
        stamps = [v if isinstance(v, str) else utcnow() for v in (fields["created_at"], fields["updated_at"])]
        members.append(ImageMember(image_id, fields["member_id"], fields["status"], *stamps))
    return members


def parse_rbd_url(url: str) -> tuple[str, str, str, str] | None:
    match = RBD_URL_RE.fullmatch(url)
    return None if match is None else (match.group(1), match.group(2), match.group(3), match.group(4))


def _copies(body: dict[str, Any]) -> list[SourceCopy]:
    raw = body.get("locations")
    if raw is None:  # no show_multiple_locations: the one direct_url, if shown
        raw = [{"url": body["direct_url"], "metadata": {}}] if isinstance(body.get("direct_url"), str) else []
    if not isinstance(raw, list):
        raise BadRequest("image.locations must be a list of {url, metadata}")
    copies = []
    for entry in raw:
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise BadRequest(f"each location needs a url, got {entry!r}"[:300])
        metadata = entry.get("metadata") or {}
        store = metadata.get("store") if isinstance(metadata, dict) else None
        parsed = parse_rbd_url(url)
        copies.append(SourceCopy(store if isinstance(store, str) else None, url, *(parsed or (None,) * 4)))
    return copies


def _properties(body: dict[str, Any]) -> dict[str, str]:
    props = {}
    for key, value in body.items():
        if key in _NOT_PROPERTIES or key.startswith(RESERVED_PREFIX):
            continue
        if not isinstance(value, str):
            raise BadRequest(f"image property {key!r} must be a string (Glance's extra properties are), "
                             f"got {type(value).__name__}")
        props[key] = value
    return props


def _tags(body: dict[str, Any]) -> list[str]:
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadRequest("image.tags must be a list of strings")
    return list(tags)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"image.{name} must be a string or null, got {type(value).__name__}")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"image.{name} must be true or false, got {value!r}")
    return value


def _stamp(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"image.{name} must be the source's timestamp, e.g. 2026-01-31T12:00:00Z")
    return value


def _enum(body: dict[str, Any], name: str, kind: type[ImageStatus] | type[Visibility]) -> Any:
    try:
        return kind(body.get(name))
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise BadRequest(f"image.{name} must be one of {choices}, got {body.get(name)!r}") from None
