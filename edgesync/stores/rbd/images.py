"""The pool's images: how copies are named, and the blocking librbd steps on them.

A published copy is the RBD image `<id>` with a protected snapshot `snap`; an
unpublished one is `<id>.partial` (see the package docstring). Every function
taking an `ioctx` blocks: the store runs it in its cluster's thread pool.
"""

from __future__ import annotations

import rados
import rbd

from edgesync.errors import StoreImageNotFound
from edgesync.stores.base import Extent

SNAP = "snap"
PARTIAL_SUFFIX = ".partial"
ORDER = 22  # 4 MiB objects, RBD's default
OBJECT_SIZE = 1 << ORDER
# Object map + fast-diff make `extents`/`allocated_bytes` cheap (no per-object
# listing); layering is what clones need; the rest is RBD's usual default set.
FEATURES = (
    rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP
    | rbd.RBD_FEATURE_FAST_DIFF | rbd.RBD_FEATURE_DEEP_FLATTEN
)


def partial_name(image_id: str) -> str:
    return image_id + PARTIAL_SUFFIX


def check_id(image_id: str) -> None:
    # Image ids are UUIDs; '/' and '@' mean pool and snapshot to RBD tooling,
    # and a `.partial` id would collide with another image's unpublished copy.
    if (not image_id or "/" in image_id or "@" in image_id or image_id.startswith(".")
            or image_id.endswith(PARTIAL_SUFFIX)):
        raise StoreImageNotFound(f"not an image id: {image_id!r}")


def image_exists(ioctx: rados.Ioctx, name: str) -> bool:
    try:
        rbd.Image(ioctx, name, read_only=True).close()
    except rbd.ImageNotFound:
        return False
    return True


def why_unpublished(ioctx: rados.Ioctx, image_id: str) -> str:
    """What `is_published` lacks: the image, its snapshot, or the protection."""
    try:
        image = rbd.Image(ioctx, image_id, read_only=True)
    except rbd.ImageNotFound:
        return f"there is no RBD image {image_id}"
    with image:
        if SNAP not in {s["name"] for s in image.list_snaps()}:
            return f"RBD image {image_id} has no snapshot {SNAP!r}"
        if not image.is_protected_snap(SNAP):
            return f"the snapshot {image_id}@{SNAP} is not protected (rbd snap protect)"
    return f"RBD image {image_id} is published"


def is_published(ioctx: rados.Ioctx, image_id: str) -> bool:
    try:
        image = rbd.Image(ioctx, image_id, read_only=True)
    except rbd.ImageNotFound:
        return False
    with image:
        names = {s["name"] for s in image.list_snaps()}
        return SNAP in names and bool(image.is_protected_snap(SNAP))


def reopen_partial(ioctx: rados.Ioctx, partial: str, size: int, *, own_addr: str) -> rbd.Image | None:
    """Reopen an earlier attempt's partial image for `resume`, ready for writing."""
    try:
        image = rbd.Image(ioctx, partial)
    except rbd.ImageNotFound:
        return None
    try:
        break_stale_lock(image, own_addr)
        # A crash mid-publish can leave `snap`; publish creates it afresh.
        remove_snapshots(image)
        if image.size() != size:
            image.resize(size)
    except BaseException:
        image.close()
        raise
    return image


def discard(ioctx: rados.Ioctx, name: str, *, own_addr: str | None = None) -> None:
    """Remove an unpublished image and its snapshots; missing is fine. With
    `own_addr`, an earlier writer's lock is broken first (see break_stale_lock)."""
    try:
        image = rbd.Image(ioctx, name)
    except rbd.ImageNotFound:
        return
    with image:
        if own_addr is not None:
            break_stale_lock(image, own_addr)
        remove_snapshots(image)
    try:
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass


def remove_snapshots(image: rbd.Image) -> None:
    """Unprotect and remove every snapshot of an unpublished image."""
    for snap in list(image.list_snaps()):
        if image.is_protected_snap(snap["name"]):
            image.unprotect_snap(snap["name"])
        image.remove_snap(snap["name"])


def break_stale_lock(image: rbd.Image, own_addr: str) -> None:
    """Break the exclusive lock an earlier writer of this partial image still holds.

    A writer killed mid-copy keeps the lock until its watch times out (30 s):
    the first write of a resumed copy, or the removal of the leftover, would
    wait that long. Reopening or discarding a partial image says the earlier
    writer is gone (partial images are written by one store only), so its
    lock is broken, which blocklists that dead client. Never our own client's
    lock: blocklisting ourselves would cut this store off.
    """
    for owner in list(image.lock_get_owners()):
        if owner["owner"] != own_addr:
            image.lock_break(owner["mode"], owner["owner"])


def data_extents(image: rbd.Image) -> list[Extent]:
    """Allocated ranges of the open snapshot, merged, at object granularity.

    whole_object=True answers from the object map (fast-diff) instead of
    listing every object; receivers skip zeros inside objects anyway.
    """
    size = image.size()
    ranges: list[tuple[int, int]] = []

    def collect(offset: int, length: int, exists: bool) -> int:
        if exists:
            ranges.append((offset, min(offset + length, size)))
        return 0

    image.diff_iterate(0, size, None, collect, include_parent=True, whole_object=True)
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [Extent(start, end - start) for start, end in merged]


def qemu_escape(value: str) -> str:
    """Escape a value of qemu's legacy `rbd:` filename syntax (':' separates options)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")
