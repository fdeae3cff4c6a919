"""The `rbd` store: one RBD image per image id in one pool of one Ceph cluster.

A published copy is the RBD image `<id>` with a protected snapshot `snap`;
Nova and Cinder COW-clone that snapshot, and its location is
`rbd://<fsid>/<pool>/<id>/snap`, the form Glance's rbd store uses.

Writing and publishing. A copy is written into `<id>.partial`. `publish()`
waits for the writes in flight, flushes, creates `snap`, protects it, and only
then renames `<id>.partial` to `<id>`. Readers look for `<id>` with a
protected `snap`, so a crash at any step leaves either nothing they accept or
a complete, protected copy; a stale `.partial` is discarded by the next writer
(or reopened with `resume=True`). Any failure while writing or publishing, and
`abort()`, remove the partial image and its snapshots.

Concurrency. This is the only module that imports the rados/rbd bindings.
Their calls block, so every one runs in the store's small thread pool, never
on the event loop. Writes use librbd's aio: a writer keeps up to
`write_window` object-sized writes in flight (8 x 4 MiB by default), which is
what makes a single stream fast (about 2.5x a one-at-a-time writer here).
All-zero runs are never written, so holes stay holes.

One cluster connection per store, opened on first use with timeouts derived
from `connect_timeout_s`, so an unreachable cluster fails fast with the
retryable StoreUnavailable instead of hanging.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import rados
import rbd

from edgesync.config import StoreConfig
from edgesync.errors import (
    SizeMismatch,
    StoreError,
    StoreFull,
    StoreImageExists,
    StoreImageInUse,
    StoreImageNotFound,
    StoreUnavailable,
)
from edgesync.stores.base import Extent, ImageStore, ImageWriter, Location, StoreCapacity
from edgesync.stores.sparse import data_runs

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
DEFAULT_WRITE_WINDOW = 8
IO_THREADS = 8
# Read-only snapshot handles kept open between reads (see _SnapshotHandles).
CACHED_HANDLES = 8
HANDLE_IDLE_S = 10.0
# A single OSD op may legitimately take seconds on a busy cluster; a hung one
# must still fail eventually rather than stall a transfer forever.
MIN_OSD_OP_TIMEOUT_S = 30

T = TypeVar("T")

_ERRNO_CLASSES: dict[int, type[StoreError]] = {
    errno.EEXIST: StoreImageExists,
    errno.ENOENT: StoreImageNotFound,
    errno.EBUSY: StoreImageInUse,
    errno.ENOTEMPTY: StoreImageInUse,  # rbd.ImageHasSnapshots
    errno.ENOSPC: StoreFull,
    errno.EDQUOT: StoreFull,
    errno.ETIMEDOUT: StoreUnavailable,
    errno.ESHUTDOWN: StoreUnavailable,  # also "client blocklisted"
    errno.ENOTCONN: StoreUnavailable,
    errno.ECONNREFUSED: StoreUnavailable,
    errno.EAGAIN: StoreUnavailable,
}


def _store_error(code: int | None, message: str) -> StoreError:
    """The store exception for a (positive) errno from librados/librbd."""
    if code in (errno.EPERM, errno.EACCES):
        return StoreError(f"{message}: permission denied (check the cephx user's caps)")
    cls = _ERRNO_CLASSES.get(code or 0, StoreError)
    detail = errno.errorcode.get(code or 0, str(code))
    return cls(f"{message} ({detail})")


def _translate(exc: BaseException, message: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "errno", None)
    if code is None and isinstance(exc, (rados.TimedOut, rbd.Timeout)):
        code = errno.ETIMEDOUT
    return _store_error(abs(code) if isinstance(code, int) else None, message)


def _partial_name(image_id: str) -> str:
    return image_id + PARTIAL_SUFFIX


def _check_id(image_id: str) -> None:
    # Image ids are UUIDs; '/' and '@' mean pool and snapshot to RBD tooling,
    # and a `.partial` id would collide with another image's unpublished copy.
    if (not image_id or "/" in image_id or "@" in image_id or image_id.startswith(".")
            or image_id.endswith(PARTIAL_SUFFIX)):
        raise StoreImageNotFound(f"not an image id: {image_id!r}")


def conf_fsid(conf: Path | None) -> str | None:
    """The `fsid` in a ceph.conf's [global] section, if it names one."""
    if conf is None:
        return None
    try:
        text = Path(conf).read_text()
    except OSError:
        return None
    section = "global"
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section == "global" and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            if re.sub(r"[ _]+", "_", key) == "fsid":
                return value
    return None


