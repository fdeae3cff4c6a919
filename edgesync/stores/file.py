"""The `file` store: one sparse file per image in a directory.

A copy is written to `<id>.partial` (pre-sized with ftruncate, so anything not
written is a hole), fsynced, then renamed to `<id>`: the rename is the
publish, and a crash at any point leaves either nothing or a whole copy. Stale
`.partial` files are ignored by readers and replaced by the next writer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from edgesync.errors import (
    SizeMismatch,
    StoreError,
    StoreFull,
    StoreImageExists,
    StoreImageNotFound,
)
from edgesync.stores.base import Extent, Location, ResumableStore, ResumableWriter, StoreCapacity
from edgesync.stores.sparse import data_runs

PARTIAL_SUFFIX = ".partial"


def _translate(exc: OSError, what: str) -> StoreError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"{what}: the store is full")
    if exc.errno == errno.EROFS:
        return StoreError(f"{what}: the store's filesystem is read-only")
    return StoreError(f"{what}: {exc.strerror or exc}")


class FileWriter(ResumableWriter):
    def __init__(self, store: FileStore, image_id: str, size_bytes: int, fd: int) -> None:
        self.store = store
        self.image_id = image_id
        self.size_bytes = size_bytes
        self._fd: int | None = fd
        self._partial = store._partial_path(image_id)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.size_bytes:
            raise SizeMismatch(
                f"write of {len(data)} bytes at {offset} goes past the declared "
                f"size {self.size_bytes} of image {self.image_id}"
            )
        await asyncio.to_thread(self._write_sync, offset, data)

    def _write_sync(self, offset: int, data: bytes | memoryview) -> None:
        assert self._fd is not None, "write after publish/abort"
        try:
            for rel, run in data_runs(data):
                os.pwrite(self._fd, run, offset + rel)
        except OSError as exc:
            raise _translate(exc, f"writing image {self.image_id}") from exc

    async def read_back(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise SizeMismatch(f"read of {length} bytes at {offset} is outside image {self.image_id} "
                               f"({self.size_bytes} bytes)")
        return await asyncio.to_thread(self._read_back_sync, offset, length)

    def _read_back_sync(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._open_fd(), length, offset)
        except OSError as exc:
            raise _translate(exc, f"reading back image {self.image_id}") from exc

    async def flush(self) -> None:
        # When write() returns, pwrite has put the data in the page cache: that
        # survives the process; fdatasync makes it survive the machine.
        def sync() -> None:
            try:
                os.fdatasync(self._open_fd())
            except OSError as exc:
                raise _translate(exc, f"flushing image {self.image_id}") from exc

        await asyncio.to_thread(sync)

    async def suspend(self) -> None:
        def close() -> None:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

        await asyncio.to_thread(close)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise StoreError(f"writer for image {self.image_id} is closed")
        return self._fd

    async def publish(self) -> Location:
        await asyncio.to_thread(self._publish_sync)
        return Location(self.store.name, self.store.location_url(self.image_id))

    def _publish_sync(self) -> None:
        final = self.store._path(self.image_id)
        try:
            fd = self._open_fd()
            os.fsync(fd)
            os.close(fd)
            self._fd = None
            if final.exists():
                raise StoreImageExists(f"store {self.store.name} already holds image {self.image_id}")
            os.rename(self._partial, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise _translate(exc, f"publishing image {self.image_id}") from exc

    async def abort(self) -> None:
        await asyncio.to_thread(self._abort_sync)

    def _abort_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        _unlink(self._partial, f"removing the unpublished copy of {self.image_id}")


def _unlink(path: Path, what: str) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise _translate(exc, what) from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(ResumableStore):
    type = "file"

    def __init__(self, name: str, path: Path, *, description: str = "", read_only: bool = False) -> None:
        self.name = name
        self.root = Path(path)
        self.description = description or f"{name} (file)"
        self.read_only = read_only
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _translate(exc, f"opening store {name} at {self.root}") from exc

    def _path(self, image_id: str) -> Path:
        _check_id(image_id)
        return self.root / image_id

    def _partial_path(self, image_id: str) -> Path:
        return self._path(image_id).with_name(image_id + PARTIAL_SUFFIX)

    def location_url(self, image_id: str) -> str:
        return f"file://{self._path(image_id)}"

    def properties(self) -> dict[str, Any]:
        return {"datadir": str(self.root), "thin_provisioning": True}

    async def open_writer(self, image_id: str, size_bytes: int, *, resume: bool = False) -> ResumableWriter:
        if self.read_only:
            raise StoreError(f"store {self.name} is read-only")
        fd = await asyncio.to_thread(self._open_partial, image_id, size_bytes, resume)
        return FileWriter(self, image_id, size_bytes, fd)

    def _open_partial(self, image_id: str, size_bytes: int, resume: bool) -> int:
        if self._path(image_id).exists():
            raise StoreImageExists(f"store {self.name} already holds image {image_id}")
        partial = self._partial_path(image_id)
        flags = os.O_RDWR | os.O_CREAT | (0 if resume else os.O_TRUNC)
        try:
            fd = os.open(partial, flags, 0o640)
            os.ftruncate(fd, size_bytes)
        except OSError as exc:
            raise _translate(exc, f"creating image {image_id}") from exc
        return fd

    def _stat(self, image_id: str) -> os.stat_result:
        try:
            return self._path(image_id).stat()
        except FileNotFoundError as exc:
            raise StoreImageNotFound(f"store {self.name} holds no copy of image {image_id}") from exc

    async def exists(self, image_id: str) -> bool:
        return await asyncio.to_thread(self._path(image_id).exists)

    async def size(self, image_id: str) -> int:
        return (await asyncio.to_thread(self._stat, image_id)).st_size

    async def allocated_bytes(self, image_id: str) -> int:
        return (await asyncio.to_thread(self._stat, image_id)).st_blocks * 512

    async def extents(self, image_id: str) -> list[Extent]:
        return await asyncio.to_thread(self._extents_sync, image_id)

    def _extents_sync(self, image_id: str) -> list[Extent]:
        size = self._stat(image_id).st_size
        with self._path(image_id).open("rb") as fh:
            return file_extents(fh.fileno(), size)

    async def read(self, image_id: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read_sync, image_id, offset, length)

    def _read_sync(self, image_id: str, offset: int, length: int) -> bytes:
        try:
            with self._path(image_id).open("rb") as fh:
                data = os.pread(fh.fileno(), length, offset)
        except FileNotFoundError as exc:
            raise StoreImageNotFound(f"store {self.name} holds no copy of image {image_id}") from exc
        return data

    async def delete(self, image_id: str) -> None:
        def _delete_sync() -> None:
            try:
                self._path(image_id).unlink()
            except FileNotFoundError as exc:
                raise StoreImageNotFound(f"store {self.name} holds no copy of image {image_id}") from exc
            except OSError as exc:
                raise _translate(exc, f"deleting image {image_id}") from exc
            _unlink(self._partial_path(image_id), f"deleting image {image_id}")

        await asyncio.to_thread(_delete_sync)

    async def ensure_deletable(self, image_id: str) -> None:
        """Nothing can depend on a file copy (no clones): always deletable."""

    async def discard_unpublished(self, image_id: str) -> None:
        await asyncio.to_thread(_unlink, self._partial_path(image_id), f"discarding the partial copy of {image_id}")

    async def image_ids(self) -> list[str]:
        def published() -> list[str]:
            try:
                return sorted(entry.name for entry in os.scandir(self.root)
                              if entry.is_file() and not entry.name.startswith(".")
                              and not entry.name.endswith(PARTIAL_SUFFIX))
            except OSError as exc:
                raise _translate(exc, f"listing store {self.name}") from exc

        return await asyncio.to_thread(published)

    async def capacity(self) -> StoreCapacity:
        try:
            usage = await asyncio.to_thread(shutil.disk_usage, self.root)
        except OSError as exc:
            raise _translate(exc, f"reading the free space of store {self.name} at {self.root}") from exc
        return StoreCapacity(used_bytes=usage.used, free_bytes=usage.free)

    async def close(self) -> None:
        """Nothing to release: each call opens and closes its own files."""


def file_extents(fd: int, size: int) -> list[Extent]:
    """Data extents of an open file, from SEEK_DATA/SEEK_HOLE."""
    extents: list[Extent] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append(Extent(start, end - start))
        pos = end
    return extents


def _check_id(image_id: str) -> None:
    # Image ids are UUIDs; refusing anything else keeps paths inside the store.
    if not image_id or "/" in image_id or image_id.startswith("."):
        raise StoreImageNotFound(f"not an image id: {image_id!r}")
