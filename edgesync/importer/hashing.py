"""The image digests Glance records: md5 `checksum`, sha512 `os_hash_value`, size.

Both hashes run over the *logical* content, holes included as zeros, so a
sparse copy and a dense copy of the same image have the same digests.

Hashing is the slow part of an import (md5 runs at well under 1 GB/s). The two
hashes are independent and hashlib releases the GIL on buffers over 2 KiB, so
each large buffer is fed to md5 and sha512 in two threads at once: the time
is the slower of the two, not their sum, and the event loop stays free.

With `with_manifest=True` the same pass also builds the image's chunk
manifest (BLAKE3 per 4 KiB data block, `edgesync.transfer.manifest`) in a
third thread: holes fed by `update_zeros` stay out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgesync.transfer.manifest import Manifest, ManifestBuilder

# Below this, a thread hop costs more than the hashing: hash inline.
THREAD_THRESHOLD = 64 * 1024
# One shared zero buffer feeds holes: no allocation per hole.
_ZEROS = memoryview(bytes(1 << 20))
# A hole is hashed in slices of this much per thread hop, so a cancellation
# waits for at most one slice (about 0.1 s) rather than the whole hole.
_ZERO_SLICE = 128 << 20
# digest_file reads data extents in pieces this big.
READ_CHUNK = 8 << 20


class ImageDigest:
    """md5 + sha512 + size of an image's bytes, fed in order.

    Await each `update`/`update_zeros` before starting the next: the order of
    the bytes is the digest. A call that was cancelled mid-way leaves the digest
    unusable (a thread may still be hashing), and later use raises.
    """

    os_hash_algo = "sha512"

    def __init__(self, *, with_md5: bool = True, with_manifest: bool = False) -> None:
        """`with_md5=False` for verification only (sha512 against
        os_hash_value): md5 would cost as much again for nothing.
        `with_manifest`: build the chunk manifest too (see `manifest()`)."""
        self._sha512 = hashlib.sha512()
        self._md5 = hashlib.md5(usedforsecurity=False) if with_md5 else None
        self._hashers = [h for h in (self._sha512, self._md5) if h is not None]
        self._manifest = ManifestBuilder() if with_manifest else None
        self._works: list[Callable[[memoryview], None]] = [h.update for h in self._hashers]
        if self._manifest is not None:
            self._works.append(self._manifest.data)
        self.size = 0
        self._busy = False
        self._broken = False

    @property
    def checksum(self) -> str:
        """Glance's `checksum`: md5, hex."""
        self._check_usable()
        if self._md5 is None:
            raise RuntimeError("this digest was made without md5 (with_md5=False)")
        return self._md5.hexdigest()

    @property
    def os_hash_value(self) -> str:
        """Glance's `os_hash_value`: sha512, hex."""
        self._check_usable()
        return self._sha512.hexdigest()

    def manifest(self) -> Manifest:
        """The chunk manifest of the bytes fed so far, as a whole image."""
        self._check_usable()
        if self._manifest is None:
            raise RuntimeError("this digest was made without a manifest (with_manifest=False)")
        return self._manifest.finish(image_size=self.size, os_hash_value=self.os_hash_value)

    async def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the image. Don't modify `data` until this returns."""
        view = memoryview(data).cast("B")
        if len(view) < THREAD_THRESHOLD:
            self._check_usable()
            self._feed(view)
            return
        with self._exclusive():
            await _in_threads(self._works, view)
            self.size += len(view)

    async def update_zeros(self, count: int) -> None:
        """Feed `count` zero bytes: a hole in the image."""
        if count < 0:
            raise ValueError(f"a hole can't have a negative length ({count})")
        with self._exclusive():
            while count:
                step = min(count, _ZERO_SLICE)
                await _in_threads([_zero_feeder(h, step) for h in self._hashers])
                if self._manifest is not None:
                    self._manifest.hole(step)
                self.size += step
                count -= step

    def _feed(self, view: memoryview) -> None:
        for work in self._works:
            work(view)
        self.size += len(view)

    def _check_usable(self) -> None:
        if self._broken:
            raise RuntimeError("this digest was interrupted mid-update and is no longer valid")
        if self._busy:
            raise RuntimeError("ImageDigest updates must be awaited one at a time, in order")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Mark the digest busy for one update; an update that fails breaks it."""
        self._check_usable()
        self._busy = True
        try:
            yield
        except BaseException:
            self._broken = True
            raise
        finally:
            self._busy = False


async def _in_threads(works: list[Any], *args: Any) -> None:
    # Shielded: a cancelled update must not return while a thread still
    # mutates the hashes (the caller might reuse the buffer); it waits for
    # every thread, then the cancellation goes on (and the digest is broken).
    both = asyncio.gather(*(asyncio.to_thread(work, *args) for work in works))
    try:
        await asyncio.shield(both)
    except asyncio.CancelledError:
        await asyncio.wait([both])
        raise


def _zero_feeder(hasher: Any, count: int) -> Any:
    def feed() -> None:
        remaining = count
        while remaining:
            step = min(remaining, len(_ZEROS))
            hasher.update(_ZEROS[:step])
            remaining -= step
    return feed


# --- digesting a sparse file -------------------------------------------------


async def digest_file(path: Path) -> ImageDigest:
    """Digest a (sparse) file: data extents are read, holes are fed as zeros unread."""
    digest = ImageDigest()
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for offset, length, is_data in await asyncio.to_thread(_segments, fd, size):
            if is_data:
                await _digest_range(digest, fd, offset, length)
            else:
                await digest.update_zeros(length)
    finally:
        os.close(fd)
    return digest


async def _digest_range(digest: ImageDigest, fd: int, offset: int, length: int) -> None:
    # Read the next chunk while the current one is being hashed.
    end = offset + length
    pending: asyncio.Future[bytes] | None = asyncio.ensure_future(
        asyncio.to_thread(os.pread, fd, min(READ_CHUNK, length), offset))
    try:
        while pending is not None:
            chunk = await pending
            if not chunk:
                raise OSError(errno.EIO, f"file shrank while being read, at offset {offset}")
            offset += len(chunk)
            pending = None
            if offset < end:
                pending = asyncio.ensure_future(
                    asyncio.to_thread(os.pread, fd, min(READ_CHUNK, end - offset), offset))
            await digest.update(chunk)
    finally:
        if pending is not None:
            # A read in a thread can't be stopped; let it finish before the
            # caller closes the fd under it.
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved: it is of no interest any more


def _segments(fd: int, size: int) -> list[tuple[int, int, bool]]:
    """[(offset, length, is_data)] covering the file, from SEEK_DATA/SEEK_HOLE."""
    segments: list[tuple[int, int, bool]] = []
    pos = 0
    while pos < size:
        try:
            data_start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data_start = size  # no data after pos: the rest is a hole
        if data_start > pos:
            segments.append((pos, data_start - pos, False))
        if data_start >= size:
            break
        data_end = min(os.lseek(fd, data_start, os.SEEK_HOLE), size)
        segments.append((data_start, data_end - data_start, True))
        pos = data_end
    return segments