def _qemu_escape(value: str) -> str:
    """Escape a value of qemu's legacy `rbd:` filename syntax (':' separates options)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


# --- writer ----------------------------------------------------------------------


class RbdWriter(ImageWriter):
    """An unpublished copy: the image `<id>.partial`, written through an aio window.

    Zero detection and copying run in the store's pool; window slots, aio
    submission and completion bookkeeping run on the event loop (aio_write
    only queues the request), so concurrent `write()` calls share one window
    without tying up pool threads. Completions arrive on librbd threads and
    are handed to the loop.
    """

    def __init__(self, store: RbdStore, image_id: str, size_bytes: int, image: rbd.Image) -> None:
        self.store = store
        self.image_id = image_id
        self.size_bytes = size_bytes
        self._partial = _partial_name(image_id)
        self._image: rbd.Image | None = image
        self._state = "open"  # -> "publishing" -> "published" | "aborted"
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(store.write_window)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # One future per aio write in flight, so flush() can wait for exactly
        # the writes submitted before it while later ones keep the window full.
        self._pending: set[asyncio.Future[None]] = set()
        self._failure: StoreError | None = None

    # -- public

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        self._check_open()
        length = memoryview(data).nbytes
        if offset < 0 or offset + length > self.size_bytes:
            await self._abort_quietly()
            raise SizeMismatch(
                f"write of {length} bytes at {offset} goes past the declared "
                f"size {self.size_bytes} of image {self.image_id}"
            )
        try:
            pieces = await self.store._offload(_object_pieces, offset, data)
            for piece_offset, piece in pieces:
                await self._slots.acquire()
                try:
                    self._raise_if_failed()
                    self._check_open()  # aborted while we waited for a slot
                except BaseException:
                    self._slots.release()
                    raise
                self._submit(piece_offset, piece)
            self._raise_if_failed()
        except BaseException:
            await self._abort_quietly()
            raise

    async def publish(self) -> Location:
        self._check_open()
        self._state = "publishing"
        try:
            await self._idle.wait()
            self._raise_if_failed()
            await self.store._run(self._publish_sync, what=f"publishing image {self.image_id}")
        except BaseException:
            self._state = "open"  # so that abort() cleans up
            await self._abort_quietly()
            raise
        self._state = "published"
        self.store._writers.discard(self)
        return Location(self.store.name, self.store.location_url(self.image_id))

    async def read_back(self, offset: int, length: int) -> bytes:
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise SizeMismatch(f"read of {length} bytes at {offset} is outside image {self.image_id} "
                               f"({self.size_bytes} bytes)")
        return await self.store._run(self._read_back_sync, offset, length,
                                     what=f"reading back unpublished image {self.image_id}")

    async def flush(self) -> None:
        self._check_open()
        submitted = list(self._pending)
        if submitted:
            await asyncio.wait(submitted)  # not gather: a cancelled flush must not cancel writes
        self._raise_if_failed()
        # With rbd_cache on (client_options), completed writes may sit in the cache.
        await self.store._run(self._flush_sync, what=f"flushing image {self.image_id}")

    async def suspend(self) -> None:
        if self._state != "open":
            return
        self._state = "suspended"
        self.store._writers.discard(self)
        await self._idle.wait()
        await asyncio.to_thread(self._close_image)

    async def abort(self) -> None:
        if self._state in ("aborted", "published"):
            return
        self._state = "aborted"
        self.store._writers.discard(self)
        await self._idle.wait()  # librbd must be done with every write before close
        await self.store._run(self._abort_sync, what=f"removing unpublished image {self._partial}")

    def qemu_destination(self) -> str:
        s = self.store
        target = f"rbd:{s.pool}/{self._partial}:conf={_qemu_escape(str(s.ceph_conf))}:id={_qemu_escape(s.user)}"
        if s.keyring is not None:
            target += f":keyring={_qemu_escape(str(s.keyring))}"
        return target

    # -- the aio window (event loop side)

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreError(f"writer for image {self.image_id} is already {self._state}")

    def _raise_if_failed(self) -> None:
        """Surface an aio write that failed since the last call."""
        if self._failure is not None:
            raise self._failure

    def _submit(self, offset: int, piece: bytes) -> None:
        image = self._image
        assert image is not None, "open writer without an image"
        self._inflight += 1
        self._idle.clear()
        done = self._loop.create_future()
        self._pending.add(done)

        # Runs on a librbd thread. `piece` stays referenced by this closure
        # until librbd is done with it.
        def on_complete(completion: rbd.Completion) -> None:
            ret = completion.get_return_value()
            try:
                self._loop.call_soon_threadsafe(self._completed, ret, offset, len(piece), done)
            except RuntimeError:  # loop already closed: nobody is waiting any more
                pass

        try:
            # Queues the request (rbd_non_blocking_aio) after copying `piece`
            # (about 0.3 ms for 4 MiB): cheap enough for the loop thread.
            image.aio_write(piece, offset, on_complete)
        except rbd.Error as exc:
            self._completed(-(getattr(exc, "errno", None) or errno.EIO), offset, len(piece), done)

    def _completed(self, ret: int, offset: int, length: int, done: asyncio.Future[None]) -> None:
        if ret < 0 and self._failure is None:
            self._failure = _store_error(
                -ret, f"store {self.store.name}: writing {length} bytes at {offset} of image {self.image_id}"
            )
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
        self._pending.discard(done)
        done.set_result(None)
        self._slots.release()

    async def _abort_quietly(self) -> None:
        # Best effort: the original error is what the caller needs to see; a
        # partial left behind (cluster unreachable) is discarded by the next writer.
        try:
            await asyncio.shield(self.abort())
        except (StoreError, asyncio.CancelledError):
            pass

    # -- in the store's thread pool

    def _publish_sync(self, ioctx: rados.Ioctx) -> None:
        image = self._image
        assert image is not None
        image.flush()
        image.create_snap(SNAP)
        image.protect_snap(SNAP)
        self._close_image()
        # The rename is the publish: before it nothing is called `<id>`,
        # after it `<id>` already has its protected snapshot.
        try:
            rbd.RBD().rename(ioctx, self._partial, self.image_id)
        except rbd.ImageExists as exc:
            raise StoreImageExists(f"store {self.store.name} already holds image {self.image_id}") from exc

    def _read_back_sync(self, _ioctx: rados.Ioctx, offset: int, length: int) -> bytes:
        image = self._image
        if image is None:
            raise StoreError(f"writer for image {self.image_id} is closed")
        data: bytes = image.read(offset, length)
        return data

    def _flush_sync(self, _ioctx: rados.Ioctx) -> None:
        if self._image is not None:
            self._image.flush()

    def _abort_sync(self, ioctx: rados.Ioctx) -> None:
        self._close_image()
        _discard(ioctx, self._partial)

    def _close_image(self) -> None:
        image, self._image = self._image, None
        if image is not None:
            image.close()

    async def _shutdown(self) -> None:
        """Store closing: stop writing but keep the partial for a later resume."""
        self._state = "aborted"
        await self._idle.wait()
        await asyncio.to_thread(self._close_image)


_ZERO_OBJECT = bytes(OBJECT_SIZE)


def _object_pieces(offset: int, data: bytes | memoryview) -> list[tuple[int, bytes]]:
    """The non-zero parts of `data` at `offset`, cut at object boundaries.

    One aio write per object keeps the window's requests independent. Pieces
    are `bytes` (what aio_write takes): `data` itself when it is one whole
    data piece, private copies otherwise, so the caller may reuse its buffer
    once `write()` returns.
    """
    view = memoryview(data).cast("B")
    pieces: list[tuple[int, bytes]] = []
    pos, end = offset, offset + len(view)
    while pos < end:
        cut = min(end, (pos // OBJECT_SIZE + 1) * OBJECT_SIZE)
        segment = view[pos - offset:cut - offset]
        # Whole-object zero check first: one memcmp, where data_runs compares
        # a memoryview byte by byte (~100x slower on zeros).
        if not _ZERO_OBJECT.startswith(segment):
            for rel, run in data_runs(segment):
                # A write that is one run is kept as it came, without a copy.
                piece = data if isinstance(data, bytes) and len(run) == len(data) else bytes(run)
                pieces.append((pos + rel, piece))
        pos = cut
    return pieces


def _discard(ioctx: rados.Ioctx, name: str, *, own_addr: str | None = None) -> None:
    """Remove an unpublished image and its snapshots; missing is fine. With
    `own_addr`, an earlier writer's lock is broken first (see _break_stale_lock)."""
    try:
        image = rbd.Image(ioctx, name)
    except rbd.ImageNotFound:
        return
    with image:
        if own_addr is not None:
            _break_stale_lock(image, own_addr)
        for snap in list(image.list_snaps()):
            if image.is_protected_snap(snap["name"]):
                image.unprotect_snap(snap["name"])
            image.remove_snap(snap["name"])
    try:
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass


