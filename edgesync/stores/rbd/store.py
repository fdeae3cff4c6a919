"""The rbd store: the interface's verbs on one pool of one Ceph cluster."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import rados
import rbd

from edgesync.config import StoreConfig
from edgesync.errors import (
    SizeMismatch,
    StoreError,
    StoreImageExists,
    StoreImageInUse,
    StoreImageNotFound,
    StoreUnavailable,
)
from edgesync.stores.base import Extent, Location, ResumableStore, ResumableWriter, StoreCapacity
from edgesync.stores.rbd.cluster import Cluster
from edgesync.stores.rbd.handles import SnapshotHandles
from edgesync.stores.rbd.images import (
    FEATURES,
    OBJECT_SIZE,
    ORDER,
    PARTIAL_SUFFIX,
    SNAP,
    check_id,
    data_extents,
    discard,
    image_exists,
    is_published,
    partial_name,
    qemu_escape,
    reopen_partial,
    why_unpublished,
)
from edgesync.stores.rbd.writer import RbdWriter

DEFAULT_WRITE_WINDOW = 8

T = TypeVar("T")


class RbdStore(ResumableStore):
    type = "rbd"

    def __init__(
        self, name: str, *, ceph_conf: Path, pool: str = "images", user: str = "admin",
        keyring: Path | None = None, connect_timeout_s: float = 10.0,
        description: str = "", read_only: bool = False,
        write_window: int = DEFAULT_WRITE_WINDOW, client_options: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.ceph_conf = Path(ceph_conf)
        self.pool = pool
        self.user = user
        self.keyring = Path(keyring) if keyring is not None else None
        self.description = description or f"{name} (rbd)"
        self.read_only = read_only
        self.write_window = write_window
        self._cluster = Cluster(name, ceph_conf=self.ceph_conf, pool=pool, user=user, keyring=self.keyring,
                                connect_timeout_s=connect_timeout_s, client_options=dict(client_options or {}))
        self._writers: set[RbdWriter] = set()
        self._snapshots = SnapshotHandles()

    @classmethod
    def from_config(cls, name: str, cfg: StoreConfig) -> RbdStore:
        if cfg.ceph_conf is None:
            raise StoreError(f"store {name}: rbd store needs 'ceph_conf'")
        return cls(
            name, ceph_conf=cfg.ceph_conf, pool=cfg.pool, user=cfg.user, keyring=cfg.keyring,
            connect_timeout_s=cfg.connect_timeout_s, description=cfg.description,
            read_only=cfg.read_only,
        )

    # -- the cluster's lifetime

    async def close(self) -> None:
        await self._cluster.close(drain=self._shutdown_writers, release=self._snapshots.close_all)

    async def _shutdown_writers(self) -> None:
        """Writers stop writing but keep their partial copies for a later resume."""
        for writer in list(self._writers):
            await writer.shutdown()

    # -- facts

    @property
    def fsid(self) -> str:
        if self._cluster.fsid is None:
            raise StoreUnavailable(f"store {self.name}: cluster fsid unknown until connected")
        return self._cluster.fsid

    def location_url(self, image_id: str) -> str:
        check_id(image_id)
        return f"rbd://{self.fsid}/{self.pool}/{image_id}/{SNAP}"

    def properties(self) -> dict[str, Any]:
        return {
            "pool": self.pool, "chunk_size": OBJECT_SIZE >> 20, "thin_provisioning": True,
            "fsid": self._cluster.fsid, "user": self.user,
        }

    async def capacity(self) -> StoreCapacity | None:
        """Used: the bytes the pool stores; free: the cluster's raw free space."""
        pool, cluster = await self._cluster.run(self._cluster.usage_sync, what="reading pool usage")
        # Both come from the mgr's digest; without a mgr the mon reports
        # zeros, which would read as "full" — say "unknown" instead.
        if not cluster.get("kb"):
            return None
        return StoreCapacity(used_bytes=pool["num_bytes"], free_bytes=cluster["kb_avail"] * 1024)

    # -- writing

    async def open_writer(self, image_id: str, size_bytes: int, *, resume: bool = False) -> ResumableWriter:
        check_id(image_id)
        if self.read_only:
            raise StoreError(f"store {self.name} is read-only")
        if size_bytes < 0:
            raise SizeMismatch(f"image {image_id}: negative size {size_bytes}")
        image = await self._cluster.run(self._open_partial_sync, image_id, size_bytes, resume,
                                what=f"creating image {image_id}")
        writer = RbdWriter(self._cluster, image_id, size_bytes, image, write_window=self.write_window,
                           location=Location(self.name, self.location_url(image_id)),
                           qemu_target=self._qemu_target(partial_name(image_id)), on_done=self._writers.discard)
        self._writers.add(writer)
        return writer

    def _qemu_target(self, rbd_name: str) -> str:
        """qemu's name for an image of the pool, in its legacy `rbd:` syntax."""
        target = (f"rbd:{self.pool}/{rbd_name}:conf={qemu_escape(str(self.ceph_conf))}"
                  f":id={qemu_escape(self.user)}")
        if self.keyring is not None:
            target += f":keyring={qemu_escape(str(self.keyring))}"
        return target

    def _open_partial_sync(self, ioctx: rados.Ioctx, image_id: str, size: int, resume: bool) -> rbd.Image:
        if image_exists(ioctx, image_id):
            raise StoreImageExists(f"store {self.name} already holds image {image_id}")
        partial = partial_name(image_id)
        own_addr = self._cluster.own_addr()
        if resume:
            image = reopen_partial(ioctx, partial, size, own_addr=own_addr)
            if image is not None:
                return image
        else:
            discard(ioctx, partial, own_addr=own_addr)
        try:
            rbd.RBD().create(ioctx, partial, size, order=ORDER, old_format=False, features=FEATURES)
        except rbd.ImageExists as exc:
            raise StoreImageExists(f"store {self.name}: another writer is creating image {image_id}") from exc
        return rbd.Image(ioctx, partial)

    # -- reading

    async def exists(self, image_id: str) -> bool:
        check_id(image_id)
        return await self._cluster.run(is_published, image_id, what=f"looking up image {image_id}")

    async def why_unpublished(self, image_id: str) -> str:
        check_id(image_id)
        why = await self._cluster.run(why_unpublished, image_id, what=f"looking up image {image_id}")
        return f"store {self.name} (pool {self.pool}): {why}"

    async def size(self, image_id: str) -> int:
        return await self._with_snapshot(image_id, lambda image: image.size(), "reading the size of")

    async def extents(self, image_id: str) -> list[Extent]:
        return await self._with_snapshot(image_id, data_extents, "listing the extents of")

    async def allocated_bytes(self, image_id: str) -> int:
        # Like `rbd du`: the objects that exist, whole, as the object map tells.
        extents = await self.extents(image_id)
        return sum(e.length for e in extents)

    async def read(self, image_id: str, offset: int, length: int) -> bytes:
        def read_range(image: rbd.Image) -> bytes:
            end = min(offset + length, image.size())
            return image.read(offset, end - offset) if end > offset else b""

        return await self._with_snapshot(image_id, read_range, "reading")

    async def _with_snapshot(self, image_id: str, fn: Callable[[rbd.Image], T], doing: str) -> T:
        """`fn(image)` on the published snapshot of `image_id`, opened read-only."""
        check_id(image_id)

        def open_snapshot(ioctx: rados.Ioctx) -> rbd.Image:
            try:
                return rbd.Image(ioctx, image_id, snapshot=SNAP, read_only=True)
            except rbd.ImageNotFound as exc:
                raise StoreImageNotFound(f"store {self.name} holds no copy of image {image_id}") from exc

        def run(ioctx: rados.Ioctx) -> T:
            with self._snapshots.use(image_id, functools.partial(open_snapshot, ioctx)) as image:
                return fn(image)

        return await self._cluster.run(run, what=f"{doing} image {image_id}")

    async def discard_unpublished(self, image_id: str) -> None:
        check_id(image_id)
        await self._cluster.run(self._discard_stale_sync, partial_name(image_id),
                        what=f"discarding unpublished image {image_id}")

    def _discard_stale_sync(self, ioctx: rados.Ioctx, partial: str) -> None:
        discard(ioctx, partial, own_addr=self._cluster.own_addr())

    async def image_ids(self) -> list[str]:
        def published(ioctx: rados.Ioctx) -> list[str]:
            names = [n for n in rbd.RBD().list(ioctx) if not n.endswith(PARTIAL_SUFFIX)]
            # A name without the suffix is published (the rename comes last),
            # unless something else put an image in the pool: check for `snap`.
            return sorted(n for n in names if is_published(ioctx, n))

        return await self._cluster.run(published, what="listing images")

    # -- deleting

    async def ensure_deletable(self, image_id: str) -> None:
        check_id(image_id)
        await self._cluster.run(self._ensure_deletable_sync, image_id, what=f"checking clones of image {image_id}")

    def _ensure_deletable_sync(self, ioctx: rados.Ioctx, image_id: str) -> None:
        try:
            image = rbd.Image(ioctx, image_id, read_only=True)
        except rbd.ImageNotFound:
            return  # no copy: nothing can refuse its deletion
        with image:
            self._refuse_deletion_blockers(image, image_id)

    async def delete(self, image_id: str) -> None:
        check_id(image_id)
        await self._cluster.run(self._delete_sync, image_id, what=f"deleting image {image_id}")

    def _delete_sync(self, ioctx: rados.Ioctx, image_id: str) -> None:
        self._snapshots.evict(image_id)
        try:
            image = rbd.Image(ioctx, image_id)
        except rbd.ImageNotFound as exc:
            raise StoreImageNotFound(f"store {self.name} holds no copy of image {image_id}") from exc
        with image:
            if self._refuse_deletion_blockers(image, image_id):
                self._remove_published_snap(image, image_id)
        try:
            rbd.RBD().remove(ioctx, image_id)
        except (rbd.ImageBusy, rbd.ImageHasSnapshots) as exc:
            raise StoreImageInUse(f"store {self.name}: image {image_id} is still open or referenced") from exc

    def _refuse_deletion_blockers(self, image: rbd.Image, image_id: str) -> bool:
        """StoreImageInUse if anything depends on the copy; whether it has `snap`.

        Someone else's snapshots (a backup) and COW clones of `snap` both
        block. Clone v2 lets clones exist without protection and unprotect
        does not refuse them, so clones must be looked for, not inferred.
        """
        snaps = {s["name"] for s in image.list_snaps()}
        if snaps - {SNAP}:
            raise StoreImageInUse(
                f"store {self.name}: image {image_id} has other snapshots "
                f"({', '.join(sorted(snaps - {SNAP}))}); not deleting it"
            )
        if SNAP in snaps:
            self._refuse_if_cloned(image, image_id)
        return SNAP in snaps

    def _remove_published_snap(self, image: rbd.Image, image_id: str) -> None:
        """Unprotect and remove `snap`, once `_refuse_deletion_blockers` passed."""
        if image.is_protected_snap(SNAP):
            image.unprotect_snap(SNAP)
        try:
            # A clone made between the check and the unprotect: undo, refuse.
            self._refuse_if_cloned(image, image_id)
        except StoreImageInUse:
            image.protect_snap(SNAP)
            raise
        image.remove_snap(SNAP)

    def _refuse_if_cloned(self, image: rbd.Image, image_id: str) -> None:
        image.set_snap(SNAP)
        try:
            children = list(image.list_children2())
        except rbd.PermissionError as exc:
            # librbd names each clone, which takes read access to the clone's
            # pool. A store user confined to its own pool (as Glance's is)
            # gets EPERM exactly when clones live elsewhere: Nova's vms or
            # Cinder's volumes pool. Clones that can't be named still block.
            raise StoreImageInUse(f"store {self.name}: image {image_id} has COW clones in pools its Ceph user "
                                  "can't read (Nova's or Cinder's); not deleting it") from exc
        finally:
            image.set_snap(None)
        if children:
            names = ", ".join(f"{c['pool']}/{c['image']}" + (" (in trash)" if c.get("trash") else "")
                              for c in children)
            raise StoreImageInUse(f"store {self.name}: image {image_id} has COW clones: {names}")

