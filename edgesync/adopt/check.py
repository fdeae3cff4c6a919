"""Checking a copy another image service wrote, where it lies.

A copy is adopted in place only if it is published as edgesync publishes its
own (for RBD `<uuid>@snap`, protected), has the image's size, and — when
verified — its bytes hash to the image's os_hash_value (md5 `checksum` for
images older than os_hash). Verification is the site's own `verify` (the
hub hashes central's copy, an edge's agent its copy, over the bus): no byte
crosses the WAN. Without verification, the site is asked only whether it
holds the copy and how big it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgesync.errors import EdgesyncError, StoreError, StoreImageNotFound
from edgesync.hub.sites.base import Site, VerifiedCopy
from edgesync.model import Image
from edgesync.transfer.manifest import Manifest


class CopyMissing(StoreError):
    """The site has no published copy (RBD: no `<uuid>@snap`, or it is not protected)."""

    code = "copy_missing"


class CopyMismatch(StoreError):
    """The copy is there but is not the image: another size, or other bytes."""

    code = "copy_mismatch"


@dataclass(frozen=True)
class CopyCheck:
    location_url: str  # the copy's location as the site's store writes it
    verified_bytes: int  # logical bytes hashed (0 without verification)
    manifest: Manifest | None = None  # made in the same pass, where the hub hashed it


async def check_copy(site: Site, image: Image, *, source_url: str, full: bool, job_id: str) -> CopyCheck:
    """The site's copy of `image`, checked; CopyMissing or CopyMismatch if it is not the image's."""
    assert image.size is not None
    if not full:
        return await _published_at_size(site, image, source_url)
    try:
        copy = await site.verify(image.id, job_id=job_id)
    except StoreImageNotFound as exc:
        raise CopyMissing(exc.message) from exc
    _same_size(site, image, copy.size)
    _same_bytes(site, image, copy)
    return CopyCheck(copy.location_url, copy.size, copy.manifest)


async def _published_at_size(site: Site, image: Image, source_url: str) -> CopyCheck:
    if not await site.holds(image.id):
        raise CopyMissing(f"site {site.name} holds no published copy of image {image.id} "
                          "(RBD: no image with a protected snapshot 'snap')")
    _same_size(site, image, await site.reader(image.id).size())
    try:
        url = site.registered_location(image.id, source_url)
    except EdgesyncError as exc:
        raise CopyMismatch(f"site {site.name}: {exc.message}") from exc
    return CopyCheck(str(url), 0)


def _same_size(site: Site, image: Image, size: int) -> None:
    if size != image.size:
        raise CopyMismatch(f"site {site.name}: the copy of {image.id} is {size} bytes, the image {image.size}")


def _same_bytes(site: Site, image: Image, copy: VerifiedCopy) -> None:
    algo = image.os_hash_algo or "sha512"
    if image.os_hash_value and algo != "sha512":
        raise CopyMismatch(f"image {image.id}'s os_hash_algo is {algo}: edgesync verifies sha512 (and md5 "
                           "checksums); adopt it with --verify none or re-import it")
    differ = []
    if image.os_hash_value and image.os_hash_value.lower() != copy.os_hash_value:
        differ.append("os_hash_value (sha512)")
    if image.checksum and image.checksum.lower() != copy.checksum:
        differ.append("checksum (md5)")
    if differ:
        raise CopyMismatch(f"site {site.name}: the copy of {image.id} does not hash to its "
                           f"{' and '.join(differ)}; its bytes differ from the image's")
    if not image.os_hash_value and not image.checksum:
        raise CopyMismatch(f"image {image.id} has neither os_hash_value nor checksum to verify against; "
                           "adopt it with --verify none")