# --- read handles --------------------------------------------------------------------


@dataclass(eq=False)
class _Handle:
    image: rbd.Image
    users: int = 0
    last_used: float = 0.0
    evicted: bool = False


class _SnapshotHandles:
    """Read-only handles on published snapshots, shared by concurrent reads.

    Opening an image takes several round trips (~6 ms here, as long as
    reading 4 MiB), and a transfer reads one image chunk after chunk: sharing
    one handle doubles read throughput. A handle is kept while in use and
    for HANDLE_IDLE_S after, at most CACHED_HANDLES of them. A published
    snapshot never changes, so a cached handle serves current data as long as
    the image exists; `delete()` evicts first. Read-only handles register no
    watch, so a cached one never blocks a delete from elsewhere (a transfer
    racing such a delete reads zeros, which its sha512 check catches).
    Used from the store's pool threads, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, _Handle] = OrderedDict()

    @contextmanager
    def use(self, image_id: str, open_image: Callable[[], rbd.Image]) -> Iterator[rbd.Image]:
        handle = self._acquire(image_id, open_image)
        try:
            yield handle.image
        finally:
            self._release(handle)

    def _acquire(self, image_id: str, open_image: Callable[[], rbd.Image]) -> _Handle:
        with self._lock:
            handle = self._handles.get(image_id)
            if handle is not None:
                handle.users += 1
                self._handles.move_to_end(image_id)
                return handle
        image = open_image()  # slow: outside the lock
        with self._lock:
            handle = self._handles.get(image_id)
            spare: list[_Handle] = []
            if handle is None:
                handle = self._handles[image_id] = _Handle(image)
            else:  # another thread opened it meanwhile
                spare.append(_Handle(image))
            handle.users += 1
            spare += self._expire_locked()
        _close_handles(spare)
        return handle

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            handle.last_used = time.monotonic()
            done = [handle] if handle.evicted and handle.users == 0 else []
            done += self._expire_locked()
        _close_handles(done)

    def _expire_locked(self) -> list[_Handle]:
        """Unlist idle handles past their time or beyond the limit (oldest first)."""
        now = time.monotonic()
        expired = []
        for image_id, handle in list(self._handles.items()):
            too_many = len(self._handles) > CACHED_HANDLES
            if handle.users == 0 and (too_many or now - handle.last_used > HANDLE_IDLE_S):
                del self._handles[image_id]
                expired.append(handle)
        return expired

    def evict(self, image_id: str) -> None:
        """Forget the handle of `image_id`; closed now, or by its last user."""
        with self._lock:
            handle = self._handles.pop(image_id, None)
            if handle is None:
                return
            handle.evicted = True
            if handle.users:
                return
        handle.image.close()

    def close_all(self) -> None:
        with self._lock:
            image_ids = list(self._handles)
        for image_id in image_ids:
            self.evict(image_id)


def _close_handles(handles: list[_Handle]) -> None:
    for handle in handles:
        handle.image.close()


# --- store -------------------------------------------------------------------------


class RbdStore(ImageStore):
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
        self.connect_timeout_s = connect_timeout_s
        self.description = description or f"{name} (rbd)"
        self.read_only = read_only
        self.write_window = write_window
        self.client_options = dict(client_options or {})  # extra librados/librbd settings
        # Known without connecting (location_url is synchronous); the
        # cluster's own answer replaces it on connect.
        self._fsid = conf_fsid(self.ceph_conf)
        self._executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix=f"rbd-{name}")
        self._cluster: rados.Rados | None = None
        self._ioctx: rados.Ioctx | None = None
        self._connecting = asyncio.Lock()
        self._writers: set[RbdWriter] = set()
        self._snapshots = _SnapshotHandles()
        self._closed = False

    @classmethod
    def from_config(cls, name: str, cfg: StoreConfig) -> RbdStore:
        if cfg.ceph_conf is None:
            raise StoreError(f"store {name}: rbd store needs 'ceph_conf'")
        return cls(
            name, ceph_conf=cfg.ceph_conf, pool=cfg.pool, user=cfg.user, keyring=cfg.keyring,
            connect_timeout_s=cfg.connect_timeout_s, description=cfg.description,
            read_only=cfg.read_only,
        )

    # -- connection and the thread pool

    async def _run(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        """`fn(ioctx, *args)` in the pool, with rados/rbd errors translated."""
        ioctx = await self._connected()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(fn, ioctx, *args)
            )
        except (rados.Error, rbd.Error) as exc:
            raise _translate(exc, f"store {self.name}: {what}") from exc

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU work (zero detection, copies) in the pool, off the event loop."""
        if self._closed:
            raise StoreError(f"store {self.name} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def _connected(self) -> rados.Ioctx:
        if self._closed:
            raise StoreError(f"store {self.name} is closed")
        if self._ioctx is None:
            async with self._connecting:
                if self._ioctx is None:
                    loop = asyncio.get_running_loop()
                    self._cluster, self._ioctx = await loop.run_in_executor(self._executor, self._connect_sync)
        return self._ioctx

    def _connect_sync(self) -> tuple[rados.Rados, rados.Ioctx]:
        t = max(1, math.ceil(self.connect_timeout_s))  # these options take whole seconds
        options = {
            "client_mount_timeout": str(t),
            "rados_mon_op_timeout": str(t),
            "rados_osd_op_timeout": str(max(MIN_OSD_OP_TIMEOUT_S, 3 * t)),
            # Whole-image streams gain nothing from librbd's cache: it costs a
            # copy and up to 32 MiB per open image, and reads go ~1.3x faster
            # without it.
            "rbd_cache": "false",
        }
        if self.keyring is not None:
            options["keyring"] = str(self.keyring)
        options.update(self.client_options)
        where = f"store {self.name}: Ceph cluster of {self.ceph_conf} as client.{self.user}"
        try:
            cluster = rados.Rados(conffile=str(self.ceph_conf), rados_id=self.user, conf=options)
        except rados.Error as exc:
            raise StoreError(f"{where}: cannot load the configuration ({exc})") from exc
        try:
            cluster.connect()
            fsid = cluster.get_fsid()
            ioctx = cluster.open_ioctx(self.pool)
        except rados.ObjectNotFound as exc:
            cluster.shutdown()
            raise StoreError(f"{where}: pool {self.pool!r} does not exist") from exc
        except (rados.TimedOut, rados.ConnectionShutdown) as exc:
            cluster.shutdown()
            raise StoreUnavailable(f"{where}: no answer from the monitors within {t:g}s") from exc
        except rados.Error as exc:
            cluster.shutdown()
            raise _translate(exc, f"{where}: cannot connect") from exc
        self._fsid = fsid
        return cluster, ioctx

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for writer in list(self._writers):
            await writer._shutdown()
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        self._executor.shutdown(wait=True)
        self._snapshots.close_all()
        if self._ioctx is not None:
            self._ioctx.close()
        if self._cluster is not None:
            self._cluster.shutdown()
        self._ioctx = self._cluster = None

    # -- facts

    @property
    def fsid(self) -> str:
        if self._fsid is None:
            raise StoreUnavailable(f"store {self.name}: cluster fsid unknown until connected")
        return self._fsid

    def location_url(self, image_id: str) -> str:
        _check_id(image_id)
        return f"rbd://{self.fsid}/{self.pool}/{image_id}/{SNAP}"

    def properties(self) -> dict[str, Any]:
        return {
            "pool": self.pool, "chunk_size": OBJECT_SIZE >> 20, "thin_provisioning": True,
            "fsid": self._fsid, "user": self.user,
        }

    async def capacity(self) -> StoreCapacity | None:
        """Used: the bytes the pool stores; free: the cluster's raw free space."""
        pool, cluster = await self._run(self._usage_sync, what="reading pool usage")
        # Both come from the mgr's digest; without a mgr the mon reports
        # zeros, which would read as "full" — say "unknown" instead.
        if not cluster.get("kb"):
            return None
        return StoreCapacity(used_bytes=pool["num_bytes"], free_bytes=cluster["kb_avail"] * 1024)

    def _usage_sync(self, ioctx: rados.Ioctx) -> tuple[dict[str, int], dict[str, int]]:
        assert self._cluster is not None
        return ioctx.get_stats(), self._cluster.get_cluster_stats()

    # -- writing

    async def open_writer(self, image_id: str, size_bytes: int, *, resume: bool = False) -> ImageWriter:
        _check_id(image_id)
        if self.read_only:
            raise StoreError(f"store {self.name} is read-only")
        if size_bytes < 0:
            raise SizeMismatch(f"image {image_id}: negative size {size_bytes}")
        image = await self._run(self._open_partial_sync, image_id, size_bytes, resume,
                                what=f"creating image {image_id}")
        writer = RbdWriter(self, image_id, size_bytes, image)
        self._writers.add(writer)
        return writer

    def _open_partial_sync(self, ioctx: rados.Ioctx, image_id: str, size: int, resume: bool) -> rbd.Image:
        if _image_exists(ioctx, image_id):
            raise StoreImageExists(f"store {self.name} already holds image {image_id}")
        partial = _partial_name(image_id)
        assert self._cluster is not None
        own_addr = self._cluster.get_addrs()
        if resume:
            image = _reopen_partial(ioctx, partial, size, own_addr=own_addr)
            if image is not None:
                return image
        else:
            _discard(ioctx, partial, own_addr=own_addr)
        try:
            rbd.RBD().create(ioctx, partial, size, order=ORDER, old_format=False, features=FEATURES)
        except rbd.ImageExists as exc:
            raise StoreImageExists(f"store {self.name}: another writer is creating image {image_id}") from exc
        return rbd.Image(ioctx, partial)

    # -- reading

    async def exists(self, image_id: str) -> bool:
        _check_id(image_id)
        return await self._run(_is_published, image_id, what=f"looking up image {image_id}")

    async def size(self, image_id: str) -> int:
        return await self._with_snapshot(image_id, lambda image: image.size(), "reading the size of")

    async def extents(self, image_id: str) -> list[Extent]:
        return await self._with_snapshot(image_id, _data_extents, "listing the extents of")

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
        _check_id(image_id)

        def open_snapshot(ioctx: rados.Ioctx) -> rbd.Image:
            try:
                return rbd.Image(ioctx, image_id, snapshot=SNAP, read_only=True)
            except rbd.ImageNotFound as exc:
                raise StoreImageNotFound(f"store {self.name} holds no copy of image {image_id}") from exc

        def run(ioctx: rados.Ioctx) -> T:
            with self._snapshots.use(image_id, functools.partial(open_snapshot, ioctx)) as image:
                return fn(image)

        return await self._run(run, what=f"{doing} image {image_id}")

    async def discard_unpublished(self, image_id: str) -> None:
        _check_id(image_id)
        await self._run(self._discard_stale_sync, _partial_name(image_id),
                        what=f"discarding unpublished image {image_id}")

    def _discard_stale_sync(self, ioctx: rados.Ioctx, partial: str) -> None:
        assert self._cluster is not None
        _discard(ioctx, partial, own_addr=self._cluster.get_addrs())

    async def image_ids(self) -> list[str]:
        def published(ioctx: rados.Ioctx) -> list[str]:
            names = [n for n in rbd.RBD().list(ioctx) if not n.endswith(PARTIAL_SUFFIX)]
            # A name without the suffix is published (the rename comes last),
            # unless something else put an image in the pool: check for `snap`.
            return sorted(n for n in names if _is_published(ioctx, n))

        return await self._run(published, what="listing images")

    # -- deleting

    async def ensure_deletable(self, image_id: str) -> None:
        _check_id(image_id)
        await self._run(self._ensure_deletable_sync, image_id, what=f"checking clones of image {image_id}")

    def _ensure_deletable_sync(self, ioctx: rados.Ioctx, image_id: str) -> None:
        try:
            image = rbd.Image(ioctx, image_id, read_only=True)
        except rbd.ImageNotFound:
            return  # no copy: nothing can refuse its deletion
        with image:
            self._refuse_deletion_blockers(image, image_id)

    async def delete(self, image_id: str) -> None:
        _check_id(image_id)
        await self._run(self._delete_sync, image_id, what=f"deleting image {image_id}")

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
        finally:
            image.set_snap(None)
        if children:
            names = ", ".join(f"{c['pool']}/{c['image']}" + (" (in trash)" if c.get("trash") else "")
                              for c in children)
            raise StoreImageInUse(f"store {self.name}: image {image_id} has COW clones: {names}")


def _image_exists(ioctx: rados.Ioctx, name: str) -> bool:
    try:
        rbd.Image(ioctx, name, read_only=True).close()
    except rbd.ImageNotFound:
        return False
    return True


def _is_published(ioctx: rados.Ioctx, image_id: str) -> bool:
    try:
        image = rbd.Image(ioctx, image_id, read_only=True)
    except rbd.ImageNotFound:
        return False
    with image:
        names = {s["name"] for s in image.list_snaps()}
        return SNAP in names and bool(image.is_protected_snap(SNAP))


def _reopen_partial(ioctx: rados.Ioctx, partial: str, size: int, *, own_addr: str) -> rbd.Image | None:
    """Reopen an earlier attempt's partial image for `resume`, ready for writing."""
    try:
        image = rbd.Image(ioctx, partial)
    except rbd.ImageNotFound:
        return None
    try:
        _break_stale_lock(image, own_addr)
        # A crash mid-publish can leave `snap`; publish creates it afresh.
        for snap in list(image.list_snaps()):
            if image.is_protected_snap(snap["name"]):
                image.unprotect_snap(snap["name"])
            image.remove_snap(snap["name"])
        if image.size() != size:
            image.resize(size)
    except BaseException:
        image.close()
        raise
    return image


def _break_stale_lock(image: rbd.Image, own_addr: str) -> None:
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


def _data_extents(image: rbd.Image) -> list[Extent]:
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
